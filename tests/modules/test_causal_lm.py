"""``CausalLMModule``'s one set of optimisation options: the schedule's values, and injected optimisers/schedulers."""

import math
from pathlib import Path

import pytest
import torch

import lit_unlearn
from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.modules.causal_lm import AdamWSettings, ScheduleSettings

TOTAL = 10


def _factors(schedule: ScheduleSettings, total: int = TOTAL, epochs: int = 5) -> list[float]:
    warmup = schedule.warmup_steps(total, epochs)
    return [schedule.factor(step, total, warmup) for step in range(total)]


def test_linear_from_zero_hand_values() -> None:
    """TOFU's schedule, 10 steps over 5 epochs: a 2-step warm-up from 0, then down by 1/8 per step."""
    schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.0)
    assert schedule.warmup_steps(TOTAL, 5) == 2
    expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert _factors(schedule) == pytest.approx(expected, abs=1e-15)


def test_cosine_one_step_in_hand_values() -> None:
    """The fine-tuning shape: warm-up (s + 1) / W, so step W - 1 already runs at lr; then the cosine from step W."""
    schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=False, decay="cosine", min_lr_ratio=0.1)
    factors = _factors(schedule)
    assert factors[:3] == [0.5, 1.0, 1.0]
    progress = [(s - 2) / 8 for s in range(2, TOTAL)]  # 0, 1/8, ..., 7/8
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2 for p in progress]
    assert factors[2:] == pytest.approx(expected, abs=1e-15)
    assert factors[6] == pytest.approx(0.55)  # halfway down: 0.1 + 0.9 / 2
    assert schedule.factor(TOTAL, TOTAL, 2) == pytest.approx(0.1)  # the end of the cosine is the floor


def test_linear_decay_to_a_floor_and_without_warmup() -> None:
    schedule = ScheduleSettings(warmup_epochs=0.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.2)
    assert schedule.warmup_steps(TOTAL, 5) == 0
    expected = [0.2 + 0.8 * (TOTAL - s) / TOTAL for s in range(TOTAL)]  # starts at the peak, no warm-up step
    assert _factors(schedule) == pytest.approx(expected, abs=1e-15)


def test_warmup_longer_than_the_run_is_capped() -> None:
    schedule = ScheduleSettings(warmup_epochs=3.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.0)
    assert schedule.warmup_steps(4, epochs=1) == 4
    assert _factors(schedule, total=4, epochs=1) == [0.0, 0.25, 0.5, 0.75]


def test_scheduler_applies_the_factors() -> None:
    schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = schedule.scheduler(optimizer, TOTAL, epochs=5)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.4 * f for f in _factors(schedule)], abs=1e-15)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (AdamWSettings, {"lr": -1.0, "weight_decay": 0.0}, "lr must be positive and finite, got -1.0"),
        (AdamWSettings, {"lr": float("inf"), "weight_decay": 0.0}, "lr must be positive and finite, got inf"),
        (AdamWSettings, {"lr": 1.0, "weight_decay": 0.0, "betas": (0.9,)}, "betas must be two numbers"),
        (ScheduleSettings, {"warmup_epochs": math.inf}, "warmup_epochs must be a finite number"),
        (ScheduleSettings, {"decay": "exponential"}, "decay='exponential'; choose one of"),
        (ScheduleSettings, {"min_lr_ratio": -0.1}, r"min_lr_ratio must be in \[0, 1\]"),
    ],
)
def test_settings_validation(cls: type, kwargs: dict, match: str) -> None:
    if cls is ScheduleSettings:
        kwargs = {"warmup_epochs": 1.0, "warmup_from_zero": True, "decay": "linear", "min_lr_ratio": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05)


def _constant(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=3)


@pytest.mark.parametrize("name", ["Finetune", "NPO"])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": _sgd, "lr": 1e-3}, r": the given `optimizer` replaces the default one, so lr \(options"),
        (
            {"optimizer": _sgd, "weight_decay": 0.0, "betas": (0.9, 0.9)},
            r": the given `optimizer`.*, so weight_decay, betas \(",
        ),
        ({"scheduler": _constant, "warmup_epochs": 0.0}, r": the given `scheduler` .*, so warmup_epochs \("),
        (
            {"scheduler": _constant, "decay": "cosine", "min_lr_ratio": 0.0},
            r": the given `scheduler`.*, so decay, min_lr_ratio \(",
        ),
    ],
)
def test_options_of_a_replaced_default_are_an_error(name: str, kwargs: dict, match: str, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=name + match):
        getattr(lit_unlearn, name)(model_name_or_path=str(tiny_model_dir), **kwargs)


def test_class_defaults_fill_the_options_not_given(tiny_model_dir: Path) -> None:
    finetune = lit_unlearn.Finetune(str(tiny_model_dir), lr=1e-3)
    assert finetune.adamw == AdamWSettings(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    assert finetune.schedule == ScheduleSettings(1.0, False, "cosine", 0.1)
    npo = lit_unlearn.NPO(str(tiny_model_dir), warmup_epochs=0.5, betas=[0.8, 0.9])
    assert npo.adamw == AdamWSettings(lr=1e-5, weight_decay=0.01, betas=(0.8, 0.9))
    assert npo.schedule == ScheduleSettings(0.5, True, "linear", 0.0)
    injected = lit_unlearn.NPO(str(tiny_model_dir), optimizer=_sgd, scheduler=_constant)
    assert injected.adamw is None
    assert injected.schedule is None
    optimizers = injected.configure_optimizers()
    assert type(optimizers["optimizer"]) is torch.optim.SGD
    assert type(optimizers["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.ConstantLR


def test_injected_optimizer_runs_under_the_default_schedule_through_the_cli(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--model.optimizer`` replaces AdamW; the default schedule still scales the optimiser's own lr."""
    cli = run_lightning_cli(
        [
            "fit",
            "--model=GradAscent",
            f"--model.model_name_or_path={tiny_model_dir}",
            "--model.optimizer=torch.optim.SGD",
            "--model.optimizer.lr=0.05",
            "--model.min_lr_ratio=0.3",
            "--data=lit_unlearn.data.TOFUUnlearnDataModule",
            "--data.forget_split=forget01",
            "--data.num_authors=2",
            "--data.batch_size=4",
            "--data.max_length=128",
            "--trainer.max_steps=2",
            "--trainer.accelerator=cpu",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["initial_lr"] == 0.05
    # After the run's last step the default schedule has decayed the optimiser's own lr to its floor.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.3)
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(
            [
                "--model=GradAscent",
                f"--model.model_name_or_path={tiny_model_dir}",
                "--model.lr=1e-3",
                "--model.optimizer=torch.optim.SGD",
                "--model.optimizer.lr=0.05",
                "--data=lit_unlearn.data.TOFUUnlearnDataModule",
                f"--trainer.default_root_dir={tmp_path}",
            ],
            run=False,
        )
    assert exit_info.value.code == 2
    assert "GradAscent: the given `optimizer` replaces the default one, so lr (options" in capsys.readouterr().err


def test_output_dir_that_is_a_file_fails_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    # save_pretrained would log an error at fit end and save nothing.
    target = tmp_path / "model.bin"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match=r"output_dir '.*model\.bin' is a file.*Pass a directory path"):
        lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), output_dir=str(target))
