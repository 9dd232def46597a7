"""What a run's G-effect history says about each risk, read against what actually happened.

The G-effect ``e_t = ∇R(θ_t)·g_t`` is a first-order statement about a *plain gradient step*: ``R`` changes by about
``−η e_t``. Under AdamW the parameters move by ``Δθ_t``, not ``−η g_t``, so the raw-gradient prediction ``Σ −η e_t``
can be orders of magnitude off (or even of the wrong sign) while ``Σ ∇R·Δθ_t`` (the callback's ``measure_update``) is
the first-order prediction of the step that was really taken. A reading therefore starts from the REALISED change of
the risk and states, for each prediction, whether it agrees with it, and whether a few steps carry the mean.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from callbacks import GEffectRow

DOMINANCE_SHARE = 0.5
"""A mean is "carried by a few steps" when the top decile of steps by |e| holds more than this share of Σ|e|."""


@dataclass(frozen=True)
class RiskReading:
    """The G-effect evidence about one risk over one run (values summed over the measured steps of the run).

    Args:
        risk: The risk's name (``"forget"``: the unlearning G-effect; ``"retain"``: the retaining G-effect).
        steps: Measured optimiser steps.
        mean_g_effect: Mean of ``e_t`` (total gradient, all parameters).
        median_g_effect: Median of ``e_t``.
        negative_fraction: Share of the measured steps with ``e_t < 0`` (a plain step would raise the risk there).
        raw_prediction: ``Σ −η e_t``: the risk change plain gradient steps would have caused, to first order.
        update_prediction: ``Σ ∇R·Δθ_t``: the first-order risk change of the optimiser's real steps (None when the
            callback did not measure the update).
        realised_batches: ``Σ [R(θ_{t+1}) − R(θ_t)]`` on each step's own batches (None when not measured).
        realised_eval: Change of the mean answer NLL on the evaluation set of this risk, after minus before (None
            when no evaluation is given).
        top_steps: The top decile of steps by ``|e_t|`` (at least one), largest first.
        top_share: Their share of ``Σ |e_t|``.
    """

    risk: str
    steps: int
    mean_g_effect: float
    median_g_effect: float
    negative_fraction: float
    raw_prediction: float
    update_prediction: float | None
    realised_batches: float | None
    realised_eval: float | None
    top_steps: tuple[int, ...]
    top_share: float

    @property
    def realised(self) -> float | None:
        """The realised change a verdict rests on: on the training batches when measured, else the evaluation set."""
        return self.realised_batches if self.realised_batches is not None else self.realised_eval

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for ``summary.json``."""
        return {**asdict(self), "top_steps": list(self.top_steps), "realised": self.realised}


def _total_rows(history: Sequence[GEffectRow], risk: str) -> list[GEffectRow]:
    """The whole-model rows of ``risk``, of the gradient the optimiser applied (``term`` "total" when present)."""
    return [r for r in history if r["risk"] == risk and r["level"] == "total" and r.get("term", "total") == "total"]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def risk_reading(
    history: Sequence[GEffectRow], risk: str, eval_before: float | None = None, eval_after: float | None = None
) -> RiskReading:
    """Summarise the G-effect history of ``risk``.

    Args:
        history: ``GEffectCallback.history`` of the run.
        risk: The risk to read.
        eval_before: Mean answer NLL of the evaluation set of this risk before unlearning (optional).
        eval_after: The same after unlearning.

    Raises:
        ValueError: the history holds no whole-model row of ``risk``.
    """
    rows = _total_rows(history, risk)
    if not rows:
        raise ValueError(f"The G-effect history has no whole-model rows of risk {risk!r}.")
    values = [r["g_effect"] for r in rows]
    last = rows[-1]
    magnitude = sum(abs(v) for v in values)
    k = max(1, math.ceil(len(rows) / 10))
    top = sorted(rows, key=lambda r: abs(r["g_effect"]), reverse=True)[:k]
    realised_eval = None if eval_before is None or eval_after is None else eval_after - eval_before
    return RiskReading(
        risk=risk,
        steps=len(rows),
        mean_g_effect=sum(values) / len(values),
        median_g_effect=_median(values),
        negative_fraction=sum(v < 0 for v in values) / len(values),
        raw_prediction=last["cumulative_predicted_change"],
        update_prediction=last["cumulative_update_change"],
        realised_batches=last["cumulative_realised_change"],
        realised_eval=realised_eval,
        top_steps=tuple(r["step"] for r in top),
        top_share=sum(abs(r["g_effect"]) for r in top) / magnitude if magnitude > 0 else 0.0,
    )


