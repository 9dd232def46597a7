"""``report.md`` of an unlearning run: what ran, TOFU's numbers before and after, and what the G-effects say.

Every number in the report comes from the summaries and the G-effect history passed in, and every verdict follows the
measured sign of the quantity it names (see :mod:`lit_unlearn.report.readings`).
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from callbacks import GEffectRow
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS
from lit_unlearn.report.figures import FQ_THRESHOLD, plot_fq_mu, plot_g_effect_steps, plot_risk_changes
from lit_unlearn.report.numbers import fmt_number
from lit_unlearn.report.readings import RiskReading, verdict

HEADLINE = (
    ("forget_quality", "forget quality ↑"),
    ("model_utility", "model utility ↑"),
    ("forget/rouge_l_recall", "forget ROUGE-L ↓"),
    ("forget/probability", "forget prob. ↓"),
    ("forget/truth_ratio", "forget truth ratio"),
    ("forget/extraction_strength", "extraction strength ↓"),
    ("mia_min_k_auc", "MIA AUC"),
    ("privleak", "privleak"),
)

MEANINGS = (
    "- **Forget quality** is the KS-test p-value between the unlearned and the retain model's forget-set truth "
    f"ratios: at or above the usual {FQ_THRESHOLD} the two are statistically indistinguishable (forgetting as if never "
    "trained); far below it they differ.",
    "- **MIA AUC** (min-k% membership inference, forget set vs never-seen holdout authors): 0.5 = the forget set looks "
    "like unseen data; towards 1 = it is still recognised as training data; towards 0 = it looks *less* familiar "
    "than unseen data (over-unlearning).",
    "- **privleak** = ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) in % (MUSE's definition): 0 = as private as "
    "the retain model; "
    "towards −100 = the forget set still leaks (under-unlearning); large positive = over-unlearning.",
)


def _fmt(value: Any) -> str:
    return fmt_number(value) if value is None or isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def g_effect_summary(history: Sequence[GEffectRow]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per risk and group (the optimiser's gradient, term "total"): number of measured steps, mean G-effect, share of
    negative steps, and the last cumulative predicted, realised and update-aware risk changes."""
    by_key: dict[tuple[str, str], list[GEffectRow]] = defaultdict(list)
    for row in history:
        if row.get("term", "total") == "total":
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
            "cumulative_update_change": last["cumulative_update_change"],
        }
    return dict(out)


def _term_means(history: Sequence[GEffectRow]) -> dict[tuple[str, str, str], float]:
    """Mean G-effect per (risk, group, term) over the measured steps."""
    sums: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in history:
        sums[(row["risk"], row["group"], row.get("term", "total"))].append(row["g_effect"])
    return {key: sum(v) / len(v) for key, v in sums.items()}


def _results_verdicts(summaries: Mapping[str, Mapping[str, Any]], unlearned: str, target: str) -> list[str]:
    after, before = summaries[unlearned], summaries[target]
    lines = []
    fq = after.get("forget_quality")
    if fq is not None:
        side = "at or above" if fq >= FQ_THRESHOLD else "below"
        meaning = (
            "its forget-set truth ratios are not distinguishable from the retain model's"
            if fq >= FQ_THRESHOLD
            else "its forget-set truth ratios still differ from the retain model's"
        )
        lines.append(f"- Forget quality {_fmt(fq)} is {side} {FQ_THRESHOLD}: {meaning}.")
    mu, mu0 = after.get("model_utility"), before.get("model_utility")
    if mu is not None and mu0:
        lines.append(f"- Model utility {_fmt(mu)} is {mu / mu0:.1%} of the target's {_fmt(mu0)}.")
    r, r0 = after.get("forget/rouge_l_recall"), before.get("forget/rouge_l_recall")
    if r is not None and r0 is not None:
        lines.append(f"- Forget-set ROUGE-L recall went from {_fmt(r0)} to {_fmt(r)}.")
    auc, leak = after.get("mia_min_k_auc"), after.get("privleak")
    if auc is not None and leak is not None:
        if leak < 0:
            reading = "the forget set is easier to tell from unseen authors than under the retain model: it still leaks"
        elif leak > 0:
            reading = "the forget set is harder to tell from unseen authors than under the retain model"
        else:
            reading = "as private as the retain model"
        lines.append(f"- Membership inference: min-k AUC {_fmt(auc)}, privleak {_fmt(leak)} %: {reading}.")
        if fq is not None and fq >= FQ_THRESHOLD and leak < 0:
            lines.append(
                "- So the two tests disagree: forget quality (answer truth ratios) says forgotten, membership "
                "inference (token likelihoods of the forget text) says the text is still recognised."
            )
    return lines


