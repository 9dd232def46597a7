"""``TruthRatio``: TOFU's truth ratio with per-item values kept (forget quality needs them)."""

from typing import Any

from torch import Tensor

from lit_unlearn.metrics.functional.truth_ratio import TruthRatioAggregation, aggregate_truth_ratios, truth_ratios
from lit_unlearn.metrics.item_metric import ItemMetric


class TruthRatio(ItemMetric):
    """Aggregated truth ratio ``R = P_pert / P_correct`` (TOFU; see ``lit_unlearn.metrics.functional.truth_ratio``).

    Inputs of ``update``: ``correct_nll`` (B,), the average NLL of the paraphrased (forget/retain) or original (real
    authors, world facts) answer; ``perturbed_nll`` (B, K), the average NLLs of the perturbed answers; ``indices``
    (B,), optional item ids (each id counts once). The metric takes NLLs, not logits: it cannot run the two forwards
    itself, and a model has no place in a metric.

    ``compute`` returns ``mean min(R, 1/R)`` (``closer_to_1_better``, forget set) or ``mean max(0, 1 − R)``
    (``true_better``, the others). ``ratios()`` returns the per-item ``R`` (synchronised), the input of
    ``forget_quality``.

    Args:
        aggregation: ``"closer_to_1_better"`` or ``"true_better"``.
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = TruthRatio("true_better")
        >>> metric.update(torch.tensor([1.0]), torch.tensor([[1.0, 3.0]]))
        >>> round(metric.compute().item(), 4)
        0.6321
    """

    higher_is_better = True

    def __init__(self, aggregation: TruthRatioAggregation = "true_better", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if aggregation not in ("closer_to_1_better", "true_better"):
            raise ValueError(
                f"Unknown truth-ratio aggregation {aggregation!r}; use 'closer_to_1_better' (forget set) "
                "or 'true_better' (retain, real authors, world facts)."
            )
        self.aggregation = aggregation

    def update(self, correct_nll: Tensor, perturbed_nll: Tensor, indices: Tensor | None = None) -> None:
        """Add a batch of items."""
        self._append(truth_ratios(correct_nll, perturbed_nll), indices)

    def compute(self) -> Tensor:
        """The aggregated truth ratio."""
        return aggregate_truth_ratios(self._items()[1], self.aggregation)

    def ratios(self) -> Tensor:
        """Per-item truth ratios ``R`` of every item seen, synchronised across processes, shape (N,)."""
        return self.per_item()[1]
