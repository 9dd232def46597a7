"""Overhead of GEffectCallback against plain training and against the paper code's way of measuring G-effects.

Runs a gradient-difference unlearning step (loss = −NLL(forget) + NLL(retain), Wang et al. 2025 / Maini et al. 2024)
on a tiny Llama built from a ``LlamaConfig`` (no download), in one process, with every configuration side by side:

* ``plain``: no callback;
* ``g_effect every step`` (streaming per-parameter dots, the default), its non-streaming variant, with the realised
  risk change, with the G-effect per objective term (``terms=True``: the unlearn term differentiated through the
  step's own graph before its backward, :class:`SupportsLossTerms`, and the module's backward left with the
  regulariser's part, :class:`SupportsSkipUnlearnBackward`; the regulariser's G-effect is the rest), and with
  per-instance G-effects on the risk side (``per_instance="risk"``: one forward-mode JVP along the objective gradient)
  and on the objective side (``per_instance="objective"``: one forward-mode JVP of the forget examples' unlearn shares
  along the risk gradients, batched over the risks);
* ``g_effect every step, graph reuse`` (``reuse_step_forward=True``): the risks come from ``training_step``'s own
  forward, whose graph the module keeps through its backward on measured steps (:class:`SupportsStepRisks`): two
  backward passes through it, no extra forward;
* ``g_effect every 10 steps``;
* ``paper code``: a reimplementation of tmlr-group/G-effect's ``dataloader_ge.py`` approach on the same model: per
  micro-batch three extra forward+backward passes (forget NLL, forget objective, retain NLL), every full gradient copied
  to host memory and smoothed with an EMA 0.6/0.4 of the gradient vectors, then per-tensor dot products.

What is measured, honestly:

* time: time per optimiser step, taken between consecutive ``on_train_batch_start`` calls (so it includes every
  callback hook): process CPU time on CPU (one thread by default, robust to other processes' load on a shared
  machine), wall-clock time on CUDA; in windows of 10 steps; the reported value is the median over windows divided
  by 10, which amortises the every-10-steps measurement; the median step time is shown too. Configurations run
  interleaved in several rounds, each round starting one configuration later, so machine load drifts affect all of
  them alike.
* memory: the peak of allocated-minus-freed bytes during one measured step, relative to the start of that step
  (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocation events of ``torch.profiler`` with
  ``profile_memory=True``), minus the same figure for the plain step: transient extra memory. State kept across steps
  (the paper code's three host gradient buffers) is reported separately as resident bytes. Compare both with one copy
  of the trainable gradients (shown in the header). The benchmark model's activations (vocab-sized logits) dominate
  its memory, so a second table repeats the memory measurement at batch 1 and 16 tokens, where the parameters
  dominate as in LLM fine-tuning at scale.

Usage::

    python benchmarks/g_effect_overhead.py                 # CPU, one thread, about 17 minutes here
    python benchmarks/g_effect_overhead.py --rounds 7 --steps 40
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling performance_tables
from performance_tables import TIME_TARGETS  # noqa: E402

from callbacks import GEffectCallback  # noqa: E402


class RandomQA(Dataset):
    """Random token "question + answer" rows: the first ``prompt`` tokens are prompt (label -100)."""

    def __init__(self, n: int, length: int, vocab: int, prompt: int = 16, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (2, n, length), generator=gen)
        self.labels = self.ids.clone()
        # At most half of each row is prompt, so that every row keeps answer tokens (a finite loss) at any length.
        self.labels[:, :, : min(prompt, length // 2)] = -100

    def __len__(self) -> int:
        return self.ids.shape[1]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "f_ids": self.ids[0, i],
            "f_labels": self.labels[0, i],
            "r_ids": self.ids[1, i],
            "r_labels": self.labels[1, i],
            "index": torch.tensor(i),
        }


class GradDiff(LightningModule):
    """Gradient difference on a tiny Llama: minimise −NLL(forget) + NLL(retain) (token-mean answer NLLs)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3,
            num_hidden_layers=args.layers,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=args.seq,
            tie_word_embeddings=False,
        )
        self.model = LlamaForCausalLM(config)
        self.args = args
        # SupportsStepRisks (graph reuse): while a list, each training_step appends its risks and backward keeps the
        # graph for the callback.
        self._step_risks: list[dict[str, Tensor]] | None = None
        # SupportsLossTerms (terms=True): while a dict, training_step records the terms of the loss it returns.
        self._loss_terms: dict[str, Tensor] | None = None
        # SupportsSkipUnlearnBackward: the callback has put the unlearn term's gradient in .grad already.
        self._skip_unlearn = False

    def token_nll(self, ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
        target = labels[:, 1:]
        mask = target != -100
        nll = F.cross_entropy(logits.float().transpose(1, 2), target.clamp(min=0), reduction="none")  # (B, T-1)
        return nll * mask, mask

    def nll(self, ids: Tensor, labels: Tensor) -> Tensor:
        nll, mask = self.token_nll(ids, labels)
        return nll.sum() / mask.sum()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        forget, retain = self.nll(batch["f_ids"], batch["f_labels"]), self.nll(batch["r_ids"], batch["r_labels"])
        if self._step_risks is not None:
            self._step_risks.append({"forget": forget, "retain": retain})
        if self._loss_terms is not None:
            self._loss_terms = {"unlearn": -forget, "regularizer": retain}
        return -forget + retain

    def keep_loss_terms(self, keep: bool) -> None:
        self._loss_terms = {} if keep else None

    def loss_terms(self) -> dict[str, Tensor]:
        return dict(self._loss_terms or {})

    def keep_step_risks(self, keep: bool) -> None:
        self._step_risks = [] if keep else None

    def step_risks(self) -> list[dict[str, Tensor]]:
        return list(self._step_risks or [])

    def skip_unlearn_backward(self) -> None:
        self._skip_unlearn = True

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self._skip_unlearn:  # only the regulariser's backward is left
            self._skip_unlearn = False
            loss = self._loss_terms["regularizer"] / self.trainer.accumulate_grad_batches
        if self._step_risks is not None:
            kwargs["retain_graph"] = True
        super().backward(loss, *args, **kwargs)

    def risk_losses(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        forget = torch.stack([self.nll(b["f_ids"], b["f_labels"]) for b in batches]).mean()
        retain = torch.stack([self.nll(b["r_ids"], b["r_labels"]) for b in batches]).mean()
        return {"forget": forget, "retain": retain}

    def per_example_risks(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        out = {}
        for name, p in (("forget", "f"), ("retain", "r")):
            parts = [self.token_nll(b[f"{p}_ids"], b[f"{p}_labels"]) for b in batches]
            out[name] = torch.cat([nll.sum(-1) / mask.sum(-1) for nll, mask in parts])
        return out

    def objective_terms(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        forget = torch.stack([self.nll(b["f_ids"], b["f_labels"]) for b in batches]).mean()
        retain = torch.stack([self.nll(b["r_ids"], b["r_labels"]) for b in batches]).mean()
        return {"unlearn": -forget, "regularizer": retain}

    def per_example_unlearn(self, batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
        # The forget term is a token mean over each micro-batch: an example's share is its summed token NLL over the
        # micro-batch's answer-token count.
        parts = [self.token_nll(b["f_ids"], b["f_labels"]) for b in batches]
        return torch.cat([-nll.sum(-1) / (mask.sum() * len(batches)) for nll, mask in parts])

    def example_ids(self, batches: Sequence[Mapping[str, Tensor]]) -> list[dict[str, int]]:
        return [{"index": int(i)} for b in batches for i in b["index"]]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-5, weight_decay=0.01)

    def train_dataloader(self) -> DataLoader:
        n = self.args.batch * (self.args.steps + 2)
        return DataLoader(RandomQA(n, self.args.seq, self.args.vocab), batch_size=self.args.batch, shuffle=False)


class PaperCodeGEffect(Callback):
    """The paper code's measurement (``dataloader_ge.py``), reimplemented for cost comparison only.

    Per micro-batch: forward+backward of the forget NLL, of the forget objective (GD's forget term, −NLL) and of the
    retain NLL; each full gradient is copied to host memory and folded into an EMA ``g ← 0.6 g + 0.4 g_new`` of the
    gradient vector; the G-effects are per-tensor dots of the EMA'd vectors, each tensor moved back to the device.
    ``torch.autograd.grad`` replaces the original ``.backward()`` + ``zero_grad()`` (same cost) so that training is
    left intact. The original additionally ran on saved checkpoints in separate processes with a fourth, zero
    backward per micro-batch; none of that is charged here, so this is a lower bound on its cost.
    """

    def __init__(self) -> None:
        self.ema: dict[str, list[Tensor]] = {}
        self.values: list[tuple[float, float]] = []

    def _host_grads(self, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        return [g.detach().to("cpu", copy=True) for g in torch.autograd.grad(loss, params)]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        with torch.enable_grad():
            fresh = {
                "unlearn": self._host_grads(pl_module.nll(batch["f_ids"], batch["f_labels"]), params),
                "objective": self._host_grads(-pl_module.nll(batch["f_ids"], batch["f_labels"]), params),
                "retain": self._host_grads(pl_module.nll(batch["r_ids"], batch["r_labels"]), params),
            }
        for key, grads in fresh.items():
            if key not in self.ema:
                self.ema[key] = grads
            else:
                for buf, g in zip(self.ema[key], grads, strict=True):
                    buf.mul_(0.6).add_(g, alpha=0.4)
        device = params[0].device
        e_u = sum(
            float((o.to(device) * u.to(device)).sum())
            for o, u in zip(self.ema["objective"], self.ema["unlearn"], strict=True)
        )
        e_r = sum(
            float((o.to(device) * r.to(device)).sum())
            for o, r in zip(self.ema["objective"], self.ema["retain"], strict=True)
        )
        self.values.append((e_u, e_r))

    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for bufs in self.ema.values() for t in bufs)


class StepTimer(Callback):
    """Time between consecutive train-batch starts (one optimiser step each, no accumulation).

    On CPU the clock is the process CPU time (``time.process_time``): on a shared machine other processes' load
    stretches wall-clock time but not the CPU time this process spends, so ratios stay comparable. On CUDA it is
    wall-clock time after a device synchronisation.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            self.starts.append(time.perf_counter())
        else:
            self.starts.append(time.process_time())


class PeakMemory(Callback):
    """Peak allocated-minus-freed bytes during step ``step``, relative to its start."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.peak: int | None = None
        self._prof: torch.profiler.profile | None = None
        self._base = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        cuda = pl_module.device.type == "cuda"
        if trainer.global_step == self.step + 1 and self.peak is None:
            if cuda:
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated() - self._base
            else:
                self._prof.stop()
                self.peak = _profiler_peak(self._prof)
        if trainer.global_step == self.step and self._prof is None and self.peak is None:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated()
                self._prof = True  # type: ignore[assignment]
            else:
                self._prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
                )
                self._prof.start()


def _profiler_peak(prof: torch.profiler.profile) -> int:
    """Running sum of the profiler's allocation events (+bytes allocated, −bytes freed), in emission order."""
    live = peak = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def measure_memory(
    args: argparse.Namespace, configs: dict[str, Any], root: Path
) -> tuple[dict[str, int], dict[str, int]]:
    """Peak extra bytes of one measured step and the bytes kept resident between steps, per configuration."""
    peaks: dict[str, int] = {}
    resident: dict[str, int] = {}
    for name, factory in configs.items():
        # Step 10 is measured by every configuration (every step and every 10 steps), after AdamW created its state.
        memory = PeakMemory(step=10)
        measuring = run(args, factory, root, 12, [memory])
        peaks[name] = memory.peak or 0
        resident[name] = measuring.resident_bytes() if isinstance(measuring, PaperCodeGEffect) else 0
    return peaks, resident


def configurations() -> dict[str, Any]:
    """Name -> factory of the measuring callback (None: plain training)."""
    quiet = {"save_plot": False}
    return {
        "plain": lambda: None,
        "g_effect every step": lambda: GEffectCallback(realised_change=False, **quiet),
        "g_effect every step, non-streaming": lambda: GEffectCallback(realised_change=False, streaming=False, **quiet),
        "g_effect every step, graph reuse": lambda: GEffectCallback(
            realised_change=False, reuse_step_forward=True, **quiet
        ),
        "g_effect every step + realised change": lambda: GEffectCallback(realised_change=True, **quiet),
        "g_effect every step + terms": lambda: GEffectCallback(realised_change=False, terms=True, **quiet),
        "g_effect every step + per-instance (risk)": lambda: GEffectCallback(
            realised_change=False, per_instance="risk", **quiet
        ),
        "g_effect every step + per-instance (objective)": lambda: GEffectCallback(
            realised_change=False, per_instance="objective", **quiet
        ),
        "g_effect every 10 steps": lambda: GEffectCallback(every_n_steps=10, realised_change=False, **quiet),
        "paper code (every micro-batch)": PaperCodeGEffect,
    }


def run(args: argparse.Namespace, factory: Any, root: Path, steps: int, extra: list[Callback]) -> Callback | None:
    module = GradDiff(args)
    measuring = factory()
    callbacks = [*extra, *([measuring] if measuring is not None else [])]
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(module)
    return measuring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--root", default="/tmp/g_effect_benchmark")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time = work done)")
    parser.add_argument(
        "--small-batch-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure memory at batch 1, seq 16, where parameters rather than activations dominate",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only configurations containing these words")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements and ratios here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.steps % 10:
        parser.error("--steps must be a multiple of 10 (windows of 10 steps amortise the every-10-steps cost)")
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = Path(args.root)
    configs = configurations()
    if args.only:
        configs = {k: v for k, v in configs.items() if k == "plain" or any(word in k for word in args.only)}
    warmup = 2

    probe = GradDiff(args)
    n_params = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    grad_bytes = sum(p.numel() * p.element_size() for p in probe.parameters() if p.requires_grad)
    largest = max(p.numel() * p.element_size() for p in probe.parameters() if p.requires_grad)
    device = args.accelerator
    if device in ("gpu", "cuda") or (device == "auto" and torch.cuda.is_available()):
        device = torch.cuda.get_device_name()
    print(
        f"tiny Llama: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, seq {args.seq}, "
        f"batch {args.batch}"
        f"; {n_params / 1e6:.2f}M trainable parameters; one gradient copy = {grad_bytes / 2**20:.2f} MiB, largest "
        f"parameter = {largest / 2**20:.2f} MiB; device {device}, {torch.get_num_threads()} threads, "
        f"precision {args.precision}, torch {torch.__version__}"
    )

    windows: dict[str, list[float]] = {name: [] for name in configs}
    medians: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        # Each round starts one configuration later, so no configuration always runs at the same point of a round
        # (the VM's speed drifts over minutes).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            factory = configs[name]
            timer = StepTimer()
            run(args, factory, root, warmup + args.steps + 1, [timer])
            starts = timer.starts[warmup:]
            # Windows start at a step multiple of 10 so each holds exactly one every-10-steps measurement.
            for w in range(0, args.steps, 10):
                windows[name].append((starts[w + 10] - starts[w]) / 10)
            medians[name].extend(b - a for a, b in zip(starts, starts[1:], strict=False))

    peaks, resident = measure_memory(args, configs, root)

    plain = statistics.median(windows["plain"])
    record: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/g_effect_overhead.py", *sys.argv[1:]]),
        "model": {
            "parameters": n_params,
            "gradient_bytes": grad_bytes,
            **{k: getattr(args, k) for k in ("hidden", "layers", "vocab", "seq", "batch")},
        },
        "setup": {"rounds": args.rounds, "steps": args.steps, "threads": torch.get_num_threads(), "device": device},
        "torch": torch.__version__,
        "configurations": {
            name: {
                "ms_per_step": statistics.median(windows[name]) * 1e3,
                "ratio": statistics.median(windows[name]) / plain,
                "median_step_ms": statistics.median(medians[name]) * 1e3,
                "extra_peak_bytes": peaks[name] - peaks["plain"],
                "peak_ratio": peaks[name] / peaks["plain"],
                "resident_bytes": resident[name],
            }
            for name in configs
        },
    }
    print()
    header = f"{'configuration':42s} {'ms/step':>8s} {'ratio':>6s} {'median ms':>9s} {'extra peak MiB':>14s}"
    header += f" {'peak ratio':>10s} {'resident MiB':>12s} {'(extra+resident)/grad':>21s}"
    print(header)
    print("-" * len(header))
    for name, c in record["configurations"].items():
        extra, kept = c["extra_peak_bytes"], c["resident_bytes"]
        print(
            f"{name:42s} {c['ms_per_step']:8.1f} {c['ratio']:6.2f} {c['median_step_ms']:9.1f} "
            f"{extra / 2**20:14.2f} {c['peak_ratio']:10.2f} {kept / 2**20:12.2f} {(extra + kept) / grad_bytes:21.2f}"
        )
    targets = ", ".join(f"{name} <= {target:g}" for name, target in TIME_TARGETS.items())
    print(
        f"\nratio = amortised time per step / plain (median over {len(windows['plain'])} windows of 10 steps); "
        f"targets: {targets}; extra memory <= 1 gradient copy, + one more per risk with terms or the objective side; "
        "graph reuse: peak ratio (step peak / plain step peak) <= 1.3."
    )

    if args.small_batch_memory:
        # Activations dominate the table above (vocab-sized logits); with batch 1 and 16 tokens the parameters
        # dominate, as in LLM fine-tuning at scale, and a full gradient copy would show up in full.
        small = argparse.Namespace(**{**vars(args), "batch": 1, "seq": 16})
        peaks, resident = measure_memory(small, configs, root)
        record["small_batch_extra_peak_bytes"] = {name: peaks[name] - peaks["plain"] for name in configs}
        print(f"\nmemory with batch 1, seq 16 (parameter-dominated; one gradient copy = {grad_bytes / 2**20:.2f} MiB):")
        for name in configs:
            extra = peaks[name] - peaks["plain"]
            print(
                f"{name:42s} extra peak {extra / 2**20:6.2f} MiB, resident {resident[name] / 2**20:6.2f} MiB, "
                f"(extra+resident)/grad {(extra + resident[name]) / grad_bytes:5.2f}"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
