"""The robustness section of a report: a relearning attack and a quantization attack on the unlearned model.

Reads the attacks' JSON reports (``RelearnReport.to_json()`` and ``QuantizeReport.to_json()``), so a section can be
written from results stored on disk. Every verdict follows the measured direction: the attack's recovery ratio
against the retain-data control (relearning) and against zero (quantization).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from lit_unlearn.report.numbers import fmt_number

HEADLINE_METRIC = "probability"
"""The forget metric the verdicts quote: the answer probability moves continuously, where ROUGE-L of a tiny model's
greedy answers moves in coarse steps."""

_COLUMNS = (
    ("forget_probability", "forget prob."),
    ("forget_rouge_l_recall", "forget ROUGE-L"),
    ("forget_truth_ratio", "forget truth ratio"),
    ("forget_quality", "forget quality"),
    ("model_utility", "model utility"),
)


def _row(label: str, metrics: Mapping[str, Any], recovery: Mapping[str, Any] | None) -> str:
    cells = [fmt_number(metrics.get(key)) for key, _ in _COLUMNS]
    cells.append(fmt_number(recovery.get(HEADLINE_METRIC)) if recovery is not None else "")
    return f"| {label} | " + " | ".join(cells) + " |"


def _header() -> list[str]:
    names = [name for _, name in _COLUMNS] + [f"recovery ({HEADLINE_METRIC})"]
    return ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]


def _utility_rows(report: Mapping[str, Any]) -> str:
    cap = report["evaluation"].get("max_items")
    return f" Model utility over the first {cap} rows of each utility split." if cap else ""


def _last_point(relearn: Mapping[str, Any], arm: str) -> Mapping[str, Any] | None:
    for result in relearn["arms"]:
        if result["name"] == arm:
            return result["points"][-1]
    return None


NEGLIGIBLE = 0.05
"""Recovery ratios closer to 0 than this are read as "nothing came back" (a twentieth of what unlearning removed)."""


def relearn_verdict(attack: float | None, control: float | None, baseline: float | None, steps: int) -> str:
    """What the relearning attack shows, judged against its two controls.

    The retain-data control tells whether generic fine-tuning alone undoes unlearning; the retain-model baseline
    (the retain model, which never saw the forget authors, fine-tuned on the same relearn half) tells how much of the
    held-out half the relearn half teaches by itself, since one author's questions share facts. Only recovery beyond
    both is evidence that the knowledge was still in the weights.

    Args:
        attack: recovery ratio of the unlearned model fine-tuned on the relearn half.
        control: recovery ratio of the unlearned model fine-tuned on as many retain rows.
        baseline: recovery ratio of the retain model fine-tuned on the relearn half; None when not run.
        steps: the optimiser steps each arm took.

    Example:
        >>> relearn_verdict(0.6, 0.1, 0.2, 30).split(": ")[-1]
        'the knowledge was suppressed rather than erased.'
    """
    if attack is None or control is None:
        return "No recovery ratio: unlearning moved the forget answer probability too little to divide by."
    facts = (
        f"After {steps} steps on half of the forget set, the unlearned model recovers {100 * attack:.0f} % of what "
        f"unlearning removed on the other half: the same steps on retain rows recover {100 * control:.0f} %"
    )
    if baseline is None:
        facts += (
            ". The retain-model baseline was not run, so this cannot separate knowledge left in the weights from what "
            "the relearn half teaches about the held-out half."
        )
        return facts
    facts += (
        f", and the retain model, which never saw these authors, reaches {100 * baseline:.0f} % from the same half. "
    )
    if attack > max(control, baseline) + NEGLIGIBLE:
        return facts + (
            "The unlearned model regains more than the relearn half teaches a model that never knew the answers: the "
            "knowledge was suppressed rather than erased."
        )
    if attack > control + NEGLIGIBLE:
        return facts + (
            "It regains more than under generic fine-tuning, but no more than a model that never knew the answers "
            "learns from the relearn half: no sign that the knowledge is latent."
        )
    return facts + "It regains no more than under generic fine-tuning: no sign that the knowledge is latent."


def quantize_verdict(recovery: float | None, label: str, changed_fraction: float | None) -> str:
    """One line on the quantization attack: does rounding the unlearned weights move them back to the target?

    Example:
        >>> quantize_verdict(-0.02, "int4-channel-sym", 0.001).split(" (")[0]
        'int4-channel-sym round-to-nearest quantization leaves the forget answers where unlearning put them'
    """
    codes = (
        f" Unlearning changed {100 * changed_fraction:.3g} % of the integer codes."
        if changed_fraction is not None
        else ""
    )
    if recovery is None:
        return f"No recovery ratio for {label}: unlearning moved the forget answer probability too little.{codes}"
    if abs(recovery) < NEGLIGIBLE:
        effect = "leaves the forget answers where unlearning put them"
    elif recovery > 0:
        effect = "moves the forget answers back towards the target"
    else:
        effect = "moves the forget answers further from the target"
    return (
        f"{label} round-to-nearest quantization {effect} (recovery of the answer probability {recovery:.3g}; 0 nothing "
        f"back, 1 all the way).{codes}"
    )


def robustness_section(relearn: Mapping[str, Any], quantize: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """Markdown of the robustness section from the two attacks' JSON reports.

    Args:
        relearn: ``RelearnReport.to_json()``.
        quantize: ``QuantizeReport.to_json()`` (with a target, for the recovery ratio and the code changes).
        notes: extra lines (e.g. that the results were reused from the cache).

    Returns:
        The section, starting with its ``##`` heading.
    """
    attack, control = _last_point(relearn, "attack"), _last_point(relearn, "retain_control")
    baseline = _last_point(relearn, "retain_baseline")
    if attack is None or control is None:
        raise ValueError("The relearning report holds no 'attack' or 'retain_control' arm; rerun the attack.")
    settings, halves = relearn["settings"], relearn["halves"]
    steps = attack["steps"]
    lines = [
        "## Robustness: does the forgotten knowledge come back?",
        "",
        f"**Relearning** (docs/attacks.md): {relearn['forget_split']} split 50/50 per author (seed {relearn['seed']}); "
        f"{steps} AdamW steps (lr {settings['lr']:g}, batch {settings['batch_size']}) on the "
        f"{len(halves['relearn_rows'])}-row relearn half, and as a control the same steps on "
        f"{len(relearn['control_rows'])} rows of {relearn['control_split']}; every model evaluated on the other "
        f"{len(halves['eval_rows'])} rows (forget quality against the retain model on those rows). Recovery = "
        "(attacked − unlearned) / (target − unlearned), one seed." + _utility_rows(relearn),
        "",
        *_header(),
        _row("target", relearn["target"], None),
        _row("unlearned", relearn["unlearned"], None),
        _row(f"unlearned + {steps} steps on the relearn half", attack["metrics"], attack["recovery"]),
        _row(f"unlearned + {steps} steps on retain rows (control)", control["metrics"], control["recovery"]),
        _row("retain", relearn["retain"], None),
    ]
    if baseline is not None:
        lines.append(
            _row(f"retain + {steps} steps on the relearn half (baseline)", baseline["metrics"], baseline["recovery"])
        )
    lines += [
        "",
        relearn_verdict(
            attack["recovery"].get(HEADLINE_METRIC),
            control["recovery"].get(HEADLINE_METRIC),
            baseline["recovery"].get(HEADLINE_METRIC) if baseline is not None else None,
            steps,
        ),
    ]
    label = quantize["spec"]["label"]
    metrics = quantize["metrics"]
    changes = quantize.get("code_changes")
    lines += [
        "",
        f"**Quantization**: weight-only {label} round-to-nearest (every linear layer but the output head) of the "
        f"target and the unlearned model, evaluated on all {quantize['forget_split']} rows. It approximates the "
        "published 4-bit attack, which used bitsandbytes' FP4 and LLM.int8() (docs/attacks.md)."
        + _utility_rows(quantize),
        "",
        *_header(),
        *[
            _row(name, metrics[name], quantize["recovery"] if name == "Q(unlearned)" else None)
            for name in ("target", "Q(target)", "unlearned", "Q(unlearned)")
            if name in metrics
        ],
        "",
        quantize_verdict(
            (quantize.get("recovery") or {}).get(HEADLINE_METRIC),
            label,
            changes["fraction"] if changes is not None else None,
        ),
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)
