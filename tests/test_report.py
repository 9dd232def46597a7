"""The run report: readings follow the measured signs, tables hold the numbers passed in, figures are drawn."""

import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest

from callbacks import GEffectRow
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS
from lit_unlearn.report import HEADLINE, RiskReading, g_effect_summary, readings_of, risk_reading, verdict, write_report
from lit_unlearn.report.markdown import _results_verdicts

# The report prints 3 significant digits.
DIGITS = {"rel": 5e-3, "abs": 1e-12}

GROUPS = (
    ("embedding", "group"),
    ("layer_00", "group"),
    ("layer_01", "group"),
    ("layer_02", "group"),
    ("lm_head", "group"),
    ("shallow", "coarse"),
    ("middle", "coarse"),
    ("deep", "coarse"),
    ("total", "total"),
)


def make_history(
    effects: dict[str, Sequence[float]],
    lr: float = 0.01,
    update_scale: float | None = -50.0,
    realised_scale: float | None = -60.0,
    every_n_steps: int = 1,
    seed: int = 0,
) -> list[GEffectRow]:
    """Whole-model G-effects per risk and step as given (group values random around them); the realised change and
    the update-aware prediction are ``scale × e`` per step, the raw prediction ``−lr × e``. Running sums are
    accumulated here as the callback does."""
    rng = random.Random(seed)
    rows: list[GEffectRow] = []
    running: dict[tuple[str, str, str], float] = {}
    for risk, values in effects.items():
        for i, e_total in enumerate(values):
            step = i * every_n_steps
            for group, level in GROUPS:
                e = e_total if level == "total" else e_total * rng.uniform(-0.2, 0.6)
                changes = {
                    "predicted": -lr * e,
                    "update": None if update_scale is None else update_scale * e,
                    "realised": None if realised_scale is None or level != "total" else realised_scale * e,
                }
                cumulative = {}
                for key, value in changes.items():
                    if value is not None:
                        running[(risk, group, key)] = running.get((risk, group, key), 0.0) + every_n_steps * value
                        cumulative[key] = running[(risk, group, key)]
                rows.append(
                    GEffectRow(
                        step=step,
                        risk=risk,
                        group=group,
                        level=level,
                        g_effect=e,
                        risk_value=2.0,
                        predicted_change=changes["predicted"],
                        realised_change=changes["realised"],
                        update_change=changes["update"],
                        cumulative_predicted_change=cumulative["predicted"],
                        cumulative_realised_change=cumulative.get("realised"),
                        cumulative_update_change=cumulative.get("update"),
                    )
                )
    return rows


# ------------------------------------------------------------------------------------------------------ readings
def test_reading_by_hand() -> None:
    history = make_history({"forget": [-1.0, -2.0, 3.0, -4.0]})
    r = risk_reading(history, "forget", eval_before=1.5, eval_after=2.25)
    assert r.steps == 4
    assert r.mean_g_effect == pytest.approx(-1.0)
    assert r.median_g_effect == pytest.approx(-1.5)
    assert r.negative_fraction == 0.75
    assert r.raw_prediction == pytest.approx(-0.01 * -4.0)
    assert r.update_prediction == pytest.approx(-50.0 * -4.0)
    assert r.realised_batches == pytest.approx(-60.0 * -4.0)
    assert r.realised_eval == pytest.approx(0.75)
    assert r.realised == r.realised_batches  # the training batches are the basis when measured
    assert r.top_steps == (3,)  # top decile of 4 steps: one step, |−4| the largest
    assert r.top_share == pytest.approx(4.0 / 10.0)


def test_reading_without_rows_names_the_risk() -> None:
    with pytest.raises(ValueError, match="'retain'"):
        risk_reading(make_history({"forget": [1.0]}), "retain")


