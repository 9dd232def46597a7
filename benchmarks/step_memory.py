"""Peak memory and time of one unlearning step: lit-unlearn's modules against the usual way of computing the same loss.

A Llama is built from a ``LlamaConfig`` (random init, no download; by default 105.8 M parameters: hidden 768, 8 layers,
MLP 2048, vocabulary 32,000, untied head) and saved once to a temporary folder. Every configuration then runs, in a
process of its own, a few training steps through a Lightning ``Trainer`` on the same fixed batch: 4 forget and 4
retain rows of 512 random tokens (the first eighth are prompt, label -100), float32, CPU.

* ``ours``: ``lit_unlearn.NPO`` / ``WGA`` / ``TNPO`` as shipped. Token log-probs are taken as the label logit minus
  a chunked ``logsumexp`` (no float32 ``(B, T, V)`` copy), one reference forward serves every part that needs it, and
  a reference model is loaded only when the objective uses one.
* ``ours, backward per part``: the same modules with ``backward_per_part=True``: the unlearn term's backward runs
  right after the forget forward, so the forget part's activations are freed before the retain forward.
* ``usual``: :class:`UsualUnlearner`, a transcription of how the public unlearning code computes the same losses
  (OpenUnlearning's trainers, the G-effect paper's code). Token log-probs are a full float32 ``log_softmax`` over the
  vocabulary followed by ``gather``; each part that needs reference outputs gets its own reference forward; the
  reference model is loaded whatever the objective (WGA + GD never reads it). The losses are the same functions:
  each process reports its first loss, and the script checks the two implementations agree.
* ``ours + G-effect callback``: NPO + GD with ``GEffectCallback()`` measuring every step. The every-10-steps overhead
  is derived, not measured: ``(t_measured + 9 t_plain) / 10``. The callback does no work on the steps it does not
  measure (it only keeps a reference to the batch), so this is what ``every_n_steps=10`` costs per step on average.

How it is measured:

* **Peak memory**: Linux's resident-set high-water mark. Just before each measured step the process resets it
  (``echo 5 > /proc/self/clear_refs``) and reads its resident set ``VmRSS``; after the step it reads ``VmHWM``. The
  *step peak* is ``VmHWM`` after minus ``VmRSS`` before: the most memory the step held on top of what stays resident
  (weights, AdamW state, reference); the gradients, set to None between steps, are allocated inside it. The *process
  peak* is ``VmHWM`` itself, resident state included. Every process runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so
  glibc serves every allocation of 64 KiB or more with its own ``mmap`` and returns it on free. The resident set then
  follows the live tensors rather than glibc's cached free lists, and PyTorch's CPU allocator keeps no cache of its
  own. AdamW's state is created before the first measured step (a zero-gradient ``step()``, which leaves the weights
  unchanged), and every weight is read once (memory-mapped weights become resident only when read), so every measured
  step is a steady-state step. One configuration per process means no configuration inherits another's high-water mark
  or heap.
* **Time**: process CPU time of the step, from the ``on_train_batch_start`` of the first callback to the
  ``on_train_batch_end`` of the last (forward, backward, optimiser step, every callback hook). It is measured with
  ``--threads`` intra-op threads (1 by default), which keeps it robust to other processes' load on a shared machine.
  The median over ``--steps`` steps is reported, wall-clock time next to it.

Usage::

    python benchmarks/step_memory.py                       # 10 processes, 1 step each
    python benchmarks/step_memory.py --steps 3 --jobs 1    # more steps, one process at a time
    python benchmarks/step_memory.py --hidden 64 --layers 2 --vocab 1000 --seq 64   # a smoke run in seconds
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from performance_tables import same_first_loss  # noqa: E402  (this script's own folder is on sys.path)

import lit_unlearn  # noqa: E402
from callbacks import GEffectCallback  # noqa: E402

Objective = Literal["npo_gd", "wga_gd", "tnpo_kl"]
OBJECTIVES: dict[Objective, str] = {"npo_gd": "NPO + GD", "wga_gd": "WGA + GD", "tnpo_kl": "TNPO + KL"}
BETAS: dict[Objective, float] = {"npo_gd": 0.1, "wga_gd": 5.0, "tnpo_kl": 4.0}
"""The modules' default β (NPO: OpenUnlearning's; WGA, TNPO: the G-effect paper's code)."""
PROMPT_FRACTION = 8
"""The first ``seq // PROMPT_FRACTION`` tokens of every row are prompt (label -100); the rest is answer."""


