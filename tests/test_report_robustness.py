"""The robustness section: tables carry the attacks' numbers, verdicts follow the measured direction."""

from typing import Any

import pytest

from lit_unlearn.report.numbers import fmt_number
from lit_unlearn.report.robustness import quantize_verdict, relearn_verdict, robustness_section


def _metrics(probability: float, rouge: float = 0.5) -> dict[str, Any]:
    return {
        "forget_probability": probability,
        "forget_rouge_l_recall": rouge,
        "forget_truth_ratio": 0.6,
        "forget_quality": 0.3,
        "model_utility": 0.8,
    }


def _relearn(attack: float, control: float, baseline: float | None) -> dict[str, Any]:
    target, unlearned = 0.9, 0.1

    def arm(name: str, p: float) -> dict[str, Any]:
        start = {"steps": 0, "metrics": _metrics(unlearned), "recovery": {"probability": 0.0}}
        end = {"steps": 30, "metrics": _metrics(p), "recovery": {"probability": (p - unlearned) / (target - unlearned)}}
        return {"name": name, "points": [start, end]}

    arms = [arm("attack", attack), arm("retain_control", control)]
    if baseline is not None:
        arms.append(arm("retain_baseline", baseline))
    return {
        "forget_split": "forget01",
        "seed": 7,
        "settings": {"lr": 3e-4, "batch_size": 8},
        "evaluation": {"max_items": 40},
        "halves": {"relearn_rows": list(range(20)), "eval_rows": list(range(20, 40))},
        "control_rows": list(range(20)),
        "control_split": "retain99",
        "target": _metrics(target),
        "unlearned": _metrics(unlearned),
        "retain": _metrics(0.05),
        "arms": arms,
    }


def _quantize(recovery: float | None) -> dict[str, Any]:
    return {
        "spec": {"label": "int4-channel-sym"},
        "evaluation": {"max_items": None},
        "forget_split": "forget01",
        "metrics": {name: _metrics(0.2) for name in ("target", "Q(target)", "unlearned", "Q(unlearned)")},
        "recovery": {"probability": recovery},
        "code_changes": {"fraction": 0.0125},
    }


@pytest.mark.parametrize(
    ("attack", "control", "baseline", "verdict"),
    [
        # Recoveries (p − 0.1) / 0.8: attack 50 %, control 10 %, baseline 20 %: beyond both controls.
        (0.5, 0.18, 0.26, "the knowledge was suppressed rather than erased"),
        # Attack 50 %, control 10 %, baseline 50 %: the relearn half alone teaches as much.
        (0.5, 0.18, 0.5, "no more than a model that never knew the answers learns"),
        # Attack 12.5 %, control 10 %: within the negligible margin of generic fine-tuning.
        (0.2, 0.18, 0.1, "no more than under generic fine-tuning"),
        (0.5, 0.18, None, "The retain-model baseline was not run"),
    ],
)
def test_relearn_verdict_follows_the_attack_against_both_controls(
    attack: float, control: float, baseline: float | None, verdict: str
) -> None:
    section = robustness_section(_relearn(attack, control, baseline), _quantize(0.25))
    assert verdict in section
    assert f"recovers {round(100 * (attack - 0.1) / 0.8)} %" in section
    if baseline is not None:
        assert f"reaches {round(100 * (baseline - 0.1) / 0.8)} % from the same half" in section
    assert ("suppressed" in section) == (verdict == "the knowledge was suppressed rather than erased")


def test_section_tables_hold_the_reports_numbers() -> None:
    section = robustness_section(_relearn(0.5, 0.18, 0.26), _quantize(-0.125), notes=["cached"])
    assert "| unlearned + 30 steps on the relearn half | 0.5 | 0.5 | 0.6 | 0.3 | 0.8 | 0.5 |" in section
    assert "| unlearned + 30 steps on retain rows (control) | 0.18 | 0.5 | 0.6 | 0.3 | 0.8 | 0.1 |" in section
    assert "seed 7" in section
    assert "20-row relearn half" in section
    assert "20 rows of retain99" in section
    assert "| retain + 30 steps on the relearn half (baseline) | 0.26 | 0.5 | 0.6 | 0.3 | 0.8 | 0.2 |" in section
    assert "first 40 rows of each utility split" in section
    assert "moves the forget answers further from the target (recovery of the answer probability -0.125" in section
    assert "1.25 % of the integer codes" in section
    assert section.endswith("- cached")


@pytest.mark.parametrize(
    ("recovery", "word"),
    [(0.3, "back towards the target"), (0.049, "where unlearning put them"), (-0.06, "further from the target")],
)
def test_quantize_verdict_direction(recovery: float, word: str) -> None:
    assert word in quantize_verdict(recovery, "int4-channel-sym", None)


def test_no_ratio_when_unlearning_moved_nothing() -> None:
    assert relearn_verdict(None, 0.1, 0.1, 30).startswith("No recovery ratio")
    assert quantize_verdict(None, "int4-g64-sym", 0.5).startswith("No recovery ratio for int4-g64-sym")


def test_a_report_without_the_control_arm_is_refused() -> None:
    relearn = _relearn(0.5, 0.1, None)
    relearn["arms"] = relearn["arms"][:1]
    with pytest.raises(ValueError, match="retain_control"):
        robustness_section(relearn, _quantize(0.1))


@pytest.mark.parametrize(
    ("value", "text"), [(-0.0, "0"), (0.5, "0.5"), (-1.25e-4, "-1.25e-04"), (None, "–"), (float("inf"), "–")]
)
def test_table_numbers(value: float | None, text: str) -> None:
    # One formatter for the report's tables and the attack reports: the same value reads the same in each.
    assert fmt_number(value) == text
