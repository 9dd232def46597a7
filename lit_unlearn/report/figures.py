"""The report's figures: forget quality against model utility, per-step G-effects by depth, and risk changes.

Drawn with matplotlib's object API (no pyplot state), every axis labelled. Series are plotted as measured: no
smoothing is ever applied to the values a figure shows.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from callbacks import GEffectRow
from callbacks.g_effect import raw_prediction_ratio, rescaled_right_axis

FQ_THRESHOLD = 0.05
"""The usual significance level read off forget quality (a KS p-value): above it, the unlearned model's forget-set
truth ratios are not distinguishable from the retain model's."""

DEPTH_GROUPS = ("embedding", "shallow", "middle", "deep", "final_norm", "lm_head")
"""The parameter groups drawn per step, shallow to deep (the callback's coarse block groups plus the rest)."""


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def plot_fq_mu(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Forget quality (log scale) against model utility, one labelled point per model, with the FQ = 0.05 line.

    Returns None when no model has both numbers.
    """
    points = {
        name: (s["model_utility"], s["forget_quality"])
        for name, s in summaries.items()
        if s.get("model_utility") is not None and s.get("forget_quality")
    }
    if not points:
        return None
    fig, axes = _figure(1, 1, 6.0, 4.2)
    ax = axes[0][0]
    for name, (mu, fq) in points.items():
        ax.scatter(mu, fq, s=45, zorder=3)
        ax.annotate(name, (mu, fq), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(FQ_THRESHOLD, color="tab:red", linestyle="--", linewidth=1)
    ax.annotate(
        f"FQ = {FQ_THRESHOLD}",
        (0, FQ_THRESHOLD),
        xycoords=("axes fraction", "data"),
        xytext=(4, 3),
        textcoords="offset points",
        fontsize=8,
        color="tab:red",
    )
    ax.set_yscale("log")
    low = min(fq for _, fq in points.values())
    ax.set_ylim(min(low, FQ_THRESHOLD) / 5, 2.0)
    ax.set_xlabel("model utility (harmonic mean of 9 TOFU scores; higher is better)")
    # Two lines: on one, the label is taller than the axes and is cut at both ends.
    ax.set_ylabel("forget quality\n(KS p-value vs retain model; higher is better)")
    ax.set_title("Removal vs retention on TOFU")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _series(history: Sequence[GEffectRow], risk: str, group: str, term: str = "total") -> tuple[list, list]:
    pts = [
        (r["step"], r["g_effect"])
        for r in history
        if r["risk"] == risk and r["group"] == group and r.get("term", "total") == term
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_g_effect_steps(history: Sequence[GEffectRow], path: Path) -> Path | None:
    """Per-step G-effect of every depth group (and the whole model), one panel per risk; with objective terms, a
    second column splits the whole-model G-effect into the unlearning term and the regulariser."""
    risks = list(dict.fromkeys(r["risk"] for r in history))
    if not risks:
        return None
    groups = [g for g in DEPTH_GROUPS if any(r["group"] == g for r in history)]
    terms = [t for t in ("unlearn", "regularizer") if any(r.get("term") == t for r in history)]
    cols = 2 if terms else 1
    fig, axes = _figure(len(risks), cols, 6.5 * cols, 3.3 * len(risks))
    for row, risk in enumerate(risks):
        ax = axes[row][0]
        for group in groups:
            ax.plot(*_series(history, risk, group), label=group, linewidth=1.1)
        ax.plot(*_series(history, risk, "total"), label="whole model", color="black", linewidth=2)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(f"G-effect on the {risk} risk, by depth (the optimiser's gradient)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("G-effect e = ∇R·g")
        ax.legend(fontsize=7, ncol=2)
        if terms:
            ax = axes[row][1]
            for term in ("total", *terms):
                ax.plot(*_series(history, risk, "total", term), label=term, linewidth=2 if term == "total" else 1.2)
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.set_title(f"G-effect on the {risk} risk, by objective term (whole model)")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("G-effect e = ∇R·∇(term)")
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_risk_changes(history: Sequence[GEffectRow], path: Path) -> Path | None:
    """Cumulative realised risk change against the two first-order predictions, one panel per risk.

    The realised change and the update-aware prediction share the left axis (same scale under any optimiser); the
    raw-gradient prediction ``Σ −η·e`` joins them when its scale is within 10x of theirs, and otherwise gets its own
    right axis, labelled with the scale factor: under AdamW it can be orders of magnitude smaller and would be a flat
    line at zero, while a right axis of its own makes any two shapes look alike.
    """
    risks = list(dict.fromkeys(r["risk"] for r in history))
    if not risks:
        return None
    fig, axes = _figure(1, len(risks), 6.0 * len(risks), 4.4)  # the legends sit below the panels
    for col, risk in enumerate(risks):
        rows = [r for r in history if r["risk"] == risk and r["level"] == "total" and r.get("term", "total") == "total"]
        steps = [r["step"] for r in rows]
        ax = axes[0][col]
        handles = []
        for key, label, color in (
            ("cumulative_realised_change", "realised R(θ_t+1) − R(θ_t), summed", "black"),
            ("cumulative_update_change", "predicted from the real update, Σ ∇R·Δθ", "tab:blue"),
        ):
            pts = [(s, r[key]) for s, r in zip(steps, rows, strict=True) if r[key] is not None]
            if pts:
                handles += ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, color=color, linewidth=1.6)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(f"cumulative change of the {risk} risk (nats)")
        raw_values = [r["cumulative_predicted_change"] for r in rows]
        # The measured curves only (the zero line is no data).
        scale = raw_prediction_ratio([y for line in handles for y in line.get_ydata()], raw_values)
        label, drawn = "raw-gradient prediction Σ −η·e", raw_values
        if scale is not None:
            label += " (right axis)"
            drawn = [y / scale for y in raw_values]
            rescaled_right_axis(ax, scale, "Σ −η·e", "nats", "tab:orange")
        handles += ax.plot(steps, drawn, label=label, color="tab:orange", linestyle="--", linewidth=1.4)
        ax.set_title(f"{risk} risk: realised vs first-order predictions")
        # Below the panel: the three curves fill it, and a legend inside would cover some of one wherever it went.
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return _save(fig, path)
