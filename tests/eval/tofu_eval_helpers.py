"""Helpers of the evaluation tests: TOFU rows read straight from the JSON Lines files, loaders over a few rows."""

import json
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_unlearn.data.evaluation import EVAL_SPLITS, eval_dataloader, tofu_file_of


def read_rows(tofu_dir: Path, name: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of ``{name}.json``, parsed independently of ``lit_unlearn.data.load_tofu``."""
    rows = []
    with open(tofu_dir / f"{name}.json", encoding="utf-8") as f:
        for line in f:
            if len(rows) == limit:
                break
            rows.append(json.loads(line))
    return rows


def small_loaders(
    tofu_dir: Path, tokenizer: PreTrainedTokenizerBase, items: int = 4, batch_size: int = 3
) -> dict[str, DataLoader]:
    """All five evaluation splits over their first ``items`` rows (forget10 / holdout10)."""
    return {
        split: eval_dataloader(read_rows(tofu_dir, tofu_file_of(split), items), split, tokenizer, batch_size=batch_size)
        for split in EVAL_SPLITS
    }