# ------------------------------------------------------------------------------------------- the usual implementation
def usual_token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Token log-probs the usual way: a full float32 ``log_softmax`` over the vocabulary, then ``gather``.

    Returns:
        ``(logps, mask)``, each ``(B, T-1)``; ``logps`` is 0 where the shifted label is -100.
    """
    target = labels[:, 1:]
    mask = target != -100
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V) float32
    logps = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


class UsualUnlearner(LightningModule):
    """NPO + GD, WGA + GD or TNPO + KL as the public unlearning code computes them (see the module docstring).

    Args:
        objective: Which objective.
        model_dir: The model to unlearn; the reference is loaded from it too, whether the objective uses it or not.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, objective: Objective, model_dir: str, lr: float = 1e-5, weight_decay: float = 0.01) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.objective = objective
        self.beta = BETAS[objective]
        self.lr, self.weight_decay = lr, weight_decay
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.train()
        # As in OpenUnlearning's trainers: one frozen copy, loaded up front.
        self.ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.ref_model.requires_grad_(False).eval()

    def _logits(self, model: torch.nn.Module, part: Mapping[str, Tensor]) -> Tensor:
        return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

    def training_step(self, batch: Mapping[str, Mapping[str, Tensor]], batch_idx: int) -> Tensor:
        forget, retain = batch["forget"], batch["retain"]
        logps, mask = usual_token_logps(self._logits(self.model, forget), forget["labels"])
        if self.objective == "npo_gd":
            with torch.no_grad():
                ref_logps, _ = usual_token_logps(self._logits(self.ref_model, forget), forget["labels"])
            log_ratio = logps.sum(-1) - ref_logps.sum(-1)
            forget_loss = -(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio).mean()
        elif self.objective == "wga_gd":
            weight = torch.exp(self.beta * logps.detach())
            forget_loss = (weight * logps * mask).sum() / mask.sum()
        else:
            with torch.no_grad():
                ref_logps, _ = usual_token_logps(self._logits(self.ref_model, forget), forget["labels"])
            p, p_ref = torch.exp(self.beta * logps.detach()), torch.exp(self.beta * ref_logps)
            weight = 2 * p / (p + p_ref)
            forget_loss = (weight * logps * mask).sum() / mask.sum()

        logits = self._logits(self.model, retain)
        if self.objective == "tnpo_kl":
            # A second reference forward, for the retain part.
            with torch.no_grad():
                ref_logits = self._logits(self.ref_model, retain)
            logq = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            logp_ref = F.log_softmax(ref_logits.float(), dim=-1)  # (B, T, V)
            kl = F.kl_div(logq, logp_ref, reduction="none", log_target=True).sum(-1)[:, :-1]  # (B, T-1)
            retain_mask = retain["labels"][:, 1:] != -100
            retain_loss = (kl * retain_mask).sum() / retain_mask.sum()
        else:
            retain_logps, retain_mask = usual_token_logps(logits, retain["labels"])
            retain_loss = -retain_logps.sum() / retain_mask.sum()
        return forget_loss + retain_loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)


def our_module(objective: Objective, model_dir: str, backward_per_part: bool = False) -> LightningModule:
    """The shipped module for ``objective``: retain NLL for GD, the KL retain loss for TNPO + KL."""
    cls, retain = {"npo_gd": ("NPO", "nll"), "wga_gd": ("WGA", "nll"), "tnpo_kl": ("TNPO", "kl")}[objective]
    return getattr(lit_unlearn, cls)(
        model_name_or_path=model_dir,
        beta=BETAS[objective],
        retain_loss=retain,
        warmup_epochs=0.0,
        backward_per_part=backward_per_part,
    )


# ---------------------------------------------------------------------------------------------------- measuring
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line: peak memory needs Linux.")


@dataclass
class StepRecord:
    """One measured step of one process."""

    cpu_s: float
    wall_s: float
    #: VmHWM after the step minus VmRSS before it, bytes.
    step_peak: int
    #: VmHWM after the step, bytes (resident state included).
    process_peak: int
    loss: float


