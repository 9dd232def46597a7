"""The runs of the sharded G-effect test, and the script that makes them on two CPU processes under FSDP2.

``python tests/callbacks/sharded_runs.py TINY_MODEL TOFU_DIR OUT_JSON`` trains GradDiff and NPO on the tiny Llama with
``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo")`` (Lightning's
launcher re-executes this script for rank 1), each rank on its own half of every step's batches, and writes what
rank 0 saw to ``OUT_JSON``: the global loss of every step and the callback's history. The test runs the same steps
on one process, with the two halves as two accumulated micro-batches: DDP and FSDP average the ranks' gradients the
way Lightning averages accumulated ones, so the two runs optimise the same objective on the same global batch.

All the runs of the test happen in one launch (process start-up is most of their cost on a CPU):

* ``grad_diff``: 3 steps, float32, the callback with ``terms``, ``measure_update`` and ``realised_change``;
* ``npo``: 4 steps (2 epochs), a sharded checkpoint every 2 steps; ``npo_resumed``: the same run resumed from the
  step-2 checkpoint;
* ``grad_diff_bf16``: 1 step under ``precision="bf16-mixed"`` (FSDP2's mixed precision policy) with gradient
  checkpointing.
"""

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Sampler
from transformers import AutoTokenizer

import lit_unlearn
from callbacks import GEffectCallback, SupportsObjectiveTerms
from lit_unlearn.batch import Batch
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair
from lit_unlearn.modules.base import ReferenceOutputs, UnlearningModule

WORLD = 2
BATCHES = 4
"""Micro-batches of 2 forget and 2 retain rows: one epoch is two optimiser steps of a global batch of 2 × 2 rows."""


def tofu_batches(tiny_model_dir: str | Path, tofu_dir: str | Path) -> list[dict[str, Batch]]:
    """:data:`BATCHES` forget/retain batches of TOFU rows, tokenized with the tiny model's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def part(split: str, start: int) -> Batch:
        with open(Path(tofu_dir) / f"{split}.json") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(start + 2), strict=False)][start:]
        encoded = [encode_pair(tokenizer, r["question"], r["answer"], "qa", 128) for r in rows]
        ids = [e["input_ids"] for e in encoded]
        return pad_sequences(ids, tokenizer.pad_token_id, labels=[e["labels"] for e in encoded])

    return [{"forget": part("forget01", 2 * i), "retain": part("retain90", 2 * i)} for i in range(BATCHES)]


class RankSlice(Sampler[int]):
    """Rank ``r`` of ``W`` takes batches ``r, r + W, ...``; one process takes them all, in order.

    So step ``s`` of the two-rank run sees batches ``2s`` and ``2s + 1`` (one per rank), and step ``s`` of the
    one-process run, accumulating 2 micro-batches, sees the same two.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.n // self._rank_world()[1]

    def __iter__(self) -> Any:
        rank, world = self._rank_world()
        return iter(range(rank, self.n, world))


class StepLosses(Callback):
    """The global loss of every optimiser step: the mean of ``train/loss`` over ranks and micro-batches."""

    def __init__(self) -> None:
        self.micro: list[float] = []
        self.steps: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.callback_metrics["train/loss"].detach().clone()
        self.micro.append(float(trainer.strategy.reduce(loss, reduce_op="mean")))
        k = trainer.accumulate_grad_batches
        if len(self.micro) % k == 0:
            self.steps.append(sum(self.micro[-k:]) / k)


class TermsCallback(GEffectCallback):
    """The callback with ``terms=True`` for modules that do not implement ``objective_terms`` themselves: the two
    terms of ``training_step``, averaged over the micro-batches."""

    def objective_terms(self, pl_module: LightningModule, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        if isinstance(pl_module, SupportsObjectiveTerms):
            return super().objective_terms(pl_module, batches)
        assert isinstance(pl_module, UnlearningModule)
        k = len(batches)
        unlearn = regularizer = torch.zeros(())
        for batch in batches:
            logits = pl_module.reference_logits({name: batch[name] for name in pl_module.reference_parts})
            forget = pl_module.forget_loss(batch, ReferenceOutputs(batch, logits))
            unlearn = unlearn + pl_module.forget_weight * forget / k
            regularizer = regularizer + pl_module.retain_weight * pl_module.retain_term(batch["retain"], None) / k
        return {"unlearn": unlearn, "regularizer": regularizer}


def run(
    name: str,
    tiny_model_dir: str | Path,
    batches: list[dict[str, Batch]],
    root: Path,
    strategy: Strategy | str,
    devices: int,
    max_steps: int,
    precision: str = "32-true",
    checkpoint_every: int | None = None,
    ckpt_path: str | None = None,
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """One fit of GradDiff (``name`` starting with ``grad_diff``) or NPO; returns what the test compares.

    On one process (``devices=1``) the micro-batches are accumulated in pairs, matching the two ranks' batches.
    """
    torch.manual_seed(0)
    cls = lit_unlearn.GradDiff if name.startswith("grad_diff") else lit_unlearn.NPO
    module = cls(
        model_name_or_path=str(tiny_model_dir),
        lr=1e-3,
        warmup_epochs=0.0,
        gradient_checkpointing=gradient_checkpointing,
        output_dir=str(root / name / "model"),
    )
    g_effect = TermsCallback(terms=True, measure_update=True, realised_change=True, save_plot=False)
    losses = StepLosses()
    callbacks: list[Callback] = [g_effect, losses]
    if checkpoint_every is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=root / name / "ckpt", every_n_train_steps=checkpoint_every, save_top_k=-1)
        )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_steps=max_steps,
        accumulate_grad_batches=WORLD // devices,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=checkpoint_every is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root / name,
        callbacks=callbacks,
    )
    loader = DataLoader(batches, batch_size=None, sampler=RankSlice(len(batches)))
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    sharded = [isinstance(p, DTensor) for m in module.models_to_shard() for p in m.parameters()]
    return {"losses": losses.steps, "history": g_effect.history, "all_sharded": all(sharded)}


def main(tiny_model_dir: str, tofu_dir: str, out_json: str) -> None:
    """The two-process runs of the module docstring; rank 0 writes the results to ``out_json``."""
    root = Path(out_json).parent
    batches = tofu_batches(tiny_model_dir, tofu_dir)

    def strategy() -> ModelParallelStrategy:
        return ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1, process_group_backend="gloo")

    results = {
        "grad_diff": run("grad_diff", tiny_model_dir, batches, root, strategy(), WORLD, max_steps=3),
        "npo": run("npo", tiny_model_dir, batches, root, strategy(), WORLD, max_steps=4, checkpoint_every=2),
    }
    step_2 = root / "npo" / "ckpt" / "epoch=0-step=2.ckpt"
    results["npo_resumed"] = run(
        "npo_resumed", tiny_model_dir, batches, root, strategy(), WORLD, 4, ckpt_path=str(step_2)
    )
    results["grad_diff_bf16"] = run(
        "grad_diff_bf16", tiny_model_dir, batches, root, strategy(), WORLD, 1, "bf16-mixed", gradient_checkpointing=True
    )
    if torch.distributed.get_rank() == 0:
        Path(out_json).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
