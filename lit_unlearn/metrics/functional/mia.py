"""Membership inference on TOFU: min-k% probability scores, their AUC and privleak (OpenUnlearning ``mia_min_k``
and ``privleak``).

Min-k% (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models", Eq. 1): the score of a text is
minus the mean of its lowest ``k`` fraction of token log-probabilities. Higher means "less likely a member".
"""

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc


def min_k_scores(token_logps: Tensor, mask: Tensor, k: float = 0.4) -> Tensor:
    """Per-item min-k% score ``−mean(lowest ⌊k·n⌋ token log-probs)`` (at least one token).

    Args:
        token_logps: log-probability of each target token, shape (B, T).
        mask: True on the tokens that count, shape (B, T).
        k: the fraction of lowest log-probs to average (OpenUnlearning's TOFU default: 0.4).

    Returns:
        Shape (B,), float64; NaN for an item without tokens.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"min-k fraction k must be in (0, 1], got {k}.")
    if token_logps.shape != mask.shape or token_logps.ndim != 2:
        raise ValueError(
            f"Expected `token_logps` and `mask` of the same shape (B, T), got {tuple(token_logps.shape)} "
            f"and {tuple(mask.shape)}."
        )
    mask = mask.bool()
    # Masked positions sort last (+inf), so the first num_k sorted values are the lowest real log-probs.
    filled = torch.where(mask, token_logps.double(), torch.full_like(token_logps, math.inf, dtype=torch.float64))
    sorted_logps, _ = torch.sort(filled, dim=-1)
    n = mask.sum(dim=-1)
    num_k = torch.clamp((n.double() * k).floor().long(), min=1)
    take = torch.arange(token_logps.shape[-1], device=token_logps.device)[None, :] < num_k[:, None]
    total = torch.where(take, sorted_logps, torch.zeros_like(sorted_logps)).sum(dim=-1)
    scores = -total / num_k.double()
    return torch.where(n > 0, scores, torch.full_like(scores, float("nan")))


def membership_auc(member_scores: Tensor, nonmember_scores: Tensor) -> float:
    """ROC AUC of separating members (forget set) from non-members (holdout) by score, with torchmetrics'
    ``binary_auroc``.

    OpenUnlearning convention: labels 0 for members, 1 for non-members, scores where higher means "less likely a
    member". The AUC is the probability that a random non-member scores above a random member (ties count 1/2), so
    AUC ≈ 1 means the forget set looks far more "seen" than the holdout and 0.5 means indistinguishable.

    Args:
        member_scores: scores of the members, any shape (flattened).
        nonmember_scores: scores of the non-members, any shape (flattened).

    Returns:
        The AUC in [0, 1] (``binary_auroc`` accumulates in float32: about 7 significant digits).

    Raises:
        ValueError: when either side is empty or a score is NaN.

    Example:
        >>> membership_auc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0]))  # pairs 1, 1, 1/2, 1 of 4
        0.875
    """
    if member_scores.numel() == 0 or nonmember_scores.numel() == 0:
        raise ValueError(
            f"membership_auc needs scores on both sides, got {member_scores.numel()} member and "
            f"{nonmember_scores.numel()} non-member scores (evaluate both the forget and the holdout split)."
        )
    scores = torch.cat([member_scores.flatten(), nonmember_scores.flatten()]).double()
    if scores.isnan().any():
        raise ValueError(
            "membership_auc got NaN scores (items without a scored token); min-k scores need at least one answer "
            "token besides EOS."
        )
    target = torch.cat([torch.zeros(member_scores.numel()), torch.ones(nonmember_scores.numel())]).to(
        device=scores.device, dtype=torch.long
    )
    # binary_auroc reads scores outside [0, 1] as logits and squashes them with a sigmoid, which rounds to 1.0 in
    # float64 past ~37 (NLLs of an unlearned model go there) and would turn distinct scores into ties. The AUC
    # depends only on the order of the scores, so their dense ranks scaled into [0, 1] keep it, ties included.
    distinct, ranks = torch.unique(scores, return_inverse=True)
    preds = ranks.double() / max(distinct.numel() - 1, 1)
    return float(binary_auroc(preds, target))


def privleak(auc: float, retain_auc: float = 0.5) -> float:
    """Privleak (MUSE, Shi et al. 2024; OpenUnlearning): relative gap between the model's and the retain model's
    membership-inference AUC, ``((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) · 100``.

    0 means as private as the retain model; strongly negative means the forget set still leaks (under-unlearning);
    strongly positive means over-unlearning.

    Args:
        auc: min-k% AUC (forget vs holdout) of the evaluated model.
        retain_auc: the same for the retain model; OpenUnlearning's default reference is 0.5.

    Raises:
        ValueError: when ``retain_auc`` is 1 (division by zero).
    """
    if retain_auc >= 1.0:
        raise ValueError(f"privleak is undefined for retain_auc={retain_auc} (1 − AUC_retain must be positive).")
    return ((1.0 - auc) - (1.0 - retain_auc)) / (1.0 - retain_auc) * 100.0
