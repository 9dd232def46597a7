"""What a batch is, in one place: the label value that marks unscored tokens and the tensor dict of one batch part.

Everything else (losses, collators, metrics, modules, the evaluator) imports these two names from here, so a change
of convention cannot leave two copies disagreeing. Depends on torch only.
"""

from torch import Tensor
from typing_extensions import NotRequired, TypedDict

IGNORE_INDEX = -100
"""Label of prompt and padding tokens (PyTorch's ``CrossEntropyLoss`` default): such positions are never scored."""


class Batch(TypedDict):
    """One batch part: ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` on prompt and padding), each
    of shape (B, T), right-padded.

    Parts built from TOFU rows by the data modules' collators also say where each row comes from: ``index``, a (B,)
    long tensor of row indices in the split file, and ``question``, the B question strings. Forward passes never read
    them; the G-effect callback's instance ranking does (``example_ids``).
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    index: NotRequired[Tensor]
    question: NotRequired[list[str]]


__all__ = ["IGNORE_INDEX", "Batch"]
