"""The run report: its tables hold the numbers passed in, its G-effect summary the means of the history rows."""

import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest

from callbacks import GEffectRow
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS
from lit_unlearn.report import HEADLINE, g_effect_summary, write_report

# The report prints 3 significant digits.
DIGITS = {"rel": 5e-3, "abs": 1e-12}

GROUPS = (
    ("layer_00", "group"),
    ("layer_01", "group"),
    ("layer_02", "group"),
    ("final_norm", "group"),
    ("shallow", "coarse"),
    ("middle", "coarse"),
    ("deep", "coarse"),
    ("total", "total"),
)


def _row(step: int, risk: str, group: str, level: str, e: float, cum: float) -> GEffectRow:
    return GEffectRow(
        step=step,
        risk=risk,
        group=group,
        level=level,
        g_effect=e,
        risk_value=1.0,
        predicted_change=0.0,
        realised_change=None,
        update_change=None,
        cumulative_predicted_change=cum,
        cumulative_realised_change=None,
        cumulative_update_change=None,
    )


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


def random_history(forget_sign: float, seed: int = 0, every_n_steps: int = 2, lr: float = 0.01) -> list[GEffectRow]:
    """Five measured steps of G-effects of mixed signs; the forget values lean to ``forget_sign``, retain the other
    way. Running sums are accumulated here, as the callback does."""
    rng = random.Random(seed)
    running: dict[tuple[str, str, str], float] = {}
    rows = []
    for step in range(0, 5 * every_n_steps, every_n_steps):
        for risk, sign in (("forget", forget_sign), ("retain", -forget_sign)):
            for group, level in GROUPS:
                scale = {"middle": 4.0, "layer_01": 3.0}.get(group, 1.0)
                e = sign * scale * rng.uniform(-0.5, 2.0)
                predicted = -lr * e
                realised = 1.1 * predicted if level == "total" else None
                cumulative = {}
                for key, value in (("predicted", predicted), ("realised", realised)):
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
                        predicted_change=predicted,
                        realised_change=realised,
                        update_change=None,
                        cumulative_predicted_change=cumulative["predicted"],
                        cumulative_realised_change=cumulative.get("realised"),
                        cumulative_update_change=None,
                    )
                )
    return rows


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
    text = write_report(tmp_path, summaries, history, {"forget split": "forget01", "method": "GradDiff"}).read_text()
    return text, summaries


@pytest.mark.parametrize("forget_sign", [-1.0, 1.0])
def test_report_tables_hold_the_numbers_passed_in(tmp_path: Path, forget_sign: float) -> None:
    history = random_history(forget_sign)
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

    # The G-effect table against means computed here from the history rows.
    g_table = table_with(tables, "mean G-effect")
    keys = sorted({(r["risk"], r["group"]) for r in history})
    assert sorted((r["risk"], r["group"]) for r in g_table) == keys
    means = {}
    for cells in g_table:
        rows = [r for r in history if (r["risk"], r["group"]) == (cells["risk"], cells["group"])]
        values = [r["g_effect"] for r in rows]
        means[(cells["risk"], cells["group"])] = statistics.fmean(values)
        assert cells["level"] == rows[0]["level"]
        assert number(cells["mean G-effect"]) == pytest.approx(statistics.fmean(values), **DIGITS)
        negative = sum(v < 0 for v in values) / len(values)
        assert number(cells["share of negative steps"]) == pytest.approx(negative, **DIGITS)
        assert number(cells["Σ −η·e"]) == pytest.approx(sum(2 * r["predicted_change"] for r in rows), **DIGITS)

    # The plain-language reading follows the signs and sizes of those means.
    forget_mean, retain_mean = means[("forget", "total")], means[("retain", "total")]
    assert (forget_mean < 0) == (forget_sign < 0)  # the two parametrisations exercise both readings
    assert ("the forget risk rises, as unlearning intends" in text) == (forget_mean < 0)
    assert ("the forget risk FALLS" in text) == (forget_mean >= 0)
    assert ("collateral damage" in text) == (retain_mean < 0)
    for risk in ("forget", "retain"):
        coarse = {g: m for (r, g), m in means.items() if r == risk and g in ("shallow", "middle", "deep")}
        top = max(coarse, key=lambda g: abs(coarse[g]))
        assert f"Largest |{risk} G-effect| among the block thirds: **{top}**" in text
        fine = {g: m for (r, g), m in means.items() if r == risk and g.startswith(("layer_", "final_norm"))}
        top = max(fine, key=lambda g: abs(fine[g]))
        assert f"Largest |{risk} G-effect| among all groups: **{top}**" in text
        realised = sum(2 * r["realised_change"] for r in history if r["risk"] == risk and r["group"] == "total")
        line = next(li for li in text.splitlines() if li.startswith(f"- {risk} risk change over the run"))
        assert number(line.split("realised ")[1].split(" ")[0]) == pytest.approx(realised, **DIGITS)
    assert (tmp_path / "fq_vs_mu.png").stat().st_size > 1000


def test_report_without_history_has_no_g_effect_section(tmp_path: Path) -> None:
    text, _ = write(tmp_path, [])
    assert "G-effect" not in text
    assert len(markdown_tables(text)) == 3
