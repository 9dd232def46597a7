"""attack_suite: both attacks run once per attacked weights, then their reports are reused; new weights rerun them."""

import json
from pathlib import Path
from typing import Any

import pytest

from lit_unlearn.attacks import EvalOptions, QuantSpec, RelearnSettings
from lit_unlearn.attacks import suite as suite_module
from lit_unlearn.attacks.suite import AttackSuite, attack_suite

SUITE = AttackSuite(RelearnSettings(budgets=(0, 30)), QuantSpec(bits=4), EvalOptions(), "forget01")


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for the two attacks that write a report naming the weights they attacked, and count the runs."""
    seen: list[str] = []

    def fake(kind: str, file: str):  # noqa: ANN202
        def run(model: str, output_dir: Path, *args: Any, **kwargs: Any) -> None:
            seen.append(kind)
            output_dir.mkdir(parents=True)
            weights = (Path(model) / "model.safetensors").read_text()
            (output_dir / file).write_text(json.dumps({"kind": kind, "weights": weights}))

        return run

    monkeypatch.setattr(suite_module, "relearn_attack", fake("relearn", "relearn.json"))
    monkeypatch.setattr(suite_module, "quantization_attack", fake("quantize", "quantize.json"))
    return seen


def test_reports_are_reused_for_the_same_weights_only(tmp_path: Path, calls: list[str]) -> None:
    target = _model(tmp_path / "target", b"target")
    retain_eval = tmp_path / "retain_eval"
    retain_eval.mkdir()
    (retain_eval / "eval_items.json").write_text("{}")
    unlearned = _model(tmp_path / "unlearned", b"A")

    def run(out: str) -> suite_module.SuiteResult:
        return attack_suite(
            SUITE, unlearned, target, tmp_path, target, retain_eval, tmp_path / out, tmp_path / "cache", "data", "fp"
        )

    first = run("out1")
    assert calls == ["relearn", "quantize"]
    assert not first.reused
    second = run("out2")
    assert calls == ["relearn", "quantize"]
    assert second.reused
    assert second.relearn == first.relearn == {"kind": "relearn", "weights": "A"}
    assert (tmp_path / "out2" / "quantize" / "quantize.json").is_file()

    _model(unlearned, b"B")  # other weights: a new key, both attacks run again
    third = run("out3")
    assert calls == ["relearn", "quantize"] * 2
    assert not third.reused
    assert third.quantize == {"kind": "quantize", "weights": "B"}


def test_an_interrupted_entry_is_not_reused(tmp_path: Path, calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    target, unlearned = _model(tmp_path / "target", b"t"), _model(tmp_path / "unlearned", b"u")
    retain_eval = tmp_path / "retain_eval"
    retain_eval.mkdir()
    (retain_eval / "eval_items.json").write_text("{}")
    args = (SUITE, unlearned, target, tmp_path, target, retain_eval)
    working = suite_module.quantization_attack

    def killed(*a: Any, **k: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(suite_module, "quantization_attack", killed)
    with pytest.raises(RuntimeError):
        attack_suite(*args, tmp_path / "a", tmp_path / "cache", "data", "fp")
    monkeypatch.setattr(suite_module, "quantization_attack", working)
    result = attack_suite(*args, tmp_path / "b", tmp_path / "cache", "data", "fp")
    assert calls == ["relearn", "relearn", "quantize"]
    assert not result.reused


def test_a_model_without_safetensors_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        attack_suite(SUITE, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "o", tmp_path / "c", "d", "f")
