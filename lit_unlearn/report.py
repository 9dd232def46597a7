"""Markdown report and figures of an unlearning run: TOFU numbers before/after and the G-effect per layer group."""

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from callbacks import GEffectRow
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS

HEADLINE = (
    ("forget_quality", "forget quality ↑"),
    ("model_utility", "model utility ↑"),
    ("forget/rouge_l_recall", "forget ROUGE-L ↓"),
    ("forget/probability", "forget prob. ↓"),
    ("forget/truth_ratio", "forget truth ratio"),
    ("forget/extraction_strength", "extraction strength ↓"),
    ("privleak", "privleak"),
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def g_effect_summary(history: Sequence[GEffectRow]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per risk and group: mean G-effect over measured steps, fraction of negative steps, cumulative predicted and
    realised risk change (the last cumulative values)."""
    by_key: dict[tuple[str, str], list[GEffectRow]] = defaultdict(list)
    for row in history:
        by_key[(row["risk"], row["group"])].append(row)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (risk, group), rows in by_key.items():
        values = [r["g_effect"] for r in rows]
        last = rows[-1]
        out[risk][group] = {
            "level": last["level"],
            "steps": len(values),
            "mean": sum(values) / len(values),
            "negative_fraction": sum(v < 0 for v in values) / len(values),
            "cumulative_predicted_change": last["cumulative_predicted_change"],
            "cumulative_realised_change": last["cumulative_realised_change"],
        }
    return dict(out)


def _interpret(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Plain-language reading of the G-effects, in the paper's sign convention."""
    lines = []
    forget, retain = summary.get("forget", {}), summary.get("retain", {})
    if "total" in forget:
        t = forget["total"]
        verdict = "the forget risk rises, as unlearning intends" if t["mean"] < 0 else "the forget risk FALLS"
        lines.append(
            f"- Unlearning G-effect (forget risk): mean {_fmt(t['mean'])} over {t['steps']} measured steps, "
            f"negative on {t['negative_fraction']:.0%} of them: {verdict}."
        )
    if "total" in retain:
        t = retain["total"]
        verdict = (
            "the retain risk rises too: collateral damage" if t["mean"] < 0 else "retained knowledge is not harmed"
        )
        lines.append(
            f"- Retaining G-effect (retain risk): mean {_fmt(t['mean'])}, negative on {t['negative_fraction']:.0%} "
            f"of the steps: on average {verdict}."
        )
    for risk, groups in (("forget", forget), ("retain", retain)):
        coarse = {g: v["mean"] for g, v in groups.items() if v["level"] == "coarse"}
        if coarse:
            top = max(coarse, key=lambda g: abs(coarse[g]))
            lines.append(
                f"- Largest |{risk} G-effect| among the block thirds: **{top}** "
                f"({', '.join(f'{g} {_fmt(v)}' for g, v in coarse.items())})."
            )
        fine = {g: v["mean"] for g, v in groups.items() if v["level"] == "group"}
        if fine:
            top = max(fine, key=lambda g: abs(fine[g]))
            lines.append(f"- Largest |{risk} G-effect| among all groups: **{top}** ({_fmt(fine[top])}).")
    for risk, groups in (("forget", forget), ("retain", retain)):
        t = groups.get("total")
        if t and t.get("cumulative_realised_change") is not None:
            lines.append(
                f"- {risk} risk change over the run: first-order prediction Σ −η·e = "
                f"{_fmt(t['cumulative_predicted_change'])}, realised {_fmt(t['cumulative_realised_change'])} "
                "(AdamW's steps are not plain gradient steps, so the two can differ)."
            )
    return lines


def plot_fq_mu(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Forget quality (log scale) against model utility, one point per model; None when nothing can be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {
        name: (s["model_utility"], s["forget_quality"])
        for name, s in summaries.items()
        if s.get("model_utility") is not None and s.get("forget_quality")
    }
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (mu, fq) in points.items():
        ax.scatter(mu, fq, s=40)
        ax.annotate(name, (mu, fq), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality (KS p-value, higher is better)")
    ax.set_title("Removal vs retention on TOFU")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    out_dir: Path,
    summaries: Mapping[str, Mapping[str, Any]],
    history: Sequence[GEffectRow],
    details: Mapping[str, str],
    g_effect_plot: Path | None = None,
) -> Path:
    """Write ``report.md`` (and ``fq_vs_mu.png``) into ``out_dir``; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# lit-unlearn report", "", "## What ran", ""]
    lines += _table(["", ""], list(details.items()))
    lines += ["", "## TOFU evaluation: forget quality and model utility", ""]
    lines += _table(
        ["model", *[h for _, h in HEADLINE]], [[n, *[s.get(k) for k, _ in HEADLINE]] for n, s in summaries.items()]
    )
    lines += ["", "Model utility is the harmonic mean of these nine components:", ""]
    lines += _table(
        ["model", *MODEL_UTILITY_COMPONENTS],
        [[n, *[s.get(k) for k in MODEL_UTILITY_COMPONENTS]] for n, s in summaries.items()],
    )
    figure = plot_fq_mu(summaries, out_dir / "fq_vs_mu.png")
    if figure is not None:
        lines += ["", f"![forget quality vs model utility]({figure.name})"]
    if history:
        summary = g_effect_summary(history)
        lines += ["", "## G-effect per layer group", ""]
        lines += [
            "e = ∇R·∇L, the first-order effect of the objective's gradient step on a risk R (mean answer NLL): "
            "negative e raises R. For the forget risk negative is the goal; for the retain risk negative is damage.",
            "",
        ]
        rows = [
            [risk, group, v["level"], v["mean"], v["negative_fraction"], v["cumulative_predicted_change"]]
            for risk, groups in summary.items()
            for group, v in groups.items()
        ]
        lines += _table(["risk", "group", "level", "mean G-effect", "share of negative steps", "Σ −η·e"], rows)
        lines += ["", "What it says:", "", *_interpret(summary)]
        if g_effect_plot is not None and g_effect_plot.is_file():
            lines += ["", f"![G-effect per layer group]({g_effect_plot.relative_to(out_dir)})"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
