"""Dynamic padding: right padding for teacher forcing, left padding for generation."""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lit_unlearn.batch import IGNORE_INDEX


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    side: Literal["right", "left"] = "right",
    labels: Sequence[Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """Pad token id lists to the longest one.

    Returns ``input_ids`` and ``attention_mask`` of shape (B, T), plus ``labels`` (padded with -100)
    when given. The attention mask comes from the lengths, never from ``input_ids != pad``: with pad = EOS
    (or Llama-3's ``<|eot_id|>``) the latter would also mask real tokens.
    """
    if not sequences:
        raise ValueError("pad_sequences got an empty batch.")
    width = max(len(s) for s in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    out_labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for i, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        input_ids[i, cols] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, cols] = 1
        if out_labels is not None:
            out_labels[i, cols] = torch.tensor(labels[i], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if out_labels is not None:
        out["labels"] = out_labels
    return out


def pad_to_width(tensor: Tensor, width: int, value: int) -> Tensor:
    """Right-pad a (B, T) tensor with ``value`` to (B, width)."""
    missing = width - tensor.shape[1]
    if missing < 0:
        raise ValueError(f"Cannot pad a tensor of width {tensor.shape[1]} down to {width}.")
    return torch.nn.functional.pad(tensor, (0, missing), value=value)
