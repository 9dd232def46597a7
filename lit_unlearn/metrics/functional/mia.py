"""Membership inference on TOFU: min-k% probability scores, their AUC and privleak (OpenUnlearning ``mia_min_k``
and ``privleak``).

Min-k% (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models", Eq. 1): the score of a text is
minus the mean of its lowest ``k`` fraction of token log-probabilities. Higher means "less likely a member".
"""

import math

import torch
from torch import Tensor


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
    """ROC AUC of separating members (forget set) from non-members (holdout) by score.

    OpenUnlearning convention: labels 0 for members, 1 for non-members, scores where higher means "less likely a
    member". The AUC is the probability that a random non-member scores above a random member (ties count 1/2), so
    AUC ≈ 1 means the forget set looks far more "seen" than the holdout and 0.5 means indistinguishable.

    Raises:
        ValueError: when either side is empty.
    """
    if member_scores.numel() == 0 or nonmember_scores.numel() == 0:
        raise ValueError(
            f"membership_auc needs scores on both sides, got {member_scores.numel()} member and "
            f"{nonmember_scores.numel()} non-member scores (evaluate both the forget and the holdout split)."
        )
    members = member_scores.double().flatten()
    others = nonmember_scores.double().flatten()
    # Mann-Whitney U via average ranks: exact, O(n log n), ties counted 1/2.
    scores = torch.cat([members, others])
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    unique, inverse = torch.unique(scores, return_inverse=True)
    rank_sum = torch.zeros_like(unique).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(unique).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (rank_sum / counts)[inverse]
    n_other = others.numel()
    u = ranks[members.numel() :].sum() - n_other * (n_other + 1) / 2
    return float(u / (members.numel() * n_other))


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