class _Probe:
    """The measurement state shared by the first and the last callback of the trainer."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self._start: tuple[float, float, int] = (0.0, 0.0, 0)


class StepStart(Callback):
    """First callback: creates AdamW's state before the first step; resets the high-water mark before each step."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # AdamW allocates exp_avg and exp_avg_sq on its first step: a zero-gradient step creates them now (m = v = 0,
        # so the update is 0; weight decay scales the weights by 1 - lr·wd), so measured steps are steady-state.
        for optimizer in trainer.optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        # Every weight, the frozen reference's included, is read once now. transformers maps the safetensors file, so
        # a weight that was never read is not resident yet: the first step would count its pages in its own peak
        # (0.42 GB for the reference here), which a GPU, where the weights are in device memory from the start, never
        # does. Read here, they belong to the resident state before the step, as on a GPU.
        with torch.no_grad():
            for tensor in [*pl_module.parameters(), *pl_module.buffers()]:
                tensor.sum()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        self.probe._start = (time.process_time(), time.perf_counter(), _status_kib("VmRSS") * 1024)


class StepEnd(Callback):
    """Last callback: reads the high-water mark and the clocks after every other hook of the step has run."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        peak = _status_kib("VmHWM") * 1024
        cpu0, wall0, rss0 = self.probe._start
        loss = float(outputs["loss"]) if isinstance(outputs, Mapping) else float(outputs)
        self.probe.records.append(StepRecord(cpu - cpu0, wall - wall0, peak - rss0, peak, loss))


def fixed_batch(vocab: int, batch: int, seq: int) -> dict[str, dict[str, Tensor]]:
    """Forget and retain parts of random tokens; the first ``seq // PROMPT_FRACTION`` of each row are prompt."""
    gen = torch.Generator().manual_seed(0)

    def part() -> dict[str, Tensor]:
        ids = torch.randint(4, vocab, (batch, seq), generator=gen)
        labels = ids.clone()
        labels[:, : seq // PROMPT_FRACTION] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    return {"forget": part(), "retain": part()}


def child(args: argparse.Namespace) -> None:
    """Run one configuration and print its :class:`StepRecord` list as JSON."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    objective: Objective = args.objective
    if args.impl == "usual":
        module = UsualUnlearner(objective, args.model_dir)
    else:
        module = our_module(objective, args.model_dir, backward_per_part=args.impl == "ours_per_part")
    probe = _Probe()
    callbacks: list[Callback] = [StepStart(probe)]
    if args.g_effect:
        callbacks.append(GEffectCallback(every_n_steps=1, save_plot=False, output_dir=args.out_dir))
    callbacks.append(StepEnd(probe))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=args.out_dir,
    )
    batch = fixed_batch(args.vocab, args.batch, args.seq)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * args.steps, batch_size=None))
    print("RESULT " + json.dumps([asdict(r) for r in probe.records]))


# ------------------------------------------------------------------------------------------------------ driver
@dataclass(frozen=True)
class Config:
    """One process of the benchmark."""

    objective: Objective
    impl: Literal["ours", "ours_per_part", "usual"]
    g_effect: bool = False

    @property
    def name(self) -> str:
        impl = IMPLEMENTATIONS[self.impl]
        return f"{OBJECTIVES[self.objective]}, {impl}" + (" + G-effect callback" if self.g_effect else "")


IMPLEMENTATIONS = {"ours": "ours", "ours_per_part": "ours, backward per part", "usual": "usual"}


def build_model(directory: Path, args: argparse.Namespace) -> int:
    """Save a random-init Llama and a minimal tokenizer to ``directory``; return the parameter count."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.seq,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    # The modules read only the pad id from the tokenizer (the batch is already token ids).
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def run_configs(configs: list[Config], args: argparse.Namespace, model_dir: Path) -> dict[Config, list[dict]]:
    """Each configuration in its own process, at most ``args.jobs`` at a time."""
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    shared = [f"--{k}={getattr(args, k)}" for k in ("steps", "threads", "vocab", "batch", "seq")]
    pending, running, results = list(configs), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            config = pending.pop(0)
            out = Path(tempfile.mkdtemp(prefix="run_", dir=model_dir))  # removed with the model folder
            command = [sys.executable, __file__, "--child", f"--objective={config.objective}", f"--impl={config.impl}"]
            command += [f"--model_dir={model_dir}", f"--out_dir={out}", *shared] + (
                ["--g_effect"] if config.g_effect else []
            )
            running[config] = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            print(f"  started: {config.name}", flush=True)
        time.sleep(0.5)
        for config, process in list(running.items()):
            if process.poll() is None:
                continue
            stdout, stderr = process.communicate()
            del running[config]
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                raise RuntimeError(f"{config.name} failed (exit {process.returncode}):\n{stderr[-3000:]}")
            results[config] = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"  finished: {config.name}", flush=True)
    return results


