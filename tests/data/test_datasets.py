"""QADataset label masking (hand-checked on a real TOFU row), collators, ZippedDataset, PartsCombinedLoader."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from lit_unlearn.data import (
    IGNORE_INDEX,
    PartsCollator,
    PartsCombinedLoader,
    QACollator,
    QADataset,
    ZippedDataset,
    load_tofu,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_label_masking_on_a_real_tofu_row(tokenizer: AutoTokenizer) -> None:
    row = load_tofu("full")[1]  # "Are the details of Jaime Vasquez's birth documented?"
    example = QADataset([row], tokenizer, prompt_format="qa")[0]
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)

    # The prompt, built by hand: BOS, then "Question: {q}\nAnswer:" with no special tokens.
    prompt = [tokenizer.bos_token_id] + tokenizer(f"Question: {row['question']}\nAnswer:", add_special_tokens=False)[
        "input_ids"
    ]
    assert ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)

    # Every answer position is supervised, with the input token itself (the model shifts), and ends in EOS.
    answer = labels[len(prompt) :]
    assert IGNORE_INDEX not in answer
    assert answer == ids[len(prompt) :]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer) == " " + row["answer"] + tokenizer.eos_token
    assert tokenizer.decode(ids) == f"<s>Question: {row['question']}\nAnswer: {row['answer']}</s>"


def test_truncated_answer_raises_naming_the_row(tokenizer: AutoTokenizer) -> None:
    rows = load_tofu("forget01")[:3]
    rows[2] = {"question": " ".join([rows[2]["question"]] * 6), "answer": rows[2]["answer"]}  # prompt > 200 tokens
    names = [f"forget01[{i}]" for i in range(3)]
    QADataset(rows[:2], tokenizer, "qa", max_length=200, row_names=names[:2])  # the first two fit
    with pytest.raises(ValueError, match=r"Cannot encode forget01\[2\]: No answer token is left.*max_length=200"):
        QADataset(rows, tokenizer, "qa", max_length=200, row_names=names)


def test_partly_truncated_answer_keeps_its_first_tokens(tokenizer: AutoTokenizer) -> None:
    row = load_tofu("forget01")[0]
    full = QADataset([row], tokenizer, "qa")[0]
    short = QADataset([row], tokenizer, "qa", max_length=len(full["input_ids"]) - 5)[0]
    assert short["input_ids"] == full["input_ids"][:-5]
    assert short["labels"] == full["labels"][:-5]


def test_collator_pads_on_the_right() -> None:
    examples = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]},
    ]
    batch = QACollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_parts_collator_pads_each_part_separately() -> None:
    items = [
        {"forget": {"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4]}, "idk": {"input_ids": [1], "labels": [1]}},
        {"forget": {"input_ids": [1, 2], "labels": [-100, 2]}, "idk": {"input_ids": [1, 2], "labels": [-100, 2]}},
    ]
    batch = PartsCollator(pad_token_id=0)(items)
    assert batch["forget"]["input_ids"].shape == (2, 4)
    assert batch["idk"]["input_ids"].tolist() == [[1, 0], [1, 2]]


def test_zipped_dataset_reads_parts_in_lockstep() -> None:
    zipped = ZippedDataset({"a": [10, 11], "b": [20, 21]})
    assert len(zipped) == 2
    assert zipped[1] == {"a": 11, "b": 21}
    with pytest.raises(ValueError, match="equal length"):
        ZippedDataset({"a": [1], "b": [1, 2]})


def test_parts_combined_loader_lifts_nested_parts() -> None:
    nested = DataLoader(ZippedDataset({"forget": list(range(6)), "idk": list(range(100, 106))}), batch_size=2)
    flat = DataLoader(list(range(50, 60)), batch_size=2)
    loader = PartsCombinedLoader({"forget": nested, "retain": flat}, mode="min_size", nested=("forget",))
    batches = [batch for batch, _, _ in loader]
    assert len(batches) == 3  # min_size: the shorter (forget) loader ends the epoch
    assert set(batches[0]) == {"forget", "idk", "retain"}
    assert batches[2]["forget"].tolist() == [4, 5]
    assert batches[2]["idk"].tolist() == [104, 105]
    assert batches[2]["retain"].tolist() == [54, 55]


def test_parts_combined_loader_rejects_clashing_parts_and_sequential_mode() -> None:
    nested = DataLoader(ZippedDataset({"retain": [1, 2]}), batch_size=2)
    loader = PartsCombinedLoader({"forget": nested, "retain": DataLoader([3, 4])}, nested=("forget",))
    with pytest.raises(ValueError, match="part 'retain'"):
        next(iter(loader))
    with pytest.raises(ValueError, match="min_size"):
        PartsCombinedLoader({"a": DataLoader([1])}, mode="sequential")
