"""The robustness section: tables carry the attacks' numbers, verdicts follow the measured direction."""

from typing import Any

import pytest

from lit_unlearn.report.robustness import quantize_verdict, relearn_verdict, robustness_section


def _metrics(probability: float, rouge: float = 0.5) -> dict[str, Any]:
    return {
        "forget_probability": probability,
        "forget_rouge_l_recall": rouge,
        "forget_truth_ratio": 0.6,
        "forget_quality": 0.3,
        "model_utility": 0.8,
    }


def _relearn(attack: float, control: float) -> dict[str, Any]:
    target, unlearned = 0.9, 0.1
    arm = lambda name, p: {  # noqa: E731
        "name": name,
        "points": [
            {"steps": 0, "metrics": _metrics(unlearned), "recovery": {"probability": 0.0}},
            {"steps": 30, "metrics": _metrics(p), "recovery": {"probability": (p - unlearned) / (target - unlearned)}},
        ],
    }
    return {
        "forget_split": "forget01",
        "seed": 7,
        "settings": {"lr": 3e-4, "batch_size": 8},
        "halves": {"relearn_rows": list(range(20)), "eval_rows": list(range(20, 40))},
        "control_rows": list(range(20)),
        "control_split": "retain99",
        "target": _metrics(target),
        "unlearned": _metrics(unlearned),
        "arms": [arm("attack", attack), arm("retain_control", control)],
    }


def _quantize(recovery: float | None) -> dict[str, Any]:
    return {
        "spec": {"label": "int4-channel-sym"},
        "forget_split": "forget01",
        "metrics": {name: _metrics(0.2) for name in ("target", "Q(target)", "unlearned", "Q(unlearned)")},
        "recovery": {"probability": recovery},
        "code_changes": {"fraction": 0.0125},
    }


def test_relearn_verdict_follows_attack_against_control() -> None:
    # (0.5 − 0.1) / 0.8 = 50 % recovered by the attack, (0.18 − 0.1) / 0.8 = 10 % by the control.
    section = robustness_section(_relearn(attack=0.5, control=0.18), _quantize(0.25))
    assert "brings back 50 %" in section
    assert "against 10 %" in section
    assert "suppressed rather than erased" in section
    reverse = robustness_section(_relearn(attack=0.18, control=0.5), _quantize(0.25))
    assert "no more than the 50 %" in reverse
    assert "suppressed" not in reverse


def test_section_tables_hold_the_reports_numbers() -> None:
    section = robustness_section(_relearn(attack=0.5, control=0.18), _quantize(-0.125), notes=["cached"])
    assert "| unlearned + 30 steps on the relearn half | 0.5 | 0.5 | 0.6 | 0.3 | 0.8 | 0.5 |" in section
    assert "| unlearned + 30 steps on retain rows (control) | 0.18 | 0.5 | 0.6 | 0.3 | 0.8 | 0.1 |" in section
    assert "seed 7" in section
    assert "20-row relearn half" in section
    assert "20 rows of retain99" in section
    assert "not back towards the target (recovery -0.125" in section
    assert "1.25 % of the integer codes" in section
    assert section.endswith("- cached")


@pytest.mark.parametrize(("recovery", "word"), [(0.3, "moves the forget answer probability back"), (0.0, "not back")])
def test_quantize_verdict_direction(recovery: float, word: str) -> None:
    assert word in quantize_verdict(recovery, "int4-channel-sym", None)


def test_no_ratio_when_unlearning_moved_nothing() -> None:
    assert relearn_verdict(None, 0.1, 30).startswith("No recovery ratio")
    assert quantize_verdict(None, "int4-g64-sym", 0.5).startswith("No recovery ratio for int4-g64-sym")


def test_a_report_without_the_control_arm_is_refused() -> None:
    relearn = _relearn(0.5, 0.1)
    relearn["arms"] = relearn["arms"][:1]
    with pytest.raises(ValueError, match="retain_control"):
        robustness_section(relearn, _quantize(0.1))
