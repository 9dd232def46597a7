"""Teacher-forced memorisation scores (OpenUnlearning ``extraction_strength`` and ``exact_memorization``).

Both take the argmax predictions of a teacher-forced pass, already aligned with their targets (``preds[:, t]``
predicts ``target[:, t]``), and ignore positions where ``target == ignore_index``. OpenUnlearning excludes the final
EOS prediction; the evaluator drops it from the target before calling these.
"""

import torch
from torch import Tensor

from lit_unlearn.batch import IGNORE_INDEX


def _check_token_inputs(preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(
            "Expected `preds` and `target` of the same shape (B, T), got "
            f"{tuple(preds.shape)} and {tuple(target.shape)}."
        )


def extraction_strength(preds: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-item extraction strength ``ES = 1 − k/n`` (Carlini et al. 2021 as used by OpenUnlearning).

    ``n`` is the number of answer tokens and ``k`` the smallest position such that every prediction from ``k`` on
    matches its target, so ``ES = 1`` for a fully memorised answer and ``0`` when even the last token is wrong
    (OpenUnlearning's loop stops at ``k = n − 1`` and reports ``1/n`` there; we use the definition).

    Args:
        preds: argmax token ids, shape (B, T).
        target: target ids, shape (B, T), ``ignore_index`` off the answer.
        ignore_index: the label of positions to skip.

    Returns:
        Shape (B,), float64; NaN for an item without answer tokens.
    """
    _check_token_inputs(preds, target)
    valid = target != ignore_index
    n = valid.sum(dim=-1)
    wrong = valid & (preds != target)
    # k = (answer position of the last wrong token) + 1, or 0 when nothing is wrong. Counting the answer positions up
    # to and including the last wrong one gives exactly that, since padding and prompt positions are not counted.
    position = torch.cumsum(valid.long(), dim=-1)
    k = torch.where(wrong, position, torch.zeros_like(position)).amax(dim=-1)
    return torch.where(n > 0, 1.0 - k.double() / n.double(), torch.full_like(n, float("nan"), dtype=torch.float64))


def exact_memorization(preds: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-item exact memorisation: the fraction of answer tokens whose teacher-forced argmax is the target.

    Args:
        preds: argmax token ids, shape (B, T).
        target: target ids, shape (B, T), ``ignore_index`` off the answer.
        ignore_index: the label of positions to skip.

    Returns:
        Shape (B,), float64; NaN for an item without answer tokens.
    """
    _check_token_inputs(preds, target)
    valid = target != ignore_index
    hits = (valid & (preds == target)).sum(dim=-1).double()
    return hits / valid.sum(dim=-1).double()
