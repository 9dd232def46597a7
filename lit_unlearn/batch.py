"""What a batch is, in one place: the label value that marks unscored tokens and the tensor dict of one batch part.

Everything else (losses, collators, metrics, modules, the evaluator) imports these two names from here, so a change
of convention cannot leave two copies disagreeing. Depends on torch only.
"""

from collections.abc import Mapping

from torch import Tensor

IGNORE_INDEX = -100
"""Label of prompt and padding tokens (PyTorch's ``CrossEntropyLoss`` default): such positions are never scored."""

Batch = Mapping[str, Tensor]
"""One batch part: ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` on prompt and padding), each of
shape (B, T), right-padded."""

__all__ = ["IGNORE_INDEX", "Batch"]
