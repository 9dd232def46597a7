"""The run report: G-effect summaries computed by hand, and the files it writes."""

from pathlib import Path

import pytest

from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS
from lit_unlearn.report import g_effect_summary, write_report


def _row(step: int, risk: str, group: str, level: str, e: float, cum: float) -> dict:
    return {
        "step": step,
        "risk": risk,
        "group": group,
        "level": level,
        "g_effect": e,
        "cumulative_predicted_change": cum,
        "cumulative_realised_change": None,
    }


HISTORY = [
    _row(0, "forget", "layer_00", "group", -3.0, 0.3),
    _row(0, "forget", "shallow", "coarse", -3.0, 0.3),
    _row(0, "forget", "total", "total", -4.0, 0.4),
    _row(1, "forget", "layer_00", "group", 1.0, 0.2),
    _row(1, "forget", "shallow", "coarse", 1.0, 0.2),
    _row(1, "forget", "total", "total", -2.0, 0.6),
    _row(0, "retain", "total", "total", 0.5, -0.05),
    _row(1, "retain", "total", "total", -1.5, 0.1),
]


def test_g_effect_summary_by_hand() -> None:
    summary = g_effect_summary(HISTORY)
    assert summary["forget"]["total"]["mean"] == pytest.approx(-3.0)
    assert summary["forget"]["total"]["negative_fraction"] == 1.0
    assert summary["forget"]["layer_00"]["mean"] == pytest.approx(-1.0)
    assert summary["forget"]["layer_00"]["negative_fraction"] == 0.5
    assert summary["forget"]["total"]["cumulative_predicted_change"] == 0.6  # the last running sum
    assert summary["retain"]["total"]["mean"] == pytest.approx(-0.5)
    assert summary["forget"]["shallow"]["level"] == "coarse"


def test_write_report(tmp_path: Path) -> None:
    components = dict.fromkeys(MODEL_UTILITY_COMPONENTS, 0.5)
    summaries = {
        "target": {"forget_quality": 1e-5, "model_utility": 0.6, **components},
        "unlearned": {"forget_quality": 0.2, "model_utility": 0.4, "forget/rouge_l_recall": 0.3, **components},
    }
    path = write_report(tmp_path, summaries, HISTORY, {"forget split": "forget01"})
    text = path.read_text()
    assert "forget quality" in text
    assert "model utility" in text
    assert "| unlearned | 0.2 | 0.4 | 0.3 |" in text
    assert "the forget risk rises" in text  # mean forget G-effect is negative
    assert "collateral damage" in text  # mean retain G-effect is negative
    assert "**shallow**" in text
    assert (tmp_path / "fq_vs_mu.png").stat().st_size > 1000
