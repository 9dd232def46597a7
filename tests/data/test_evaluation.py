"""Evaluation datasets and collator: every answer variant encoded with ``encode_pair``, right padding for teacher
forcing, left padding for generation, item-major flattening of the perturbed answers."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lit_unlearn.data.evaluation import (
    TOFUEvalCollator,
    TOFUEvalDataset,
    eval_dataloader,
    tofu_eval_dataloaders,
    tofu_file_of,
)
from lit_unlearn.data.formatting import IGNORE_INDEX, encode_pair, encode_prompt


def read_rows(tofu_dir: Path, name: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of ``{name}.json``, parsed independently of ``lit_unlearn.data.load_tofu``."""
    with open(tofu_dir / f"{name}.json", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _unpad(row: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return row[mask.bool()].tolist()


def test_forget_batch_layout(tofu_dir: Path, tokenizer: AutoTokenizer) -> None:
    rows = read_rows(tofu_dir, "forget10_perturbed", 3)
    dataset = TOFUEvalDataset(rows, "forget", tokenizer)
    batch = TOFUEvalCollator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert batch["split"] == "forget"
    assert batch["index"].tolist() == [0, 1, 2]
    parts = batch["teacher_forced"]
    assert set(parts) == {"answer", "paraphrased", "perturbed"}
    assert parts["perturbed"]["input_ids"].shape[0] == 3 * 5
    for i, row in enumerate(rows):
        for part, answer, r in [
            ("answer", row["answer"], i),
            ("paraphrased", row["paraphrased_answer"], i),
            ("perturbed", row["perturbed_answer"][2], 5 * i + 2),  # item-major: item i, answer j at row 5i + j
        ]:
            expected = encode_pair(tokenizer, row["question"], answer)
            ids, mask, labels = (parts[part][k][r] for k in ("input_ids", "attention_mask", "labels"))
            assert mask[: len(expected["input_ids"])].all()
            assert not mask[len(expected["input_ids"]) :].any()
            assert _unpad(ids, mask) == expected["input_ids"]
            assert labels[mask.bool()].tolist() == expected["labels"]
            assert (labels[~mask.bool()] == IGNORE_INDEX).all()
        prompt = encode_prompt(tokenizer, row["question"])
        ids, mask = batch["prompt"]["input_ids"][i], batch["prompt"]["attention_mask"][i]
        assert mask[-len(prompt) :].all()
        assert not mask[: -len(prompt)].any()
        assert _unpad(ids, mask) == prompt


def test_utility_and_holdout_splits(tofu_dir: Path, tokenizer: AutoTokenizer) -> None:
    world = eval_dataloader(read_rows(tofu_dir, "world_facts_perturbed", 4), "world_facts", tokenizer, batch_size=4)
    batch = next(iter(world))
    assert set(batch["teacher_forced"]) == {"answer", "perturbed"}  # the answer itself is the truth ratio's base
    assert batch["teacher_forced"]["perturbed"]["input_ids"].shape[0] == 4 * 3
    holdout = eval_dataloader(read_rows(tofu_dir, "holdout10", 4), "holdout", tokenizer, batch_size=4)
    batch = next(iter(holdout))
    assert set(batch["teacher_forced"]) == {"answer"}
    assert "prompt" not in batch


def test_max_items_and_file_names(tofu_dir: Path, tokenizer: AutoTokenizer) -> None:
    rows = read_rows(tofu_dir, "retain_perturbed", 10)
    assert len(TOFUEvalDataset(rows, "retain", tokenizer, max_items=7)) == 7
    assert tofu_file_of("forget", "forget05") == "forget05_perturbed"
    assert tofu_file_of("holdout", "forget01") == "holdout01"
    with pytest.raises(ValueError, match="forget_split must be"):
        tofu_file_of("forget", "forget7")
    with pytest.raises(ValueError, match="lacks fields"):
        TOFUEvalDataset([{"question": "q", "answer": "a"}], "forget", tokenizer)


def test_tofu_eval_dataloaders_loads_every_split(tofu_dir: Path, tokenizer: AutoTokenizer) -> None:
    loaders = tofu_eval_dataloaders(tokenizer, "forget01", data_dir=str(tofu_dir), batch_size=8, max_items=300)
    assert list(loaders) == ["forget", "retain", "real_authors", "world_facts", "holdout"]
    sizes = {name: len(loader.dataset) for name, loader in loaders.items()}
    assert sizes == {"forget": 40, "retain": 300, "real_authors": 100, "world_facts": 117, "holdout": 40}
    with pytest.raises(ValueError, match="Unknown TOFU evaluation splits"):
        tofu_eval_dataloaders(tokenizer, splits=["forget", "test"])
