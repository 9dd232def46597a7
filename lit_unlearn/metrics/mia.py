"""``MinKMembershipAUC``: min-k% membership-inference AUC of the forget set against a holdout set."""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lit_unlearn.metrics.functional.mia import membership_auc, min_k_scores


class MinKMembershipAUC(Metric):
    """AUC of telling members (forget set) from non-members (holdout) by their min-k% score (OpenUnlearning
    ``mia_min_k``; the input of ``privleak``).

    Inputs of ``update``: ``token_logps`` (B, T), the log-probability of each answer token; ``mask`` (B, T), True on
    the tokens that count; ``member``: True for a forget-set batch, False for a holdout batch (or a (B,) bool tensor).
    ``compute`` returns the AUC as a scalar float64 tensor (≈1: the forget set still looks seen; 0.5:
    indistinguishable).

    Args:
        k: fraction of lowest token log-probs averaged into a score (OpenUnlearning's TOFU setting: 0.4).
        kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    scores: list[Tensor]
    members: list[Tensor]

    def __init__(self, k: float = 0.4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < k <= 1.0:
            raise ValueError(f"MinKMembershipAUC needs k in (0, 1], got {k}.")
        self.k = k
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("members", default=[], dist_reduce_fx="cat")

    def update(self, token_logps: Tensor, mask: Tensor, member: bool | Tensor) -> None:
        """Add a batch of member or non-member texts."""
        scores = min_k_scores(token_logps, mask, self.k)
        flags = torch.as_tensor(member, dtype=torch.bool, device=scores.device).expand(scores.shape[0])
        self.scores.append(scores)
        self.members.append(flags.clone())

    def compute(self) -> Tensor:
        """The AUC (member scores below non-member scores counts as separable)."""
        scores = dim_zero_cat(self.scores)
        members = dim_zero_cat(self.members).bool()
        return torch.tensor(membership_auc(scores[members], scores[~members]), dtype=torch.float64)
