"""TOFU evaluation datasets, their collator and loaders.

Each split becomes one dataset whose items hold every teacher-forced variant of a question (the answer, the
paraphrased answer, the perturbed answers) and the generation prompt, so that an evaluation step runs one forward per
(question, answer variant) and one batched generation. Teacher-forced parts are right-padded, generation prompts
left-padded (a decoder-only model continues from the last column).
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import EncodedPair, PromptFormat, encode_pair, encode_prompt
from lit_unlearn.data.tofu import load_tofu

EVAL_SPLITS: tuple[str, ...] = ("forget", "retain", "real_authors", "world_facts", "holdout")
"""Evaluation split names, in evaluation order. ``holdout`` (unseen authors) only feeds membership inference."""

GENERATION_SPLITS: frozenset[str] = frozenset({"forget", "retain", "real_authors", "world_facts"})
"""Splits with greedy generation and ROUGE."""

PARAPHRASED_SPLITS: frozenset[str] = frozenset({"forget", "retain"})
"""Splits whose truth ratio compares perturbed answers with the paraphrased answer (the others use the answer)."""

_FORGET_SPLIT = re.compile(r"forget(\d\d)")


def tofu_file_of(split: str, forget_split: str = "forget10") -> str:
    """The TOFU file (Hub config) behind an evaluation split, e.g. ``forget`` → ``forget10_perturbed``.

    Args:
        split: one of ``EVAL_SPLITS``.
        forget_split: ``forget01``, ``forget05`` or ``forget10``; picks the forget and holdout files.

    Returns:
        The file name without ``.json``.

    Raises:
        ValueError: on an unknown split or a ``forget_split`` other than ``forget01``/``forget05``/``forget10``.

    Example:
        >>> [tofu_file_of(split, "forget01") for split in EVAL_SPLITS]
        ['forget01_perturbed', 'retain_perturbed', 'real_authors_perturbed', 'world_facts_perturbed', 'holdout01']
    """
    match = _FORGET_SPLIT.fullmatch(forget_split)
    if match is None:
        raise ValueError(f"forget_split must be 'forget01', 'forget05' or 'forget10', got {forget_split!r}.")
    files = {
        "forget": f"{forget_split}_perturbed",
        "retain": "retain_perturbed",
        "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed",
        "holdout": f"holdout{match.group(1)}",
    }
    if split not in files:
        raise ValueError(f"Unknown TOFU evaluation split {split!r}; choose from {list(EVAL_SPLITS)}.")
    return files[split]


class TOFUEvalDataset(Dataset):
    """One TOFU evaluation split, tokenized on access.

    Item ``i`` is a dict: ``split``, ``index`` (the row number in the TOFU file), ``question``, ``answer``,
    ``answer_pair`` (teacher-forced question + answer), ``paraphrased_pair`` (forget/retain only),
    ``perturbed_pairs`` (one per perturbed answer; absent on holdout) and ``prompt_ids`` (generation input).

    ``rows`` keeps every row of the file (up to ``max_items``), so that ``rows[index]`` is the row of an item whatever
    subset ``row_indices`` selects; ``indices`` lists the rows the dataset iterates.

    Args:
        rows: the split's rows with Hub field names (from ``lit_unlearn.data.load_tofu``).
        split: evaluation split name, one of ``EVAL_SPLITS``.
        tokenizer: the model's tokenizer.
        prompt_format: see ``lit_unlearn.data.formatting.PromptFormat``.
        max_length: teacher-forced sequences are truncated on the right to this many tokens.
        max_items: keep only the first ``max_items`` rows (original TOFU: 300).
        row_indices: iterate only these rows (TOFU row numbers, kept as the items' ``index``), in increasing order,
            e.g. the held-out half of the forget set in the relearning attack; ``None``: every row. Applied after
            ``max_items``.

    Raises:
        ValueError: on an unknown split, no row to iterate, a row lacking a field its split needs, or a
            ``row_indices`` entry that is repeated or not a row of the (capped) split.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        split: str,
        tokenizer: PreTrainedTokenizerBase,
        prompt_format: PromptFormat = "auto",
        max_length: int = 512,
        max_items: int | None = None,
        row_indices: Sequence[int] | None = None,
    ) -> None:
        if split not in EVAL_SPLITS:
            raise ValueError(f"Unknown TOFU evaluation split {split!r}; choose from {list(EVAL_SPLITS)}.")
        self.rows = list(rows)[:max_items] if max_items is not None else list(rows)
        if not self.rows:
            raise ValueError(f"TOFU evaluation split {split!r} has no rows.")
        self.indices = list(range(len(self.rows))) if row_indices is None else sorted(row_indices)
        if row_indices is not None:
            bad = [
                i for i in self.indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.rows)
            ]
            repeated = sorted({i for i in self.indices if self.indices.count(i) > 1})
            if bad or repeated or not self.indices:
                raise ValueError(
                    f"row_indices of the {split!r} evaluation split must be distinct row numbers in "
                    f"0..{len(self.rows) - 1} (the split has {len(self.rows)} rows after max_items={max_items}); got "
                    f"{len(self.indices)} indices, out of range: {bad[:10]}, repeated: {repeated[:10]}."
                )
        self.split = split
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.max_length = max_length
        needed = ["question", "answer"]
        if split != "holdout":
            needed.append("perturbed_answer")
        if split in PARAPHRASED_SPLITS:
            needed.append("paraphrased_answer")
        for i, row in enumerate(self.rows):
            missing = [k for k in needed if k not in row]
            if missing:
                raise ValueError(
                    f"Row {i} of the {split!r} evaluation split lacks fields {missing}; it needs {needed} "
                    f"(load it from {tofu_file_of(split)!r}-style TOFU files)."
                )

    def __len__(self) -> int:
        return len(self.indices)

    def _pair(self, question: str, answer: str) -> EncodedPair:
        return encode_pair(self.tokenizer, question, answer, self.prompt_format, self.max_length)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        row = self.rows[index]
        question, answer = row["question"], row["answer"]
        item: dict[str, Any] = {
            "split": self.split,
            "index": index,
            "question": question,
            "answer": answer,
            "answer_pair": self._pair(question, answer),
        }
        if self.split in PARAPHRASED_SPLITS:
            item["paraphrased_pair"] = self._pair(question, row["paraphrased_answer"])
        if self.split != "holdout":
            # The original TOFU pairs every answer variant with the original question, never the paraphrased one.
            item["perturbed_pairs"] = [self._pair(question, a) for a in row["perturbed_answer"]]
        if self.split in GENERATION_SPLITS:
            item["prompt_ids"] = encode_prompt(self.tokenizer, question, self.prompt_format)
        return item


