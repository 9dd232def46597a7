"""Truth ratio (TOFU, Maini et al. 2024, §2.5.1; OpenUnlearning ``truth_ratio``), from average answer NLLs.

Per item ``R = P_pert / P_correct`` with ``P_pert = exp(−mean_j avg_loss(pert_j))`` (the geometric mean of the
length-normalised perturbed probabilities) and ``P_correct = exp(−avg_loss(correct))``, where "correct" is the
paraphrased answer on forget/retain and the original answer on real authors / world facts. Hence
``R = exp(nll_correct − mean_j nll_pert_j)``.
"""

from typing import Literal

import torch
from torch import Tensor

TruthRatioAggregation = Literal["closer_to_1_better", "true_better"]
"""``closer_to_1_better`` (forget set): ``mean min(R, 1/R)``; ``true_better`` (retain, real authors, world facts):
``mean max(0, 1 − R)``."""


def truth_ratios(correct_nll: Tensor, perturbed_nll: Tensor) -> Tensor:
    """Per-item truth ratios ``R = exp(nll_correct − mean_j nll_pert_j)``.

    Args:
        correct_nll: average NLL of the paraphrased (forget/retain) or original (real authors, world facts)
            answer, shape (B,).
        perturbed_nll: average NLLs of the K perturbed answers, shape (B, K).

    Returns:
        Shape (B,), float64.

    Raises:
        ValueError: on shapes other than (B,) and (B, K).

    Example:
        >>> truth_ratios(torch.tensor([1.0]), torch.tensor([[1.0, 3.0]])).tolist()  # e^(1 - 2)
        [0.36787944117144233]
    """
    if correct_nll.ndim != 1 or perturbed_nll.ndim != 2 or perturbed_nll.shape[0] != correct_nll.shape[0]:
        raise ValueError(
            "Expected `correct_nll` of shape (B,) and `perturbed_nll` of shape (B, K), got "
            f"{tuple(correct_nll.shape)} and {tuple(perturbed_nll.shape)}."
        )
    # Working in log space: exp(-mean nll_pert) / exp(-nll_correct) without under/overflowing the two factors.
    return torch.exp(correct_nll.double() - perturbed_nll.double().mean(dim=-1))


def aggregate_truth_ratios(ratios: Tensor, aggregation: TruthRatioAggregation) -> Tensor:
    """Aggregate per-item ratios: ``mean min(R, 1/R)`` or ``mean max(0, 1 − R)``.

    Args:
        ratios: per-item truth ratios ``R`` (from :func:`truth_ratios`), shape (N,).
        aggregation: ``"closer_to_1_better"`` (forget set) or ``"true_better"`` (the others).

    Returns:
        A scalar tensor (NaN without items).

    Raises:
        ValueError: on an unknown ``aggregation``.

    Example:
        >>> aggregate_truth_ratios(torch.tensor([0.5, 2.0]), "closer_to_1_better").item()
        0.5
    """
    if aggregation == "closer_to_1_better":
        return torch.minimum(ratios, 1.0 / ratios).mean()
    if aggregation == "true_better":
        return torch.clamp(1.0 - ratios, min=0.0).mean()
    raise ValueError(f"Unknown truth-ratio aggregation {aggregation!r}; use 'closer_to_1_better' or 'true_better'.")


def truth_ratio(
    correct_nll: Tensor, perturbed_nll: Tensor, aggregation: TruthRatioAggregation = "true_better"
) -> Tensor:
    """Aggregated truth ratio of a batch of items.

    Args:
        correct_nll: average NLL of the correct (paraphrased or original) answer per item, shape (B,).
        perturbed_nll: average NLLs of the K perturbed answers per item, shape (B, K).
        aggregation: ``"closer_to_1_better"`` for the forget set, ``"true_better"`` for the others.

    Returns:
        A scalar float64 tensor.

    Example:
        >>> r = truth_ratio(torch.tensor([1.0]), torch.tensor([[1.0, 3.0]]))  # R = e^(1-2)
        >>> round(r.item(), 4)  # 1 - e^-1
        0.6321
    """
    return aggregate_truth_ratios(truth_ratios(correct_nll, perturbed_nll), aggregation)
