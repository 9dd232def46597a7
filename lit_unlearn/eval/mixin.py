"""``TOFUEvalMixin``: TOFU evaluation as the validation and test loops of any LightningModule.

``class UnlearningModule(TOFUEvalMixin, LightningModule)`` gets ``validation_step``/``test_step`` and the epoch-end
aggregation, logging (``val/<split>/<metric>``, ``val/model_utility``, ``val/forget_quality``, ...) and files. Pair it
with a DataModule whose ``val_dataloader``/``test_dataloader`` return ``lit_unlearn.data.tofu_eval_dataloaders(...)``.
To evaluate every N epochs while unlearning, set ``Trainer(check_val_every_n_epoch=N)``: Lightning's own loop brings
progress bars, device placement, DDP and logger plumbing that a callback would have to re-create.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from lit_unlearn.eval.evaluator import TOFUEvaluator, eval_datasets
from lit_unlearn.eval.io import write_outputs
from lit_unlearn.eval.settings import EvalSettings

_LOGGED_SKIP = ("num_items/", "privleak_reference_auc")


def _headline(summary: Mapping[str, Any]) -> str:
    """Forget quality and model utility in one phrase; says why forget quality is missing (no retain evaluation)."""
    fq, mu = summary.get("forget_quality"), summary.get("model_utility")
    fq_text = f"{fq:.4g}" if fq is not None else "none (set evaluation.retain_eval_path to the retain model's)"
    mu_text = f"{mu:.4g}" if mu is not None else "none (a utility split was not evaluated)"
    return f"forget quality {fq_text}, model utility {mu_text}"


def _fresh_dir(path: Path) -> Path:
    """``path``, or ``path-v1``, ``path-v2``, ... when taken: a second evaluation at the same step (``validate`` run
    twice into one ``output_dir``) must not overwrite the first one's files."""
    candidate, version = path, 0
    while candidate.exists():
        version += 1
        candidate = path.with_name(f"{path.name}-v{version}")
    return candidate


