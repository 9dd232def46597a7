"""``AnswerProbability``: mean length-normalised answer probability (plain or option-normalised)."""

from typing import Any

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lit_unlearn.metrics.functional.probability import _answer_probability_compute, _answer_probability_update


class AnswerProbability(Metric):
    """Mean ``P(a) = exp(−avg_loss(a))`` over items, or ``P(a) / (P(a) + Σ_j P(pert_j))`` with ``normalized=True``
    (TOFU's probability on real authors / world facts).

    Inputs of ``update``: ``nll`` (B,), the average answer NLL per item (mean token NLL over the answer and EOS);
    ``perturbed_nll`` (B, K), the average NLLs of the wrong answers (required when ``normalized``).
    ``compute`` returns a scalar float64 tensor. Per-item probabilities are kept (``probabilities``).

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

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    probabilities: list[Tensor]

    def __init__(self, normalized: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalized = normalized
        self.add_state("probabilities", default=[], dist_reduce_fx="cat")

    def update(self, nll: Tensor, perturbed_nll: Tensor | None = None) -> None:
        """Add a batch of items."""
        if self.normalized and perturbed_nll is None:
            raise ValueError("AnswerProbability(normalized=True).update needs `perturbed_nll` of shape (B, K).")
        self.probabilities.append(_answer_probability_update(nll, perturbed_nll if self.normalized else None))

    def compute(self) -> Tensor:
        """Mean probability over all items."""
        return _answer_probability_compute(dim_zero_cat(self.probabilities))
