"""End to end: the tiny model evaluated through ``Trainer.validate``/``Trainer.test`` with a LightningModule using
``TOFUEvalMixin`` on the dict of TOFU evaluation dataloaders; files, logged keys, the plain runner's equality, and the
per-item output reused as the retain reference."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from tofu_eval_helpers import small_loaders
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.eval import EvalSettings, TOFUEvalMixin, evaluate, summarize
from lit_unlearn.metrics import MODEL_UTILITY_COMPONENTS


class TinyEvalModule(TOFUEvalMixin, LightningModule):
    """The smallest host of the mixin: an HF model, its tokenizer and the evaluation settings."""

    def __init__(self, model_dir: Path, eval_settings: EvalSettings) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.eval_settings = eval_settings


def _trainer(root: Path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def test_validate_and_test_through_the_mixin(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = EvalSettings(max_new_tokens=5)
    module = TinyEvalModule(tiny_model_dir, settings)
    trainer = _trainer(tmp_path)
    trainer.validate(
        module, dataloaders=small_loaders(tofu_dir, module.tokenizer, items=4, batch_size=3), verbose=False
    )

    metrics = trainer.callback_metrics
    for split in ("forget", "retain", "real_authors", "world_facts"):
        for metric in ("probability", "truth_ratio", "rouge_l_recall", "extraction_strength", "exact_memorization"):
            assert f"val/{split}/{metric}" in metrics, f"val/{split}/{metric}"
    assert {"val/model_utility", "val/mia_min_k_auc", "val/privleak", "val/holdout/probability"} <= set(metrics)
    assert "val/forget_quality" not in metrics  # no retain reference yet

    out_dir = Path(trainer.log_dir) / "tofu_eval" / "val-epoch=0-step=0"
    items = json.loads((out_dir / "eval_items.json").read_text())
    assert {split: len(rows) for split, rows in items["splits"].items()} == dict.fromkeys(
        ("forget", "retain", "real_authors", "world_facts", "holdout"), 4
    )
    forget_item = items["splits"]["forget"][0]
    assert {"generation", "rouge_l_recall", "truth_ratio", "probability", "perturbed_losses"} <= set(forget_item)
    assert len(forget_item["perturbed_losses"]) == 5
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["model_utility"] == pytest.approx(metrics["val/model_utility"].item(), rel=1e-5)
    table = {
        cells[0]: cells[1]
        for line in (out_dir / "summary.md").read_text().splitlines()
        if len(cells := [c.strip() for c in line.strip("|").split("|")]) == 2
    }
    assert float(table["model_utility"]) == pytest.approx(summary["model_utility"], rel=1e-3)
    assert float(table["mia_min_k_auc"]) == pytest.approx(summary["mia_min_k_auc"], rel=1e-3)
    assert table["forget_quality"] == "–"  # no retain reference
    assert module.tofu_eval_summary == pytest.approx(summary)

    # The plain runner shares the code: same loaders, same numbers.
    plain = evaluate(
        module.model,
        module.tokenizer,
        settings=settings,
        dataloaders=small_loaders(tofu_dir, module.tokenizer, 4, 2),
    )
    # Progress bars are for a terminal: output captured or redirected to a log gets none.
    assert "TOFU eval [" not in capsys.readouterr().err
    for key, value in summary.items():
        assert plain["summary"][key] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-9)), key

    # summarize reads the per-item output back to the same numbers, to the last bit: the file holds the per-item
    # values the metrics aggregated, and both paths aggregate them with the same functions in the same order.
    again = summarize(out_dir)
    assert {key: again[key] for key in summary} == summary
    assert set(MODEL_UTILITY_COMPONENTS) <= set(summary)

    # The evaluation as its own retain reference: identical truth-ratio samples and AUCs.
    module.eval_settings = EvalSettings(max_new_tokens=5, retain_eval_path=str(out_dir), output_dir=str(tmp_path / "o"))
    trainer = _trainer(tmp_path)
    trainer.test(module, dataloaders=small_loaders(tofu_dir, module.tokenizer, items=4, batch_size=4), verbose=False)
    assert trainer.callback_metrics["test/forget_quality"].item() == pytest.approx(1.0)
    assert trainer.callback_metrics["test/forget_quality_log10"].item() == pytest.approx(0.0, abs=1e-6)
    assert trainer.callback_metrics["test/privleak"].item() == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "o" / "tofu_eval" / "test-epoch=0-step=0" / "summary.json").is_file()


class TinyFitModule(TinyEvalModule):
    """Adds a training step, to evaluate during ``fit`` as an unlearning module does."""

    def training_step(self, batch: dict, batch_idx: int) -> object:
        part = batch["teacher_forced"]["answer"]
        return self.model(**part).loss

    def configure_optimizers(self) -> object:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_evaluation_during_fit_skips_the_sanity_check(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from lightning.pytorch import Callback

    said = "TOFU evaluation written to"

    class CallbacksEndFirst(Callback):  # as the progress bar does: the module's one line must come after it
        def __init__(self) -> None:
            self.lines_at_end: list[int] = []

        def on_validation_end(self, trainer: Trainer, pl_module: object) -> None:
            self.lines_at_end.append(caplog.text.count(said))

    order = CallbacksEndFirst()
    settings = EvalSettings(max_new_tokens=3, max_items=2, output_dir=str(tmp_path / "evals"))
    module = TinyFitModule(tiny_model_dir, settings)
    loaders = small_loaders(tofu_dir, module.tokenizer, items=2, batch_size=2)  # built with the evaluation's cap
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=1,
        limit_train_batches=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        callbacks=[order],
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(module, train_dataloaders=loaders["retain"], val_dataloaders=loaders)
    written = sorted(p.name for p in (tmp_path / "evals" / "tofu_eval").iterdir())
    assert written == ["val-epoch=1-step=2"]  # neither the sanity check nor epoch 0 wrote anything
    assert caplog.text.count(f"{said} {tmp_path / 'evals' / 'tofu_eval' / written[0]}: ") == 1
    assert order.lines_at_end == [0, 0]  # the sanity check's end, then the evaluation's: the line comes after both
    assert module.tofu_eval_summary["num_items/forget"] == 2
    assert "val/model_utility" in trainer.callback_metrics


def test_test_says_its_one_line_after_the_callbacks_teardown(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The progress bar prints its final frame in its teardown: the line comes after it, as the last thing said.
    import logging

    from lightning.pytorch import Callback

    said = "TOFU evaluation written to"
    seen: list[int] = []

    class Bar(Callback):
        def teardown(self, trainer: Trainer, pl_module: object, stage: str) -> None:
            seen.append(caplog.text.count(said))

    settings = EvalSettings(max_new_tokens=2, max_items=2, output_dir=str(tmp_path / "evals"))
    module = TinyFitModule(tiny_model_dir, settings)
    loaders = small_loaders(tofu_dir, module.tokenizer, items=2, batch_size=2)
    trainer = Trainer(
        accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
        logger=False, callbacks=[Bar()],
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.test(module, dataloaders=loaders, verbose=False)
    assert seen == [0]
    assert caplog.text.count(said) == 1


def test_a_second_evaluation_at_the_same_step_gets_its_own_folder(tmp_path: Path) -> None:
    from lit_unlearn.eval.mixin import _fresh_dir

    first = tmp_path / "val-epoch=0-step=0"
    assert _fresh_dir(first) == first
    first.mkdir()
    assert _fresh_dir(first).name == "val-epoch=0-step=0-v1"
    (tmp_path / "val-epoch=0-step=0-v1").mkdir()
    assert _fresh_dir(first).name == "val-epoch=0-step=0-v2"
