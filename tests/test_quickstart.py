"""`lit-unlearn quickstart`: input checks, model and evaluation caching, thread-independent builds, end to end."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lit_unlearn import quickstart

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = quickstart.main(argv)
    return code, capsys.readouterr().err


def _tofu_copy(tofu_dir: Path, dest: Path) -> Path:
    """The TOFU files the quickstart reads, copied (so a test can break one of them)."""
    dest.mkdir()
    for split in quickstart.NEEDED_SPLITS:
        (dest / f"{split}.json").write_bytes((tofu_dir / f"{split}.json").read_bytes())
    return dest


# ------------------------------------------------------------------------------------------ inputs, checked first
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "nope"], r"--method 'nope' is not a shipped tiny objective; choose one of \[.*'wga'"),
        (["--lr", "0"], r"--lr must be positive"),
        (["--g-effect-every", "0"], r"--g-effect-every must be ≥ 1"),
        (["--unlearn-config", "missing.yaml"], r"--unlearn-config: no file 'missing.yaml'"),
        (["--data-dir", "/nonexistent/tofu"], r"--data-dir /nonexistent/tofu is not a folder"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1, err  # one line, no traceback, no usage dump
    assert err.startswith("lit-unlearn quickstart: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "c" / "target").exists()  # nothing started


def test_missing_and_malformed_tofu_files_are_named(
    tofu_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tofu_copy(tofu_dir, tmp_path / "tofu")
    (data / "holdout01.json").unlink()
    args = ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), "--data-dir", str(data)]
    code, err = _run(args, capsys)
    assert code == 2
    assert "holdout01.json does not exist" in err
    (data / "holdout01.json").write_bytes((tofu_dir / "holdout01.json").read_bytes())
    lines = (data / "world_facts_perturbed.json").read_text().splitlines()
    lines[6] = lines[6][:-5]  # cut the JSON object short
    (data / "world_facts_perturbed.json").write_text("\n".join(lines) + "\n")
    code, err = _run(args, capsys)
    assert code == 2
    assert "world_facts_perturbed.json, line 7: malformed JSON" in err


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _run(["--output-dir", str(blocker / "out"), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2
    assert f"--output-dir {blocker / 'out'}: cannot write there" in err


def test_offline_without_data_folder_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("LIT_UNLEARN_TOFU_DIR")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, err = _run(["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2
    assert "is not cached and offline mode is on" in err
    assert "LIT_UNLEARN_TOFU_DIR" in err


def test_a_tofu_folder_from_the_variable_is_named_as_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The folder exists but lacks the splits: the error names where the folder came from and how to change it.
    monkeypatch.setenv("LIT_UNLEARN_TOFU_DIR", str(tmp_path))
    code, err = _run(["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2
    assert "does not exist (folder from $LIT_UNLEARN_TOFU_DIR)" in err
    assert "data_dir argument" not in err


# ------------------------------------------------------------------------------------------------------ outputs
def test_previous_results_are_moved_not_overwritten(tmp_path: Path) -> None:
    assert quickstart.archive_previous(tmp_path) is None  # nothing to keep yet
    (tmp_path / "summary.json").write_text('{"old": 1}')
    (tmp_path / "report.md").write_text("old report")
    moved = quickstart.archive_previous(tmp_path)
    assert moved is not None
    assert moved.parent == tmp_path / "previous"
    assert (moved / "report.md").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # about 100 s on a quiet 2-core machine: two spawned builds, five evaluations, both attacks
def test_quickstart_pipeline_on_a_short_recipe(
    tmp_path: Path, tofu_dir: Path, short_config: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole job, wired as the README runs it, on recipes cut to a few steps: every file is written and the
    report states each risk's direction as the sign of its realised change."""
    out = tmp_path / "out"
    argv = [
        "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(tofu_dir),
        "--target-config", short_config("tofu_tiny/finetune_target", max_epochs=1, limit_train_batches=2),
        "--retain-config", short_config("tofu_tiny/finetune_retain", max_epochs=1, limit_train_batches=2),
        "--unlearn-config", short_config("tofu_tiny/wga", max_epochs=1, limit_train_batches=3),
    ]  # fmt: skip
    assert quickstart.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr()
    last = json.loads(printed.out.splitlines()[-1])
    # One line per epoch, as the model builds print, and no progress bar (a wall of updates in a log).
    assert "[unlearn] epoch 1/1 · train/loss " in printed.out
    assert "Epoch 0:" not in printed.out + printed.err  # Lightning's training bar
    assert last == {"unlearned": {k: summary["unlearned"][k] for k in ("forget_quality", "model_utility")}}
    for model in ("target", "retain", "unlearned"):
        assert {"forget_quality", "model_utility"} <= summary[model].keys()
    assert summary["retain"]["forget_quality"] == 1.0
    assert summary["what_ran"]["optimiser steps"] == 3
    assert summary["what_ran"]["torch threads"] == 1
    # The saved config is the one that ran (the template said lr 3e-4 and another output folder).
    ran = yaml.safe_load((out / "unlearn_config.yaml").read_text())
    assert ran["model"]["init_args"]["lr"] == summary["what_ran"]["lr"] == quickstart.DEFAULT_LR
    assert ran["model"]["init_args"]["output_dir"] == str(out / "unlearned")
    assert any(c["class_path"] == "callbacks.GEffectCallback" for c in ran["trainer"]["callbacks"])
    report = (out / "report.md").read_text()
    for risk, reading in summary["g_effect"].items():
        word = "ROSE" if reading["realised"] > 0 else "FELL"
        assert f"**{risk} risk {word}**" in report
    for name in ("fq_vs_mu.png", "g_effect_steps.png", "risk_changes.png", "eval_unlearned/eval_items.json"):
        assert (out / name).is_file(), name
    relearn = summary["robustness"]["relearn"]
    assert relearn["budgets"] == [0, quickstart.RELEARN_STEPS]
    assert not set(relearn["halves"]["relearn_rows"]) & set(relearn["halves"]["eval_rows"])
    assert summary["robustness"]["quantize"]["spec"]["bits"] == 4
    assert "## Robustness" in report
    assert f"seed {relearn['seed']}" in report
    assert (out / "robustness" / "relearn" / "relearn.json").is_file()


