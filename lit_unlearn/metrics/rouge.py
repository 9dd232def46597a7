"""``ROUGELRecall``: TOFU's ROUGE-L recall (Porter stemming) of generations, one value per item."""

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_unlearn.metrics.functional.rouge import rouge_l_recall_batch
from lit_unlearn.metrics.item_metric import ItemMetric


class ROUGELRecall(ItemMetric):
    """Mean ROUGE-L recall of generations against ground-truth answers (TOFU's ``rougeL_recall``).

    The per-pair recall comes from torchmetrics' ``rouge_score`` (see ``lit_unlearn.metrics.functional.rouge``); the
    metric keeps one recall per item, so generations of items repeated across processes count once.

    Inputs of ``update``: ``preds`` (generated answers) and ``target`` (ground-truth answers), a string or a sequence
    of strings each; ``indices`` (B,), optional item ids. ``compute`` returns a scalar float64 tensor: the mean
    recall over every item seen.

    Args:
        kwargs: forwarded to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).

    Example:
        >>> metric = ROUGELRecall()
        >>> metric.update(["the cats were sitting"], ["the cat sat on the mat"])
        >>> round(metric.compute().item(), 4)
        0.3333
    """

    higher_is_better = True

    def update(self, preds: str | Sequence[str], target: str | Sequence[str], indices: Tensor | None = None) -> None:
        """Add a batch of (generation, answer) pairs."""
        preds = [preds] if isinstance(preds, str) else list(preds)
        target = [target] if isinstance(target, str) else list(target)
        self._append(
            torch.tensor(rouge_l_recall_batch(preds, target), dtype=torch.float64, device=self.device), indices
        )

    def compute(self) -> Tensor:
        """Mean ROUGE-L recall over all items."""
        return self._items()[1].mean()