def _verdict(**overrides: object) -> str:
    base = dict(
        risk="forget",
        steps=10,
        mean_g_effect=-0.5,
        median_g_effect=-0.4,
        negative_fraction=0.8,
        raw_prediction=0.002,
        update_prediction=2.0,
        realised_batches=2.5,
        realised_eval=1.0,
        top_steps=(4,),
        top_share=0.2,
    )
    return "\n".join(verdict(RiskReading(**{**base, **overrides})))


def test_verdict_direction_follows_the_realised_sign() -> None:
    assert "**forget risk ROSE** by 2.5 nats" in _verdict()
    assert "**forget risk FELL** by 2.5 nats" in _verdict(realised_batches=-2.5)
    assert "**retain risk ROSE**" in _verdict(risk="retain")
    assert "collateral damage" in _verdict(risk="retain")
    # Without per-step realised changes the evaluation-set change is the basis.
    assert "**forget risk FELL** by 0.3 nats" in _verdict(realised_batches=None, realised_eval=-0.3)
    assert "was not measured" in _verdict(realised_batches=None, realised_eval=None)


def test_verdict_says_which_predictions_agree() -> None:
    text = _verdict()
    assert "update-aware prediction Σ ∇R·Δθ (+2) agrees in direction, 1.2× smaller than realised" in text
    assert "raw-gradient prediction Σ −η·e (+0.002) agrees in direction, 1.2e+03× smaller than realised" in text
    assert "DISAGREE" not in text
    text = _verdict(raw_prediction=-0.002)
    assert "raw-gradient prediction Σ −η·e (-0.002) points the OTHER way" in text
    assert "raw-gradient and update-aware readings DISAGREE" in text
    text = _verdict(realised_batches=-2.5)
    assert "update-aware prediction Σ ∇R·Δθ (+2) points the OTHER way" in text


def test_verdict_flags_dominant_steps_and_mean_median_split() -> None:
    assert "A few steps dominate" not in _verdict()
    text = _verdict(top_steps=(40, 45), top_share=0.78)
    assert "step(s) 40, 45 carry 78% of Σ|e|" in text
    assert "opposite signs" not in text
    assert "opposite signs" in _verdict(mean_g_effect=0.3)
    assert "mean G-effect -0.5, median -0.4, negative on 80% of the 10 measured steps" in _verdict()
    # A negative mean predicts a rise; a negative η-weighted sum Σ −η·e a fall: that split is stated.
    assert "point in opposite directions" not in _verdict()
    assert "point in opposite directions" in _verdict(raw_prediction=-0.002)


def test_evaluation_and_batches_disagreement_is_stated() -> None:
    assert "OPPOSITE direction" in _verdict(realised_eval=-1.0)
    assert "the same direction" in _verdict(realised_eval=1.0)


# ------------------------------------------------------------------------------------------------------ report.md
Table = tuple[list[str], list[list[str]]]


