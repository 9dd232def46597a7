"""From per-item records to TOFU's numbers: per-split metrics, model utility, forget quality, MIA AUC, privleak.

One implementation serves every source of records: a fresh evaluation, this project's ``eval_items.json`` and the
original TOFU ``eval_log_aggregated.json`` (converted by ``lit_unlearn.eval.io``). That is what makes the parity tests
on the TOFU reference logs test the code that produces this project's numbers.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.stats import ks_2samp
from torch import Tensor

from lit_unlearn.eval.data import PARAPHRASED_SPLITS
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS, forget_quality, model_utility
from lit_unlearn.metrics.functional.mia import membership_auc, privleak
from lit_unlearn.metrics.functional.probability import _answer_probability_compute, _answer_probability_update
from lit_unlearn.metrics.functional.truth_ratio import _truth_ratio_compute, _truth_ratio_update

Records = Mapping[str, Sequence[Mapping[str, Any]]]
"""Per-item records keyed by evaluation split (see ``lit_unlearn.eval.evaluator.Record``)."""

OPTION_NORMALISED_SPLITS = frozenset({"real_authors", "world_facts"})
"""Splits whose reported probability is ``P(a) / (P(a) + Σ_j P(pert_j))``."""


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> Tensor | None:
    """``key`` of every row as a float64 tensor, or None when any row lacks it."""
    values = [row.get(key) for row in rows]
    if not values or any(v is None for v in values):
        return None
    return torch.tensor(values, dtype=torch.float64)


def item_probabilities(split: str, rows: Sequence[Mapping[str, Any]]) -> Tensor:
    """Per-item reported probability: option-normalised on real authors / world facts, plain elsewhere."""
    nll = _column(rows, "answer_loss")
    if nll is None:
        raise ValueError(f"Every record of split {split!r} needs 'answer_loss'.")
    perturbed = _column(rows, "perturbed_losses") if split in OPTION_NORMALISED_SPLITS else None
    return _answer_probability_update(nll, perturbed)


def item_truth_ratios(split: str, rows: Sequence[Mapping[str, Any]]) -> Tensor | None:
    """Per-item truth ratios ``R``, None without perturbed losses (holdout).

    The correct answer is the paraphrased one on forget/retain and the answer itself on real authors / world facts.
    Original TOFU logs score that answer in a second pass stored as ``avg_paraphrased_loss``, whose batch padding
    makes it differ from ``avg_gt_loss`` in the last decimals for a few items; a ``paraphrased_loss`` present on those
    splits is therefore used, which reproduces the logged aggregates exactly.
    """
    perturbed = _column(rows, "perturbed_losses")
    correct = _column(rows, "paraphrased_loss")
    if correct is None and split not in PARAPHRASED_SPLITS:
        correct = _column(rows, "answer_loss")
    if perturbed is None or correct is None:
        return None
    return _truth_ratio_update(correct, perturbed)


def _finite_mean(values: Tensor | None) -> float | None:
    if values is None:
        return None
    x = float(values.nanmean()) if values.numel() else float("nan")
    return None if math.isnan(x) else x


def split_metrics(split: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Aggregates of one split: ``probability``, ``truth_ratio``, ``rouge_l_recall``, ``extraction_strength``,
    ``exact_memorization``, ``answer_loss`` (those its records allow)."""
    out: dict[str, float | None] = {
        "probability": float(_answer_probability_compute(item_probabilities(split, rows))),
        "answer_loss": _finite_mean(_column(rows, "answer_loss")),
    }
    ratios = item_truth_ratios(split, rows)
    if ratios is not None:
        aggregation = "closer_to_1_better" if split == "forget" else "true_better"
        out["truth_ratio"] = float(_truth_ratio_compute(ratios, aggregation))
    for key in ("rouge_l_recall", "extraction_strength", "exact_memorization"):
        out[key] = _finite_mean(_column(rows, key))
    return {k: v for k, v in out.items() if v is not None}


def membership_auc_of(records: Records) -> float | None:
    """Min-k% AUC of forget (members) vs holdout (non-members), None unless both have scores."""
    forget = _column(records.get("forget", ()), "min_k_score")
    holdout = _column(records.get("holdout", ()), "min_k_score")
    if forget is None or holdout is None:
        return None
    return membership_auc(forget, holdout)


def summarize_records(
    records: Records, reference: Records | None = None, default_reference_auc: float = 0.5
) -> dict[str, Any]:
    """All TOFU numbers of an evaluation.

    Args:
        records: per-item records of the evaluated model, keyed by split.
        reference: per-item records of the retain model on the same forget split (forget quality; its own
            forget/holdout AUC, when it has one, is privleak's reference).
        default_reference_auc: privleak's reference AUC when ``reference`` has none.

    Returns:
        A flat dict: ``<split>/<metric>`` for every split, ``model_utility`` (when the nine components exist),
        ``forget_quality`` and ``ks_statistic`` (with a reference), ``mia_min_k_auc`` and ``privleak`` (with forget and
        holdout scores), ``num_items/<split>``. Unavailable headline numbers are None.
    """
    summary: dict[str, Any] = {"model_utility": None, "forget_quality": None}
    for split, rows in records.items():
        if not rows:
            continue
        summary[f"num_items/{split}"] = len(rows)
        for key, value in split_metrics(split, rows).items():
            summary[f"{split}/{key}"] = value
    if all(k in summary for k in MODEL_UTILITY_COMPONENTS):
        summary["model_utility"] = model_utility(summary)
    if reference is not None and "forget" in records and "forget" in reference:
        ratios = item_truth_ratios("forget", records["forget"])
        reference_ratios = item_truth_ratios("forget", reference["forget"])
        if ratios is not None and reference_ratios is not None:
            summary["forget_quality"] = forget_quality(ratios, reference_ratios)
            summary["ks_statistic"] = float(ks_2samp(ratios.tolist(), reference_ratios.tolist()).statistic)
    auc = membership_auc_of(records)
    if auc is not None:
        reference_auc = membership_auc_of(reference) if reference is not None else None
        summary["mia_min_k_auc"] = auc
        summary["privleak_reference_auc"] = reference_auc if reference_auc is not None else default_reference_auc
        summary["privleak"] = privleak(auc, summary["privleak_reference_auc"])
    return summary


def items_with_derived_values(split: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records plus their per-item ``probability`` and ``truth_ratio``, for the per-item JSON."""
    probabilities = item_probabilities(split, rows).tolist()
    ratios = item_truth_ratios(split, rows)
    out = []
    for i, row in enumerate(rows):
        item = dict(row)
        item["probability"] = probabilities[i]
        if ratios is not None:
            item["truth_ratio"] = float(ratios[i])
        out.append(item)
    return out
