"""Length-normalised answer probability (TOFU §2.5), from average answer NLLs.

``P(y) = exp(−avg_loss(y))`` where ``avg_loss`` is the mean token NLL over the answer tokens including EOS, i.e. the
geometric mean of the per-token probabilities. On real authors / world facts TOFU reports the option-normalised
``P(a) / (P(a) + Σ_j P(pert_j))``.
"""

import torch
from torch import Tensor


def _check_nll_shapes(nll: Tensor, perturbed_nll: Tensor | None) -> None:
    if nll.ndim != 1:
        raise ValueError(f"Expected `nll` of shape (B,), one average NLL per item, got shape {tuple(nll.shape)}.")
    if perturbed_nll is not None and (perturbed_nll.ndim != 2 or perturbed_nll.shape[0] != nll.shape[0]):
        raise ValueError(
            f"Expected `perturbed_nll` of shape (B, K) with B={nll.shape[0]} matching `nll`, "
            f"got shape {tuple(perturbed_nll.shape)}."
        )


def answer_probabilities(nll: Tensor, perturbed_nll: Tensor | None = None) -> Tensor:
    """Per-item probabilities: ``exp(−nll)``, or option-normalised when ``perturbed_nll`` is given.

    Args:
        nll: average NLL of the correct answer, shape (B,).
        perturbed_nll: average NLLs of the K wrong answers, shape (B, K); ``None`` for the plain probability.

    Returns:
        Shape (B,), float64.

    Raises:
        ValueError: on shapes other than (B,) and (B, K).

    Example:
        >>> answer_probabilities(torch.tensor([0.0]), torch.tensor([[0.0, 0.0, 0.0]])).item()  # 1 / (1 + 3)
        0.25
    """
    _check_nll_shapes(nll, perturbed_nll)
    p_true = torch.exp(-nll.double())
    if perturbed_nll is None:
        return p_true
    p_wrong = torch.exp(-perturbed_nll.double()).sum(dim=-1)
    return p_true / (p_true + p_wrong)


def answer_probability(nll: Tensor, perturbed_nll: Tensor | None = None) -> Tensor:
    """Mean length-normalised answer probability (plain, or option-normalised with ``perturbed_nll``).

    Args:
        nll: average NLL of the correct answer per item, shape (B,).
        perturbed_nll: average NLLs of the wrong answers, shape (B, K), for ``P(a) / (P(a) + Σ_j P(pert_j))``.

    Returns:
        A scalar float64 tensor, the mean of :func:`answer_probabilities` (NaN without items).

    Example:
        >>> answer_probability(torch.tensor([0.0, 1.0])).item()  # (1 + e^-1) / 2
        0.6839397205857212
    """
    return answer_probabilities(nll, perturbed_nll).mean()
