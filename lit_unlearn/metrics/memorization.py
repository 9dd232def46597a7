"""``ExtractionStrength`` and ``ExactMemorization``: teacher-forced memorisation scores (OpenUnlearning)."""

from typing import Any

from torch import Tensor

from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.metrics.functional.memorization import exact_memorization, extraction_strength
from lit_unlearn.metrics.item_metric import ItemMetric


class _TokenScoreMetric(ItemMetric):
    """Mean of a per-item score of aligned (preds, target) token ids; items without answer tokens are left out."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def _score(self, preds: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor, indices: Tensor | None = None) -> None:
        """Add a batch: argmax ids ``preds`` (B, T) aligned with ``target`` (B, T), ``ignore_index`` off the answer;
        ``indices`` (B,), optional item ids (each id counts once)."""
        self._append(self._score(preds, target), indices)

    def compute(self) -> Tensor:
        """Mean over items (NaN scores, items without answer tokens, left out)."""
        return self._items()[1].nanmean()


class ExtractionStrength(_TokenScoreMetric):
    """Mean extraction strength ``1 − k/n`` (see ``functional.extraction_strength``).

    Args:
        ignore_index: target value of positions outside the answer.
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = ExtractionStrength()
        >>> metric.update(torch.tensor([[5, 9, 7, 8]]), torch.tensor([[5, 6, 7, 8]]))  # last 2 of 4 match
        >>> metric.compute().item()
        0.5
    """

    higher_is_better = False

    def _score(self, preds: Tensor, target: Tensor) -> Tensor:
        return extraction_strength(preds, target, self.ignore_index)


class ExactMemorization(_TokenScoreMetric):
    """Mean fraction of answer tokens predicted exactly under teacher forcing.

    Args:
        ignore_index: target value of positions outside the answer.
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = ExactMemorization()
        >>> metric.update(torch.tensor([[5, 9, 7, 8]]), torch.tensor([[5, 6, 7, 8]]))
        >>> metric.compute().item()
        0.75
    """

    higher_is_better = False

    def _score(self, preds: Tensor, target: Tensor) -> Tensor:
        return exact_memorization(preds, target, self.ignore_index)