def markdown_tables(text: str) -> list[Table]:
    """Every table of a markdown text, as (header cells, body rows of cells)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            header, _separator, *body = block
            assert all(len(row) == len(header) for row in body), header
            tables.append((header, body))
            block = []
    return tables


def table_with(tables: Sequence[Table], column: str) -> list[dict[str, str]]:
    """The one table with a ``column`` header, as rows of ``{column header: cell}``."""
    found = [(header, body) for header, body in tables if column in header]
    assert len(found) == 1, f"expected one table with a {column!r} column, found {len(found)}"
    header, body = found[0]
    return [dict(zip(header, row, strict=True)) for row in body]


def number(cell: str) -> float | None:
    return None if cell == "–" else float(cell)


def write(tmp_path: Path, history: list[GEffectRow]) -> tuple[str, dict[str, dict[str, float]]]:
    rng = random.Random(1)
    summaries = {
        "target": {key: rng.uniform(0.01, 0.9) for key, _ in HEADLINE},
        "unlearned": {key: rng.uniform(0.01, 0.9) for key, _ in HEADLINE if key != "privleak"},
    }
    summaries["target"]["forget_quality"] = 3.2e-5  # printed in scientific notation
    for summary in summaries.values():
        summary.update({key: rng.uniform(0.1, 0.9) for key in MODEL_UTILITY_COMPONENTS})
    readings = readings_of(history)
    path = write_report(
        tmp_path,
        summaries,
        history,
        {"forget split": "forget01", "method": "GradDiff"},
        readings,
        unlearned="unlearned",
        target="target",
    )
    return path.read_text(), summaries


@pytest.mark.parametrize(("forget_quality", "privleak"), [(0.3, -80.0), (0.3, 12.0), (1e-4, -80.0)])
def test_membership_verdict_follows_the_sign_of_privleak(forget_quality: float, privleak: float) -> None:
    summaries = {
        "target": {"forget_quality": 1e-5, "model_utility": 0.5},
        "unlearned": {"forget_quality": forget_quality, "model_utility": 0.45, "mia_min_k_auc": 0.9},
    }
    summaries["unlearned"]["privleak"] = privleak
    text = "\n".join(_results_verdicts(summaries, "unlearned", "target"))
    assert f"min-k AUC 0.9, privleak {privleak:g} %" in text
    assert ("it still leaks" in text) == (privleak < 0)
    assert ("harder to tell from unseen authors" in text) == (privleak > 0)
    # Forget quality says forgotten while membership inference says recognised: the report says they disagree.
    assert ("the two tests disagree" in text) == (forget_quality >= 0.05 and privleak < 0)


@pytest.mark.parametrize("forget_sign", [-1.0, 1.0])
def test_report_tables_hold_the_numbers_passed_in(tmp_path: Path, forget_sign: float) -> None:
    rng = random.Random(3)
    history = make_history(
        {
            "forget": [forget_sign * rng.uniform(-0.5, 2.0) for _ in range(6)],
            "retain": [-forget_sign * rng.uniform(-0.5, 2.0) for _ in range(6)],
        }
    )
    text, summaries = write(tmp_path, history)
    tables = markdown_tables(text)

    assert tables[0] == (["", ""], [["forget split", "forget01"], ["method", "GradDiff"]])
    headline = table_with(tables, "forget quality ↑")
    assert [r["model"] for r in headline] == ["target", "unlearned"]
    for row in headline:
        for key, label in HEADLINE:
            expected = summaries[row["model"]].get(key)
            got = number(row[label])
            assert (got is None) == (expected is None), (row["model"], key)
            if expected is not None:
                assert got == pytest.approx(expected, **DIGITS), (row["model"], key)
    components = table_with(tables, MODEL_UTILITY_COMPONENTS[0])
    for row in components:
        for key in MODEL_UTILITY_COMPONENTS:
            assert number(row[key]) == pytest.approx(summaries[row["model"]][key], **DIGITS), (row["model"], key)
    mu_ratio = summaries["unlearned"]["model_utility"] / summaries["target"]["model_utility"]
    assert f"is {mu_ratio:.1%} of the target's" in text

    # The group table against means and sums computed here from the history rows.
    g_table = table_with(tables, "mean e, forget")
    shown = [r["group"] for r in g_table]
    assert shown == ["embedding", "lm_head", "shallow", "middle", "deep", "total"]  # fine block groups are left out
    for cells in g_table:
        for risk in ("forget", "retain"):
            rows = [r for r in history if (r["risk"], r["group"]) == (risk, cells["group"])]
            assert number(cells[f"mean e, {risk}"]) == pytest.approx(
                statistics.fmean(r["g_effect"] for r in rows), **DIGITS
            )
            assert number(cells[f"Σ ∇R·Δθ, {risk}"]) == pytest.approx(sum(r["update_change"] for r in rows), **DIGITS)
    coarse = {
        g: statistics.fmean(r["g_effect"] for r in history if (r["risk"], r["group"]) == ("forget", g))
        for g in ("shallow", "middle", "deep")
    }
    top = max(coarse, key=lambda g: abs(coarse[g]))
    assert f"largest mean |G-effect| on the forget risk is in the **{top}** blocks" in text

    # Each risk's stated direction is the sign of its realised change.
    for risk in ("forget", "retain"):
        realised = sum(r["realised_change"] for r in history if (r["risk"], r["group"]) == (risk, "total"))
        word = "ROSE" if realised > 0 else "FELL"
        assert f"**{risk} risk {word}**" in text
    for name in ("fq_vs_mu.png", "g_effect_steps.png", "risk_changes.png"):
        assert (tmp_path / name).stat().st_size > 5000


def test_g_effect_summary_keeps_only_the_applied_gradient() -> None:
    history = make_history({"forget": [-1.0, -3.0]}, update_scale=None, realised_scale=None)
    unlearn = [dict(r, term="unlearn", g_effect=100.0) for r in history]
    summary = g_effect_summary([*history, *unlearn])
    assert summary["forget"]["total"]["mean"] == pytest.approx(-2.0)
    assert summary["forget"]["total"]["cumulative_update_change"] is None


def test_report_without_history_has_no_g_effect_section(tmp_path: Path) -> None:
    text, _ = write(tmp_path, [])
    assert "G-effect" not in text
    assert len(markdown_tables(text)) == 3


@pytest.mark.parametrize(
    ("raw_scale", "measured", "right_axes"),
    [(1.0, True, 0), (1e-3, True, 2), (0.0, True, 0), (1e-3, False, 0)],  # 0: rate 0; unmeasured: raw alone, left
)
def test_risk_changes_gives_the_raw_prediction_its_own_axis_only_at_another_scale(
    raw_scale: float, measured: bool, right_axes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raw prediction shares the realised change's axis within 10x of its scale (a right axis of its own would
    make any two shapes look alike) and beyond is read on a right axis, labelled with the factor, that rescales the
    left one: zero at one height though the prediction leaves it the other way."""
    from matplotlib.figure import Figure

    from lit_unlearn.report.figures import plot_risk_changes

    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    history = [
        {"risk": risk, "level": "total", "term": "total", "step": step,
         "cumulative_realised_change": 0.1 * step if measured else None,
         "cumulative_update_change": 0.09 * step if measured else None,
         "cumulative_predicted_change": -raw_scale * 0.08 * step}
        for risk in ("forget", "retain") for step in range(1, 4)
    ]  # fmt: skip
    plot_risk_changes(history, tmp_path / "risk_changes.png")
    (fig,) = drawn
    fig.canvas.draw()
    assert len(fig.axes) == 2
    rights = [(ax, child) for ax in fig.axes for child in ax.child_axes]
    assert len(rights) == right_axes
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    raw = [label for label in labels if label.startswith("raw-gradient prediction")]
    assert len(raw) == 2
    assert all(label.endswith("(right axis)") == bool(right_axes) for label in raw)
    if not right_axes:  # on the left axis as it is
        drawn = [line for ax in fig.axes for line in ax.get_lines() if line.get_label().startswith("raw-gradient")]
        assert list(drawn[0].get_ydata()) == pytest.approx([-raw_scale * 0.08 * s for s in range(1, 4)])
    assert all("= left axis × 0.0008" in right.get_ylabel() for _, right in rights)
    for left, right in rights:
        (lo, hi), (right_lo, right_hi) = left.get_ylim(), right.get_ylim()
        assert right_hi / hi == pytest.approx(right_lo / lo)
        assert right_hi / hi == pytest.approx(raw_scale * 0.08 / 0.1)  # the raw's largest |value| over the realised's
        (line,) = [line for line in left.get_lines() if line.get_label().startswith("raw-gradient")]
        assert list(line.get_ydata() * right_hi / hi) == pytest.approx([-raw_scale * 0.08 * s for s in range(1, 4)])
