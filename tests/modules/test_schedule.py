"""The optimiser and learning-rate schedule every shipped config runs, step by step, against the pre-unification code.

Before the scheduler moved into ``CausalLMModule``, ``Finetune`` and ``UnlearningModule`` each had their own: the
fine-tuning configs set ``warmup_ratio`` and ``min_lr_ratio`` (a ``LambdaLR``: warm-up ``(s + 1) / W`` with
``W = ceil(warmup_ratio · T)``, then a cosine down to ``min_lr_ratio · lr``), the unlearning configs used the default
``warmup_epochs=1`` (transformers' ``get_linear_schedule_with_warmup``: ``s / W`` with ``W = ceil(T / max_epochs)``,
then linear decay to 0). Both are reimplemented below from those definitions, with the values the configs held, and
compared with the learning rate the optimiser actually holds at every optimiser step of the real run.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.modules.finetune import Finetune

REPO = Path(__file__).resolve().parents[2]
TINY = sorted((REPO / "configs" / "tofu_tiny").glob("*.yaml"))
FULL = sorted((REPO / "configs" / "tofu").glob("*.yaml"))

# What the fine-tuning configs set before the options were unified (warmup_ratio, min_lr_ratio); the unlearning
# configs set neither and ran the old UnlearningModule default, one warm-up epoch.
OLD_FINETUNE = {"tofu_tiny": (0.05, 0.1), "tofu": (0.2, 0.0)}
OLD_WARMUP_EPOCHS = 1.0
ADAMW_BETAS = (0.9, 0.999)  # torch's default, which the old UnlearningModule left in place

# Training rows of each fine-tuning config (tiny: authors 0-4 and 20-24, plus the 2 forget01 authors for the target,
# plus 100 real-author and 117 world-fact questions).
FINETUNE_ROWS = {
    "tofu_tiny/finetune_target.yaml": 200 + 40 + 217,
    "tofu_tiny/finetune_retain.yaml": 200 + 217,
    "tofu/finetune_target.yaml": 4000,
    "tofu/finetune_retain.yaml": 3600,
}


def _old_finetune_lrs(lr: float, total: int, warmup_ratio: float, min_ratio: float) -> list[float]:
    warmup = math.ceil(warmup_ratio * total)
    lrs = []
    for step in range(total):
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            factor = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        lrs.append(lr * factor)
    return lrs


def _old_unlearning_lrs(lr: float, total: int, max_epochs: int, warmup_epochs: float) -> list[float]:
    warmup = min(math.ceil(warmup_epochs * total / max_epochs), total)
    lrs = []
    for step in range(total):
        factor = step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
        lrs.append(lr * factor)
    return lrs


class _Recorded(Exception):
    """Ends ``fit`` once the schedule is read: no training step is needed for it."""


class _RecordSchedule(Callback):
    """At the start of training, reads the learning rate of each of the T optimiser steps off the real scheduler."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        assert trainer.lr_scheduler_configs[0].interval == "step"
        self.total = int(trainer.estimated_stepping_batches)
        self.group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        self.optimizer_type = type(optimizer)
        self.lrs = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            for _ in range(self.total):
                self.lrs.append(optimizer.param_groups[0]["lr"])
                scheduler.step()
        raise _Recorded


def _record(config: Path, model_dir: Path, tmp_path: Path) -> tuple[_RecordSchedule, dict, LightningModule]:
    raw = yaml.safe_load(config.read_text())
    init = raw["model"]["init_args"]
    overrides = [
        f"--model.model_name_or_path={model_dir}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
    ]
    if "tiny" in init:
        overrides.append("--model.tiny=null")  # the schedule does not depend on the weights: use the test model
    if "output_dir" in init:
        overrides.append(f"--model.output_dir={tmp_path / 'out'}")
    if raw["model"]["class_path"].endswith("RMU"):
        overrides += ["--model.layer=1", r"--model.trainable_params=layers\.1\.mlp"]
    if "precision" in raw.get("trainer", {}):
        overrides.append("--trainer.precision=32-true")
    if raw.get("trainer", {}).get("devices", 1) != 1:
        # One process: on several, Lightning re-executes sys.argv, i.e. this whole pytest run, once per device. The
        # schedule is checked against the total steps it records, whatever the world size.
        overrides += ["--trainer.devices=1", "--trainer.strategy=auto"]
    cli = run_lightning_cli(["--config", str(config), *overrides], run=False)
    recorder = _RecordSchedule()
    cli.trainer.callbacks.append(recorder)
    with pytest.raises(_Recorded):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder, raw, cli


def _check(config: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    recorder, raw, cli = _record(config, tiny_model_dir, tmp_path)
    init = raw["model"]["init_args"]
    lr, total = init["lr"], recorder.total
    assert recorder.optimizer_type is torch.optim.AdamW
    assert recorder.group["initial_lr"] == lr
    assert recorder.group["weight_decay"] == init["weight_decay"]
    if isinstance(cli.model, Finetune):
        name = f"{config.parent.name}/{config.name}"
        assert len(cli.datamodule.training_rows()[0]) == FINETUNE_ROWS[name]
        assert recorder.group["betas"] == tuple(init.get("betas", ADAMW_BETAS))
        expected = _old_finetune_lrs(lr, total, *OLD_FINETUNE[config.parent.name])
    else:
        assert recorder.group["betas"] == ADAMW_BETAS
        expected = _old_unlearning_lrs(lr, total, raw["trainer"]["max_epochs"], OLD_WARMUP_EPOCHS)
    assert total > 1
    assert recorder.lrs == expected  # exactly, step by step


@pytest.mark.parametrize("config", TINY, ids=lambda p: p.name)
def test_tiny_config_schedule_is_unchanged(config: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    _check(config, tiny_model_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("config", FULL, ids=lambda p: p.name)
def test_full_scale_config_schedule_is_unchanged(config: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same at full scale (TOFU-sized data sets, tokenized with the test model's tokenizer; no GPU needed)."""
    _check(config, tiny_model_dir, tmp_path)
