"""TOFU's numbers from stored per-item records (this project's ``eval_items.json`` or the original TOFU
``eval_log_aggregated.json``, converted by ``lit_unlearn.eval.io``), and the headline numbers shared with the live
evaluation.

A live evaluation (``TOFUEvaluator``) aggregates through the ``lit_unlearn.metrics`` Metric classes, which take what a
model produces (token ids, log-probs, generated text). A stored evaluation holds per-item values instead, so this
module aggregates them with the same public functional API the Metric classes' ``compute`` calls; a test checks that
re-reading an evaluation's file reproduces its live summary.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.stats import ks_2samp
from torch import Tensor

from lit_unlearn.data.evaluation import PARAPHRASED_SPLITS
from lit_unlearn.eval.items import Records
from lit_unlearn.metrics.functional import (
    MODEL_UTILITY_COMPONENTS,
    aggregate_truth_ratios,
    answer_probabilities,
    forget_quality,
    membership_auc,
    model_utility,
    privleak,
    truth_ratios,
)
from lit_unlearn.metrics.functional.truth_ratio import TruthRatioAggregation

OPTION_NORMALISED_SPLITS = frozenset({"real_authors", "world_facts"})
"""Splits whose reported probability is ``P(a) / (P(a) + Σ_j P(pert_j))``."""


def truth_ratio_aggregation(split: str) -> TruthRatioAggregation:
    """``closer_to_1_better`` on the forget set, ``true_better`` on the others (TOFU)."""
    return "closer_to_1_better" if split == "forget" else "true_better"


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> Tensor | None:
    """``key`` of every row as a float64 tensor, or None when any row lacks it."""
    values = [row.get(key) for row in rows]
    if not values or any(v is None for v in values):
        return None
    return torch.tensor(values, dtype=torch.float64)


def item_probabilities(split: str, rows: Sequence[Mapping[str, Any]]) -> Tensor:
    """Per-item reported probability: option-normalised on real authors / world facts, plain elsewhere.

    Raises:
        ValueError: when a record lacks ``answer_loss``.
    """
    nll = _column(rows, "answer_loss")
    if nll is None:
        raise ValueError(f"Every record of split {split!r} needs 'answer_loss'.")
    perturbed = _column(rows, "perturbed_losses") if split in OPTION_NORMALISED_SPLITS else None
    return answer_probabilities(nll, perturbed)


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
    return truth_ratios(correct, perturbed)


def finite_mean(values: Tensor | None) -> float | None:
    """Mean of the non-NaN values as a float; None without values or when every value is NaN."""
    if values is None:
        return None
    x = float(values.nanmean()) if values.numel() else float("nan")
    return None if math.isnan(x) else x


def split_metrics(split: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Aggregates of one split: ``probability``, ``answer_loss``, ``truth_ratio``, ``rouge_l_recall``,
    ``extraction_strength``, ``exact_memorization`` (those its records allow)."""
    out: dict[str, float | None] = {
        "probability": float(item_probabilities(split, rows).mean()),
        "answer_loss": finite_mean(_column(rows, "answer_loss")),
    }
    ratios = item_truth_ratios(split, rows)
    if ratios is not None:
        out["truth_ratio"] = float(aggregate_truth_ratios(ratios, truth_ratio_aggregation(split)))
    for key in ("rouge_l_recall", "extraction_strength", "exact_memorization"):
        out[key] = finite_mean(_column(rows, key))
    return {k: v for k, v in out.items() if v is not None}


def membership_auc_of(records: Records) -> float | None:
    """Min-k% AUC of forget (members) vs holdout (non-members), None unless both have scores."""
    forget = _column(records.get("forget", ()), "min_k_score")
    holdout = _column(records.get("holdout", ()), "min_k_score")
    if forget is None or holdout is None:
        return None
    return membership_auc(forget, holdout)


def headline_numbers(
    components: Mapping[str, Any],
    forget_ratios: Tensor | None,
    auc: float | None,
    reference: Records | None,
    default_reference_auc: float,
) -> dict[str, Any]:
    """Model utility, forget quality and privleak of an evaluation.

    Args:
        components: the per-split numbers, keyed ``<split>/<metric>`` (model utility needs the nine of
            ``MODEL_UTILITY_COMPONENTS``).
        forget_ratios: per-item truth ratios on the forget set, or None.
        auc: min-k% membership AUC of forget vs holdout, or None.
        reference: per-item records of the retain model on the same forget split (forget quality; its own
            forget/holdout AUC, when it has one, is privleak's reference).
        default_reference_auc: privleak's reference AUC when ``reference`` has none.

    Returns:
        ``model_utility`` and ``forget_quality`` (None when unavailable), plus ``ks_statistic`` with a reference and
        ``mia_min_k_auc``, ``privleak_reference_auc``, ``privleak`` with an AUC.
    """
    out: dict[str, Any] = {"model_utility": None, "forget_quality": None}
    if all(k in components for k in MODEL_UTILITY_COMPONENTS):
        out["model_utility"] = model_utility(components)
    if reference is not None and forget_ratios is not None and "forget" in reference:
        reference_ratios = item_truth_ratios("forget", reference["forget"])
        if reference_ratios is not None:
            out["forget_quality"] = forget_quality(forget_ratios, reference_ratios)
            out["ks_statistic"] = float(ks_2samp(forget_ratios.tolist(), reference_ratios.tolist()).statistic)
    if auc is not None:
        reference_auc = membership_auc_of(reference) if reference is not None else None
        out["mia_min_k_auc"] = auc
        out["privleak_reference_auc"] = reference_auc if reference_auc is not None else default_reference_auc
        out["privleak"] = privleak(auc, out["privleak_reference_auc"])
    return out


def summarize_records(
    records: Records, reference: Records | None = None, default_reference_auc: float = 0.5
) -> dict[str, Any]:
    """All TOFU numbers of a stored evaluation.

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
    forget_ratios = item_truth_ratios("forget", records["forget"]) if records.get("forget") else None
    headline = headline_numbers(summary, forget_ratios, membership_auc_of(records), reference, default_reference_auc)
    summary.update(headline)
    return summary
