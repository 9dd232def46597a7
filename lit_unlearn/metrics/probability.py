"""``AnswerProbability``: mean length-normalised answer probability (plain or option-normalised)."""

from typing import Any

from torch import Tensor

from lit_unlearn.metrics.functional.probability import answer_probabilities
from lit_unlearn.metrics.item_metric import ItemMetric


class AnswerProbability(ItemMetric):
    """Mean ``P(a) = exp(−avg_loss(a))`` over items, or ``P(a) / (P(a) + Σ_j P(pert_j))`` with ``normalized=True``
    (TOFU's probability on real authors / world facts).

    Inputs of ``update``: ``nll`` (B,), the average answer NLL per item (mean token NLL over the answer and EOS);
    ``perturbed_nll`` (B, K), the average NLLs of the wrong answers (required when ``normalized``); ``indices`` (B,),
    optional item ids (each id counts once, see :class:`~lit_unlearn.metrics.item_metric.ItemMetric`).
    ``compute`` returns a scalar float64 tensor; :meth:`per_item` the per-item probabilities.

    Args:
        normalized: normalise against the perturbed answers.
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = AnswerProbability()
        >>> metric.update(torch.tensor([0.0, 1.0]))
        >>> round(metric.compute().item(), 4)
        0.6839
    """

    higher_is_better = True

    def __init__(self, normalized: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalized = normalized

    def update(self, nll: Tensor, perturbed_nll: Tensor | None = None, indices: Tensor | None = None) -> None:
        """Add a batch of items."""
        if self.normalized and perturbed_nll is None:
            raise ValueError("AnswerProbability(normalized=True).update needs `perturbed_nll` of shape (B, K).")
        self._append(answer_probabilities(nll, perturbed_nll if self.normalized else None), indices)

    def compute(self) -> Tensor:
        """Mean probability over all items."""
        return self._items()[1].mean()
