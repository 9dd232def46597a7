"""Batch parts of real TOFU rows for the module tests."""

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair


def tofu_part(tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """One padded batch part of (question, answer) rows, QA-formatted, at most 128 tokens each."""
    encoded = [encode_pair(tokenizer, q, a, "qa", 128) for q, a in rows]
    return pad_sequences(
        [e["input_ids"] for e in encoded], tokenizer.pad_token_id, labels=[e["labels"] for e in encoded]
    )


def tofu_rows(tofu_dir: Path, name: str, n: int) -> list[tuple[str, str]]:
    """The first ``n`` (question, answer) rows of TOFU split ``name``."""
    with open(tofu_dir / f"{name}.json") as f:
        rows = [json.loads(line) for line in f]
    return [(r["question"], r["answer"]) for r in rows[:n]]