class TOFUEvalCollator:
    """Batches ``TOFUEvalDataset`` items.

    The batch holds ``split`` (str), ``index`` (B,), ``question`` / ``answer`` (lists of str), ``teacher_forced``: a
    dict of right-padded parts ``answer`` (B rows), ``paraphrased`` (B rows) and ``perturbed`` (B·K rows, item-major,
    K answers per item), each with ``input_ids``, ``attention_mask`` and ``labels``; and ``prompt``: left-padded
    ``input_ids``/``attention_mask`` for generation.

    Args:
        pad_token_id: id used for padding (the tokenizer's pad token, else its EOS).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _right(self, pairs: Sequence[EncodedPair]) -> dict[str, Tensor]:
        return pad_sequences(
            [p["input_ids"] for p in pairs], self.pad_token_id, "right", labels=[p["labels"] for p in pairs]
        )

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        splits = {item["split"] for item in items}
        if len(splits) != 1:
            raise ValueError(f"A TOFU evaluation batch must come from one split, got {sorted(splits)}.")
        batch: dict[str, Any] = {
            "split": items[0]["split"],
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "question": [item["question"] for item in items],
            "answer": [item["answer"] for item in items],
        }
        parts = {"answer": self._right([item["answer_pair"] for item in items])}
        if "paraphrased_pair" in items[0]:
            parts["paraphrased"] = self._right([item["paraphrased_pair"] for item in items])
        if "perturbed_pairs" in items[0]:
            counts = {len(item["perturbed_pairs"]) for item in items}
            if len(counts) != 1 or 0 in counts:
                raise ValueError(
                    f"Every item of a {batch['split']!r} batch needs the same, non-zero number of perturbed answers; "
                    f"got counts {sorted(counts)} (check the perturbed_answer lists of rows {batch['index'].tolist()})."
                )
            parts["perturbed"] = self._right([pair for item in items for pair in item["perturbed_pairs"]])
        batch["teacher_forced"] = parts
        if "prompt_ids" in items[0]:
            batch["prompt"] = pad_sequences([item["prompt_ids"] for item in items], self.pad_token_id, "left")
        return batch


def pad_token_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else EOS (padding is masked out, so any id works).

    Raises:
        ValueError: when the tokenizer has neither.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(f"The tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token; set one.")


def eval_dataloader(
    rows: Sequence[Mapping[str, Any]],
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat = "auto",
    batch_size: int = 16,
    max_length: int = 512,
    max_items: int | None = None,
    row_indices: Sequence[int] | None = None,
) -> DataLoader:
    """A sequential ``DataLoader`` over one evaluation split built from already loaded rows.

    Args:
        rows: the split's rows with Hub field names.
        split: evaluation split name, one of ``EVAL_SPLITS``.
        tokenizer: the model's tokenizer.
        prompt_format: see ``lit_unlearn.data.formatting.PromptFormat``.
        batch_size: questions per batch.
        max_length: truncation length of teacher-forced sequences.
        max_items: keep only the first ``max_items`` rows (the evaluation's ``EvalSettings.max_items``).
        row_indices: evaluate only these rows of the split (their TOFU row numbers stay the items' ``index``).

    Returns:
        A loader of ``TOFUEvalCollator`` batches, in row order.
    """
    dataset = TOFUEvalDataset(rows, split, tokenizer, prompt_format, max_length, max_items, row_indices)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=TOFUEvalCollator(pad_token_id_of(tokenizer))
    )


def tofu_eval_dataloaders(
    tokenizer: PreTrainedTokenizerBase,
    forget_split: str = "forget10",
    data_dir: str | None = None,
    prompt_format: PromptFormat = "auto",
    batch_size: int = 16,
    max_length: int = 512,
    max_items: int | None = None,
    splits: Sequence[str] | None = None,
) -> dict[str, DataLoader]:
    """The TOFU evaluation dataloaders, keyed by split name (a dict Lightning accepts from ``val_dataloader``).

    Args:
        tokenizer: the model's tokenizer.
        forget_split: ``forget01``, ``forget05`` or ``forget10``; also picks ``holdout01/05/10``.
        data_dir: folder of the TOFU files (else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub).
        prompt_format: see ``lit_unlearn.data.formatting.PromptFormat``.
        batch_size: questions per batch (each brings its paraphrased and perturbed variants along).
        max_length: truncation length of teacher-forced sequences.
        max_items: keep the first ``max_items`` rows of every split (original TOFU: 300); give the evaluation's
            ``EvalSettings.max_items``, which the evaluator enforces.
        splits: subset of ``EVAL_SPLITS`` (default: all five).

    Returns:
        One sequential loader per split, in ``splits`` order.

    Raises:
        ValueError: on an unknown split name.
    """
    chosen = list(EVAL_SPLITS if splits is None else splits)
    unknown = [s for s in chosen if s not in EVAL_SPLITS]
    if unknown:
        raise ValueError(f"Unknown TOFU evaluation splits {unknown}; choose from {list(EVAL_SPLITS)}.")
    return {
        split: eval_dataloader(
            load_tofu(tofu_file_of(split, forget_split), data_dir),
            split,
            tokenizer,
            prompt_format,
            batch_size,
            max_length,
            max_items,
        )
        for split in chosen
    }