def _summary(records: list[dict]) -> dict[str, float]:
    return {
        "cpu_s": statistics.median(r["cpu_s"] for r in records),
        "wall_s": statistics.median(r["wall_s"] for r in records),
        "step_peak": max(r["step_peak"] for r in records),
        "process_peak": max(r["process_peak"] for r in records),
        "loss": records[0]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="measured steps per configuration")
    parser.add_argument("--jobs", type=int, default=2, help="configurations run at the same time")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="rows per part (forget, retain)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements and ratios here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--g_effect", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    configs = [Config(o, impl) for o in OBJECTIVES for impl in IMPLEMENTATIONS]
    configs.append(Config("npo_gd", "ours", g_effect=True))
    with tempfile.TemporaryDirectory(prefix="step_memory_model_") as model_dir:
        n_params = build_model(Path(model_dir), args)
        print(
            f"Llama from a config: {n_params / 1e6:.1f} M parameters (hidden {args.hidden}, {args.layers} layers, "
            f"vocabulary {args.vocab}); batch {args.batch} forget + {args.batch} retain rows × {args.seq} tokens; "
            f"float32, CPU, {args.threads} thread(s) per process, {args.steps} measured step(s), {args.jobs} job(s)"
        )
        began = time.perf_counter()
        results = {c: _summary(r) for c, r in run_configs(configs, args, Path(model_dir)).items()}
        print(f"  all processes: {time.perf_counter() - began:.0f} s wall\n")

    gb = 1e9
    header = f"{'configuration':<48} {'CPU s/step':>10} {'wall s':>8} {'step peak GB':>13} {'process peak GB':>16}"
    print(f"{header} {'loss':>10}")
    for config in configs:
        s = results[config]
        print(
            f"{config.name:<48} {s['cpu_s']:>10.1f} {s['wall_s']:>8.1f} {s['step_peak'] / gb:>13.3f} "
            f"{s['process_peak'] / gb:>16.3f} {s['loss']:>10.5f}"
        )
    # Each of ours against the usual implementation of the same objective: printed here, written to the JSON.
    ratios, same = {}, {}
    for objective, label in OBJECTIVES.items():
        usual = results[Config(objective, "usual")]
        for impl in ("ours", "ours_per_part"):
            ours, name = results[Config(objective, impl)], f"{label}, {IMPLEMENTATIONS[impl]}"
            ratios[name] = {key: ours[key] / usual[key] for key in ("step_peak", "process_peak", "cpu_s")}
            same[name] = same_first_loss(ours["loss"], usual["loss"])
    print("\nours / usual (targets: peak memory ≤ 0.7, step time ≤ 1.0)")
    print(f"{'configuration':<36} {'step peak':>10} {'process peak':>13} {'CPU time':>9} {'same loss':>10}")
    for name, r in ratios.items():
        print(
            f"{name:<36} {r['step_peak']:>10.2f} {r['process_peak']:>13.2f} {r['cpu_s']:>9.2f} "
            f"{'yes' if same[name] else 'NO':>10}"
        )
    plain, measured = results[Config("npo_gd", "ours")], results[Config("npo_gd", "ours", g_effect=True)]
    every_step = measured["cpu_s"] / plain["cpu_s"]
    print("\nG-effect callback on the NPO + GD step (ours), relative to the step without it")
    print(f"  every step:     time {every_step:.2f}×, step peak {measured['step_peak'] / plain['step_peak']:.2f}×")
    print(f"  every 10 steps: time {(every_step + 9) / 10:.2f}× (derived: (t_measured + 9 t_plain) / 10)")
    if args.json is not None:
        record = {
            "command": " ".join(["python", "benchmarks/step_memory.py", *sys.argv[1:]]),
            "model": {"parameters": n_params, **{k: getattr(args, k) for k in ("hidden", "layers", "vocab")}},
            "setup": {k: getattr(args, k) for k in ("batch", "seq", "steps", "threads", "jobs")},
            "torch": torch.__version__,
            "configurations": {config.name: results[config] for config in configs},
            "ratios_to_usual": ratios,
            "g_effect_every_step": {"time": every_step, "step_peak": measured["step_peak"] / plain["step_peak"]},
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
