"""``MinKMembershipAUC``: min-k% membership-inference AUC of the forget set against a holdout set."""

from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_cat

from lit_unlearn.metrics.functional.mia import membership_auc, min_k_scores
from lit_unlearn.metrics.item_metric import ItemMetric, first_occurrences


class MinKMembershipAUC(ItemMetric):
    """AUC of telling members (forget set) from non-members (holdout) by their min-k% score (OpenUnlearning
    ``mia_min_k``; the input of ``privleak``).

    Inputs of ``update``: ``token_logps`` (B, T), the log-probability of each answer token; ``mask`` (B, T), True on
    the tokens that count; ``member``: True for a forget-set batch, False for a holdout batch (or a (B,) bool tensor);
    ``indices`` (B,), optional item ids, counted once per side (forget row 3 and holdout row 3 are two items).
    ``compute`` returns the AUC as a scalar float64 tensor (≈1: the forget set still looks seen; 0.5:
    indistinguishable); with ids, :meth:`per_item` returns the min-k scores keyed by ``(member, id)`` rows.

    Args:
        k: fraction of lowest token log-probs averaged into a score (OpenUnlearning's TOFU setting: 0.4).
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> metric = MinKMembershipAUC(k=1.0)
        >>> metric.update(torch.tensor([[-0.1, -0.2], [-0.3, -0.1]]), torch.ones(2, 2, dtype=torch.bool), True)
        >>> metric.update(torch.tensor([[-2.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool), False)
        >>> metric.compute().item()
        1.0
    """

    higher_is_better = False
    members: list[Tensor]

    def __init__(self, k: float = 0.4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < k <= 1.0:
            raise ValueError(f"MinKMembershipAUC needs k in (0, 1], got {k}.")
        self.k = k
        self.add_state("members", default=[], dist_reduce_fx="cat")

    def update(self, token_logps: Tensor, mask: Tensor, member: bool | Tensor, indices: Tensor | None = None) -> None:
        """Add a batch of member or non-member texts."""
        scores = min_k_scores(token_logps, mask, self.k)
        flags = torch.as_tensor(member, dtype=torch.bool, device=scores.device).expand(scores.shape[0])
        self._append(scores, indices)
        self.members.append(flags.clone())

    def _keys(self) -> Tensor | None:
        keys = super()._keys()
        if keys is None:
            return None
        # A row number names an item only together with its side: forget and holdout rows both start at 0.
        return torch.stack([dim_zero_cat(self.members).long(), keys], dim=1)

    def _sides(self) -> tuple[Tensor, Tensor]:
        """``(member flags, scores)`` of every item once."""
        values = dim_zero_cat(self.values)
        members = dim_zero_cat(self.members).bool()
        keys = self._keys()
        if keys is None:
            return members, values
        _, first = first_occurrences(keys)
        return members[first], values[first]

    def compute(self) -> Tensor:
        """The AUC (member scores below non-member scores counts as separable)."""
        members, scores = self._sides()
        return torch.tensor(membership_auc(scores[members], scores[~members]), dtype=torch.float64)