@pytest.mark.slow
def test_quickstart_end_to_end_from_an_empty_cache(tmp_path: Path, tofu_dir: Path) -> None:
    """The README's main job: models built from scratch, a convincing unlearning, a report that follows its data."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert quickstart.main(["--output-dir", str(out), "--cache-dir", str(cache), "--data-dir", str(tofu_dir)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    target, unlearned = summary["target"], summary["unlearned"]
    assert unlearned["forget_quality"] >= 0.05
    assert unlearned["model_utility"] >= 0.9 * target["model_utility"]
    assert summary["retain"]["forget_quality"] == 1.0
    assert summary["seconds"]["total"] > 0
    report = (out / "report.md").read_text()
    for risk, reading in summary["g_effect"].items():
        word = "ROSE" if reading["realised"] > 0 else "FELL"
        assert f"**{risk} risk {word}**" in report
    for name in ("fq_vs_mu.png", "g_effect_steps.png", "risk_changes.png"):
        assert (out / name).stat().st_size > 5000
    # A second run reuses every cached model and evaluation and gives identical numbers.
    assert quickstart.main(["--output-dir", str(out), "--cache-dir", str(cache), "--data-dir", str(tofu_dir)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["seconds"]["target fine-tuning"] == again["seconds"]["target evaluation"] == 0.0
    assert again["seconds"]["retain fine-tuning"] == again["seconds"]["retain evaluation"] == 0.0
    for model in ("target", "retain", "unlearned"):
        assert again[model] == summary[model], model
    assert again["robustness"]["reused"]
    assert not summary["robustness"]["reused"]
    assert again["robustness"]["relearn"]["arms"] == summary["robustness"]["relearn"]["arms"]
    assert (out / "previous").is_dir()  # the first run's files were kept
