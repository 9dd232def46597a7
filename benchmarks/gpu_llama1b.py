"""bf16 throughput and memory of unlearning steps on a 1B-parameter Llama, with and without the G-effect callback.

The model has Llama-3.2-1B's shape (16 blocks, hidden 2048, vocab 128256) and random weights, built from a
``LlamaConfig`` (no weights can be downloaded); the tokenizer is the project's byte-level BPE trained on TOFU.
Training runs the real objectives (``GradDiff``, ``NPO`` with its reference model, ``WGA`` + KL) on TOFU forget10
through a Lightning ``Trainer`` with ``precision="bf16-true"``. Needs a CUDA device::

    python benchmarks/gpu_llama1b.py --tofu-dir ../shared/data/tofu --steps 20 --out results.json
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from transformers import LlamaConfig, LlamaForCausalLM

import lit_unlearn
from callbacks import GEffectCallback
from lit_unlearn.models.tiny import train_tokenizer
from lit_unlearn.modules.finetune import tiny_tokenizer_corpus

LLAMA_32_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}


SMOKE = {
    "vocab_size": 8192,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Wall time and answer-context tokens of each optimiser step (CUDA-synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        _sync()
        self._start = time.perf_counter()
        self.tokens.append(sum(int(part["attention_mask"].sum()) for part in batch.values()))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        _sync()
        self.times.append(time.perf_counter() - self._start)


def build_model(out: Path, tofu_dir: str, shape: dict) -> None:
    tokenizer = train_tokenizer(tiny_tokenizer_corpus(tofu_dir), 8192)
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B", flush=True)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def run(name: str, cls: str, model_dir: Path, tofu_dir: str, steps: int, g_effect: int | None, **kwargs: Any) -> dict:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    module = getattr(lit_unlearn, cls)(model_name_or_path=str(model_dir), lr=1e-5, warmup_epochs=0, **kwargs)
    data = lit_unlearn.TOFUUnlearnDataModule(
        str(model_dir), forget_split="forget10", batch_size=4, max_length=256, data_dir=tofu_dir
    )
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if g_effect:
        callbacks.append(GEffectCallback(every_n_steps=g_effect, save_plot=False, realised_change=False))
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        precision="bf16-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(module, datamodule=data)
    warm = timer.times[3:]  # the first steps include CUDA/cuBLAS warm-up
    median = statistics.median(warm)
    tokens = statistics.mean(timer.tokens[3:])
    row = {
        "run": name,
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
        "final_loss": float(trainer.callback_metrics["train/loss"]),
    }
    print(json.dumps(row), flush=True)
    del module, trainer
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tofu-dir", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="a 2-block model on the CPU, to check the script")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_llama1b.py needs a CUDA device (or --smoke).")
    print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch.__version__, flush=True)
    model_dir = Path(tempfile.mkdtemp()) / "llama1b"
    build_model(model_dir, args.tofu_dir, SMOKE if args.smoke else LLAMA_32_1B)
    rows = [
        run("GradDiff", "GradDiff", model_dir, args.tofu_dir, args.steps, None),
        run("GradDiff + G-effect every step", "GradDiff", model_dir, args.tofu_dir, args.steps, 1),
        run("GradDiff + G-effect every 10 steps", "GradDiff", model_dir, args.tofu_dir, args.steps, 10),
        run("NPO (+ reference model)", "NPO", model_dir, args.tofu_dir, args.steps, None),
        run("WGA + KL", "WGA", model_dir, args.tofu_dir, args.steps, None, retain_loss="kl"),
    ]
    base = rows[0]["median_step_s"]
    print(f"\n{'run':<38}{'step s':>9}{'ratio':>8}{'tok/s':>10}{'peak GiB':>10}")
    for row in rows:
        print(
            f"{row['run']:<38}{row['median_step_s']:>9.3f}{row['median_step_s'] / base:>8.2f}"
            f"{row['tokens_per_s']:>10.0f}{row['peak_memory_gib']:>10.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