class TOFUEvalMixin:
    """Validation/test steps running the TOFU evaluation on ``self.model`` (an HF causal LM).

    The host class provides ``self.model``, ``self.tokenizer`` and ``self.eval_settings`` (an ``EvalSettings``; the
    defaults are used when absent). After each evaluation ``self.tofu_eval_summary`` holds the flat summary and the
    files (per-item JSON, summary JSON, markdown table) are in
    ``<eval_settings.output_dir or trainer.log_dir>/tofu_eval/<stage>-epoch=<E>-step=<S>/`` (``-v1``, ``-v2``, ...
    appended when that folder exists).
    Sanity-check batches are evaluated but neither logged nor written.
    """

    tofu_eval_summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------ helpers
    def _tofu_evaluator(self) -> TOFUEvaluator:
        evaluator = self.__dict__.get("_tofu_eval_state")
        settings = getattr(self, "eval_settings", None) or EvalSettings()
        if evaluator is None or evaluator.settings is not settings:
            if getattr(self, "tokenizer", None) is None:
                raise AttributeError(
                    f"{type(self).__name__} uses TOFUEvalMixin but has no `self.tokenizer`; set it in __init__ "
                    "(the tokenizer of `self.model`)."
                )
            evaluator = TOFUEvaluator(self.tokenizer, settings)
            self.__dict__["_tofu_eval_state"] = evaluator
        return evaluator

    def tofu_split_name(self, batch: Mapping[str, Any], dataloader_idx: int = 0) -> str:
        """The evaluation split of ``batch``: the ``split`` the collator stored, else the key of the dataloader at
        ``dataloader_idx`` in the dict Lightning was given (the one place this mapping lives)."""
        if isinstance(batch, Mapping) and "split" in batch:
            return batch["split"]
        trainer = self.trainer
        loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
        if isinstance(loaders, Mapping):
            return list(loaders)[dataloader_idx]
        raise ValueError(
            "TOFU evaluation batches must come from lit_unlearn.data.tofu_eval_dataloaders (their batches carry "
            f"'split'); got a batch with keys {list(batch) if isinstance(batch, Mapping) else type(batch).__name__}."
        )

    def _tofu_eval_step(self, batch: Mapping[str, Any], dataloader_idx: int) -> None:
        split = self.tofu_split_name(batch, dataloader_idx)
        self._tofu_evaluator().update(self.model, {**batch, "split": split})

    def _tofu_eval_epoch_end(self, stage: str) -> None:
        evaluator = self._tofu_evaluator()
        trainer = self.trainer
        if trainer.sanity_checking or not evaluator.splits:
            evaluator.reset()
            return
        settings = evaluator.settings
        # Both gather from every process: every rank calls them, rank 0 alone writes the files.
        summary = evaluator.compute()
        records = None
        if settings.write_outputs:
            loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
            records = evaluator.records(eval_datasets(loaders))
        evaluator.reset()
        self.tofu_eval_summary = summary
        for key, value in summary.items():
            if value is None or key.startswith(_LOGGED_SKIP):
                continue
            # Every rank holds the same gathered value; sync_dist only silences Lightning's epoch-level DDP warning.
            self.log(
                f"{stage}/{key}", float(value), sync_dist=True, prog_bar=key in ("model_utility", "forget_quality")
            )
        if summary.get("forget_quality"):
            # float32 logging flushes p-values like 1e-239 (gradient ascent) to 0; the exponent survives.
            self.log(f"{stage}/forget_quality_log10", math.log10(summary["forget_quality"]), sync_dist=True)
        # trainer.log_dir broadcasts from rank 0: every rank must read it, or rank 0 waits forever for the others.
        root = settings.output_dir or trainer.log_dir or trainer.default_root_dir
        if records is not None and trainer.is_global_zero:
            out_dir = _fresh_dir(
                Path(root) / "tofu_eval" / f"{stage}-epoch={trainer.current_epoch}-step={trainer.global_step}"
            )
            metadata = {
                "stage": stage,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "model": getattr(getattr(self.model, "config", None), "_name_or_path", None),
                "settings": asdict(settings),
            }
            paths = write_outputs(out_dir, records, summary, metadata)
            # Said when the stage ends (_say_evaluated), after the progress bar's final frame: said now, that frame
            # printed under it.
            self._tofu_eval_line = f"TOFU evaluation written to {paths['items'].parent}: {_headline(summary)}"

    def _say_evaluated(self) -> None:
        line = getattr(self, "_tofu_eval_line", None)
        if line is not None:
            rank_zero_info(line)
            self._tofu_eval_line = None

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate one batch of a TOFU evaluation split (teacher-forced passes and generation)."""
        self._tofu_eval_step(batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Evaluate one batch of a TOFU evaluation split (teacher-forced passes and generation)."""
        self._tofu_eval_step(batch, dataloader_idx)

    def _check_strategy(self) -> None:
        """Refuse TOFU evaluation of a model sharded over several processes, before it can hang.

        Greedy generation stops at a different step on each rank, while every forward of a sharded model is a
        collective all ranks must join: evaluate the saved model on one device instead.
        """
        trainer = self.trainer
        if isinstance(trainer.strategy, ModelParallelStrategy) and trainer.world_size > 1:
            raise RuntimeError(
                "TOFU evaluation does not run on a model sharded by ModelParallelStrategy over "
                f"{trainer.world_size} processes (generation would leave the ranks out of step). Train with "
                "--trainer.limit_val_batches=0, then evaluate the saved model (output_dir) on one device with "
                "`lit-unlearn test`."
            )

    def on_validation_epoch_start(self) -> None:
        """Start from no records."""
        self._check_strategy()
        self._tofu_evaluator().reset()

    def on_validation_epoch_end(self) -> None:
        """Aggregate, log ``val/...`` and write the files."""
        self._tofu_eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        """Start from no records."""
        self._check_strategy()
        self._tofu_evaluator().reset()

    def on_test_epoch_end(self) -> None:
        """Aggregate, log ``test/...`` and write the files."""
        self._tofu_eval_epoch_end("test")

    def on_validation_end(self) -> None:
        """During fit, name the evaluation's folder and headline numbers in one line now (training goes on)."""
        if self.trainer.state.fn == "fit":
            self._say_evaluated()

    def teardown(self, stage: str) -> None:
        """After ``validate`` or ``test``, the same line last: Lightning's module teardown runs after the callbacks',
        where the progress bar prints its final frame."""
        self._say_evaluated()
        parent = getattr(super(), "teardown", None)  # cooperative: the host's LightningModule (or mixin) next
        if parent is not None:
            parent(stage)