def direction(change: float) -> str:
    """``"ROSE"``, ``"FELL"`` or ``"did not move"``: the word a verdict uses for a risk change."""
    if change > 0:
        return "ROSE"
    if change < 0:
        return "FELL"
    return "did not move"


def _fmt(x: float) -> str:
    return f"{x:+.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:+.2e}"


def _agreement(name: str, prediction: float, realised: float) -> str:
    """How a first-order prediction compares with the realised change: direction, then size."""
    if (prediction > 0) != (realised > 0) or prediction == 0:
        return f"{name} ({_fmt(prediction)}) points the OTHER way"
    ratio = abs(realised / prediction)
    size = f"{ratio:.2g}× smaller than realised" if ratio >= 1 else f"{1 / ratio:.2g}× larger than realised"
    return f"{name} ({_fmt(prediction)}) agrees in direction, {size}"


GOAL = {"forget": "rising is the goal of unlearning", "retain": "rising means collateral damage"}


def verdict(reading: RiskReading) -> list[str]:
    """Plain-language verdict lines, each following the measured sign of the quantity it names."""
    risk, realised = reading.risk, reading.realised
    goal = GOAL.get(risk, "")
    lines = []
    if realised is None:
        lines.append(
            f"- The **{risk} risk**'s realised change was not measured; only predictions follow (run the callback "
            "with `realised_change=True` or pass the evaluations)."
        )
        realised_basis = None
    else:
        where = (
            "summed over the steps, on each step's own batches"
            if reading.realised_batches is not None
            else ("on the evaluation set")
        )
        lines.append(
            f"- The **{risk} risk {direction(realised)}** by {abs(realised):.3g} nats over the run ({where}"
            f"{'; ' + goal if goal else ''})."
        )
        realised_basis = realised
    if reading.realised_batches is not None and reading.realised_eval is not None:
        same = (reading.realised_eval > 0) == (reading.realised_batches > 0)
        agreement = (
            "the same direction"
            if same
            else "the OPPOSITE direction: the training batches and the evaluation set disagree"
        )
        lines.append(
            f"  On the evaluation set the mean answer NLL changed by {_fmt(reading.realised_eval)}, {agreement}."
        )
    if realised_basis is not None:
        readings = []
        if reading.update_prediction is not None:
            readings.append(
                _agreement("the update-aware prediction Σ ∇R·Δθ", reading.update_prediction, realised_basis)
            )
        readings.append(_agreement("the raw-gradient prediction Σ −η·e", reading.raw_prediction, realised_basis))
        lines.append("  First-order readings: " + "; ".join(readings) + ".")
    if reading.update_prediction is not None and (reading.update_prediction > 0) != (reading.raw_prediction > 0):
        lines.append(
            "  The raw-gradient and update-aware readings DISAGREE in direction: the optimiser's step (AdamW rescales "
            "every coordinate) is not the gradient step the raw G-effect describes; trust the update-aware one."
        )
    lines.append(
        f"  Per step: mean G-effect {reading.mean_g_effect:.3g}, median {reading.median_g_effect:.3g}, negative on "
        f"{reading.negative_fraction:.0%} of the {reading.steps} measured steps (negative e: a plain gradient step "
        "would raise the risk)."
    )
    if (reading.mean_g_effect < 0) != (reading.median_g_effect < 0):
        lines.append("  The mean and the median have opposite signs: the typical step and the average step disagree.")
    if reading.mean_g_effect != 0 and (reading.mean_g_effect < 0) == (reading.raw_prediction < 0):
        lines.append(
            "  The plain mean and the learning-rate-weighted sum Σ −η·e point in opposite directions: the steps "
            "taken at the largest learning rates push the other way than the average step."
        )
    if reading.steps >= 5 and reading.top_share > DOMINANCE_SHARE:
        steps = ", ".join(str(s) for s in reading.top_steps)
        lines.append(
            f"  A few steps dominate: step(s) {steps} carry {reading.top_share:.0%} of Σ|e|, so the mean describes "
            "them, not the run."
        )
    return lines


def readings_of(
    history: Sequence[GEffectRow], eval_losses: Mapping[str, tuple[float | None, float | None]] | None = None
) -> dict[str, RiskReading]:
    """A :class:`RiskReading` for every risk in ``history``.

    Args:
        history: ``GEffectCallback.history`` of the run.
        eval_losses: Per risk, the evaluation set's mean answer NLL ``(before, after)``.
    """
    eval_losses = eval_losses or {}
    risks = list(dict.fromkeys(r["risk"] for r in history))
    return {risk: risk_reading(history, risk, *eval_losses.get(risk, (None, None))) for risk in risks}
