"""Parity with the original TOFU implementation on its Phi-1.5 logs (model utility 0.5221, forget quality 2.19e-16),
with the legacy ``aggregate_eval_stat.py`` formulas re-derived in numpy as the independent reference."""

import json
from pathlib import Path

import numpy as np
import pytest
from reference_data import PHI_REFERENCE
from scipy.stats import hmean, ks_2samp

from lit_unlearn.eval.io import load_eval
from lit_unlearn.eval.summarize import main, summarize
from lit_unlearn.metrics import MODEL_UTILITY_COMPONENTS

REFERENCE = PHI_REFERENCE
FULL = REFERENCE / "full_eval_log_aggregated.json"
RETAIN = REFERENCE / "retain90_eval_log_aggregated.json"
TASKS = {
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
    "forget": "eval_log_forget.json",
}


def _values(log: dict, key: str) -> np.ndarray:
    return np.array([log[key][k] for k in sorted(log[key], key=int)], dtype=np.float64)


def _legacy_numbers(path: Path) -> dict[str, float]:
    """TOFU legacy aggregation, written from the protocol with numpy."""
    data = json.loads(path.read_text())
    out = {}
    for split, task in TASKS.items():
        log = data[task]
        p_true = np.exp(-_values(log, "avg_gt_loss"))
        p_pert = np.exp(-_values(log, "average_perturb_loss"))
        if split in ("retain", "forget"):
            out[f"{split}/probability"] = p_true.mean()
        else:
            out[f"{split}/probability"] = (p_true / (p_true + p_pert.sum(-1))).mean()
        out[f"{split}/rouge_l_recall"] = _values(log, "rougeL_recall").mean()
        x = np.exp(_values(log, "average_perturb_loss").mean(-1) - _values(log, "avg_paraphrased_loss"))  # 1/R
        if split == "forget":
            out[f"{split}/truth_ratio"] = np.minimum(x, 1 / x).mean()
            out["forget_x"] = x
        else:
            out[f"{split}/truth_ratio"] = np.maximum(0, 1 - 1 / x).mean()
    out["model_utility"] = hmean([out[k] for k in MODEL_UTILITY_COMPONENTS])
    return out


def test_model_utility_full_is_0_5221() -> None:
    summary = summarize(FULL)
    assert round(summary["model_utility"], 4) == 0.5221
    legacy = _legacy_numbers(FULL)
    for key in (*MODEL_UTILITY_COMPONENTS, "forget/probability", "forget/rouge_l_recall", "forget/truth_ratio"):
        assert summary[key] == pytest.approx(legacy[key], rel=1e-9), key
    assert summary["model_utility"] == pytest.approx(legacy["model_utility"], rel=1e-9)
    assert summary["forget_quality"] is None  # no retain reference given


def test_model_utility_retain90_matches_legacy() -> None:
    summary = summarize(RETAIN)
    assert summary["model_utility"] == pytest.approx(_legacy_numbers(RETAIN)["model_utility"], rel=1e-9)
    assert round(summary["model_utility"], 4) == 0.5320


def test_forget_quality_full_vs_retain90_is_2_19e_16() -> None:
    summary = summarize(FULL, RETAIN)
    expected = ks_2samp(_legacy_numbers(FULL)["forget_x"], _legacy_numbers(RETAIN)["forget_x"]).pvalue
    assert summary["forget_quality"] == pytest.approx(expected, rel=1e-9)
    assert f"{summary['forget_quality']:.3g}" == "2.19e-16"
    assert summary["num_items/forget"] == 300


def test_legacy_records_carry_generations() -> None:
    records, stored = load_eval(FULL)
    assert stored == {}
    assert {split: len(rows) for split, rows in records.items()} == {
        "forget": 300,
        "retain": 300,
        "real_authors": 100,
        "world_facts": 117,
    }
    first = records["retain"][0]
    assert first["answer"].startswith("The author in question is Jaime Vasquez")
    assert first["generation"].startswith("Answer: The author in question")


def test_cli_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FULL), "--retain", str(RETAIN)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"model_utility", "forget_quality", *MODEL_UTILITY_COMPONENTS} <= set(printed)
    assert printed["forget_quality"] == pytest.approx(2.1942743e-16, rel=1e-6)


def test_cli_reports_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"something": 1}')
    assert main([str(bad)]) == 2
    assert "neither this project's evaluation" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