def write_report(
    out_dir: Path,
    summaries: Mapping[str, Mapping[str, Any]],
    history: Sequence[GEffectRow],
    what_ran: Mapping[str, Any],
    readings: Mapping[str, RiskReading],
    unlearned: str,
    target: str,
    notes: Sequence[str] = (),
    extra_sections: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``.

    Args:
        out_dir: Output folder (created).
        summaries: TOFU evaluation summaries keyed by the model's label in the tables.
        history: ``GEffectCallback.history`` of the unlearning run (may be empty: no G-effect section then).
        what_ran: Settings and environment of the run, shown as a table.
        readings: A :class:`RiskReading` per risk (see :func:`lit_unlearn.report.readings.readings_of`).
        unlearned: Key of the unlearned model in ``summaries``.
        target: Key of the model before unlearning.
        notes: Extra lines under the G-effect verdicts (e.g. which evaluation rows the retain risk compares to).
        extra_sections: Further markdown sections appended as given (e.g. robustness).

    Returns:
        The path of ``report.md``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# lit-unlearn report", "", "## What ran", ""]
    lines += _table(["", ""], list(what_ran.items()))
    lines += ["", "## TOFU evaluation", ""]
    lines += _table(
        ["model", *[h for _, h in HEADLINE]], [[n, *[s.get(k) for k, _ in HEADLINE]] for n, s in summaries.items()]
    )
    lines += ["", *_results_verdicts(summaries, unlearned, target), "", "How to read them:", "", *MEANINGS]
    figure = plot_fq_mu(summaries, out_dir / "fq_vs_mu.png")
    if figure is not None:
        lines += ["", f"![forget quality vs model utility]({figure.name})"]
    lines += ["", "Model utility is the harmonic mean of these nine components:", ""]
    lines += _table(
        ["model", *MODEL_UTILITY_COMPONENTS],
        [[n, *[s.get(k) for k in MODEL_UTILITY_COMPONENTS]] for n, s in summaries.items()],
    )
    if history:
        lines += ["", "## What the gradients did: the G-effect", ""]
        lines += [
            "The G-effect of a step on a risk R (mean answer NLL) is e = ∇R·g, g the gradient the optimiser receives: "
            "a plain gradient step of size η changes R by about −η·e, so negative e raises R. The forget risk should "
            "rise; the retain risk (on the regulariser's batches) should not. Under AdamW the step is not −η·g, so "
            "the prediction that matches the step actually taken is Σ ∇R·Δθ (update-aware). Each verdict below "
            "starts from the realised change.",
            "",
        ]
        for risk, reading in readings.items():
            lines += [f"### {risk} risk", "", *verdict(reading), ""]
        lines += list(notes)
        lines += ["", "### By layer group", ""]
        summary = g_effect_summary(history)
        means = _term_means(history)
        terms = [t for t in ("unlearn", "regularizer") if any(k[2] == t for k in means)]
        risks = list(summary)
        header = ["group", *[f"mean e, {risk}" for risk in risks]]
        header += [f"mean e, {risk}, {term}" for risk in risks for term in terms]
        header += [f"Σ ∇R·Δθ, {risk}" for risk in risks]
        groups = [g for g in summary[risks[0]] if summary[risks[0]][g]["level"] != "group" or not g.startswith("layer")]
        body = []
        for group in groups:
            row: list[Any] = [group]
            row += [summary[risk].get(group, {}).get("mean") for risk in risks]
            row += [means.get((risk, group, term)) for risk in risks for term in terms]
            row += [summary[risk].get(group, {}).get("cumulative_update_change") for risk in risks]
            body.append(row)
        lines += _table(header, body)
        coarse = {g: v["mean"] for g, v in summary.get("forget", {}).items() if v["level"] == "coarse"}
        if coarse:
            top = max(coarse, key=lambda g: abs(coarse[g]))
            lines += [
                "",
                f"Among the block groups, the largest mean |G-effect| on the forget risk is in the **{top}** blocks "
                f"({', '.join(f'{g} {_fmt(v)}' for g, v in coarse.items())}).",
            ]
        for name, plot in (
            ("per-step G-effect by depth", plot_g_effect_steps(history, out_dir / "g_effect_steps.png")),
            ("realised vs predicted risk change", plot_risk_changes(history, out_dir / "risk_changes.png")),
        ):
            if plot is not None:
                lines += ["", f"![{name}]({plot.name})"]
    for section in extra_sections:
        lines += ["", section]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
