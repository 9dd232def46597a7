"""Tokenized TOFU question/answer datasets and the collators that batch them with right padding."""

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lit_unlearn.batch import Batch
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import EncodedPair, PromptFormat, encode_pair


class QAExample(EncodedPair):
    """An encoded pair that knows where it comes from: its row ``index`` in the split file and its ``question``."""

    index: int
    question: str


class QADataset(Dataset):
    """Question/answer rows encoded for teacher forcing (labels -100 on the prompt, answer + EOS kept).

    Every row is encoded when the dataset is built, so a row whose answer would be truncated away by
    ``max_length`` fails at setup, naming the row, instead of in the middle of an epoch. With ``indices`` the items
    are :class:`QAExample`: the encoding plus the row's index in its split file and its question, which the
    collators pass on (the G-effect callback ranks forget examples by them); without, plain encoded pairs.

    Args:
        rows: dicts with a ``question`` field and the ``answer_key`` field (e.g. from :func:`load_tofu`).
        tokenizer: the model's tokenizer.
        prompt_format: ``"auto"``, ``"chat"``, ``"qa"`` or ``"llama2"`` (see :mod:`lit_unlearn.data.formatting`).
        max_length: longest example in tokens; longer ones are cut on the right.
        answer_key: the field holding the answer to train on.
        row_names: one name per row for error messages (e.g. ``"forget10[17]"``); default ``"row {i}"``.
        indices: each row's index in its split file (e.g. the kept rows of a subset), for rows of one split.
    """

    def __init__(
        self,
        rows: Sequence[Mapping],
        tokenizer: PreTrainedTokenizerBase,
        prompt_format: PromptFormat = "auto",
        max_length: int = 512,
        answer_key: str = "answer",
        row_names: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        if row_names is not None and len(row_names) != len(rows):
            raise ValueError(f"row_names has {len(row_names)} names for {len(rows)} rows; give one name per row.")
        if indices is not None and len(indices) != len(rows):
            raise ValueError(f"indices has {len(indices)} entries for {len(rows)} rows; give one index per row.")
        self.rows = list(rows)
        self.row_names = list(row_names) if row_names is not None else [f"row {i}" for i in range(len(rows))]
        self.indices = list(indices) if indices is not None else None
        self.examples: list[EncodedPair | QAExample] = []
        for i, (row, name) in enumerate(zip(self.rows, self.row_names, strict=True)):
            try:
                pair = encode_pair(tokenizer, row["question"], row[answer_key], prompt_format, max_length)
            except ValueError as err:
                raise ValueError(f"Cannot encode {name}: {err}") from err
            if self.indices is not None:
                pair = QAExample(**pair, index=self.indices[i], question=row["question"])
            self.examples.append(pair)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedPair | QAExample:
        return self.examples[index]


class ZippedDataset(Dataset):
    """Several equally long datasets read in lockstep: item ``i`` is ``{name: dataset[i]}``.

    Used to pair each forget question with its refusal answer ("idk"): both encodings travel in one item,
    so any sampler or shuffle keeps them aligned by construction.

    Args:
        parts: name → dataset, all of the same length.
    """

    def __init__(self, parts: Mapping[str, Dataset]) -> None:
        lengths = {name: len(ds) for name, ds in parts.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"ZippedDataset needs at least one part and parts of equal length, got {lengths}.")
        self.parts = dict(parts)
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, EncodedPair]:
        return {name: ds[index] for name, ds in self.parts.items()}


class QACollator:
    """Batch :class:`QADataset` items: ``{input_ids, attention_mask, labels}`` (B, T) long tensors, right padded.

    Items that say where they come from (:class:`QAExample`: a :class:`QADataset` built with ``indices``) give the batch
    ``index``, a (B,) long tensor of their rows' indices in the split file, and ``question``, the list of their B
    questions. Forward passes never read them.

    Args:
        pad_token_id: id written into padded positions (their attention mask is 0, their labels -100).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[EncodedPair | QAExample]) -> Batch:
        padded = pad_sequences(
            [e["input_ids"] for e in examples], self.pad_token_id, side="right", labels=[e["labels"] for e in examples]
        )
        batch = Batch(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"])
        with_ids = ["index" in e for e in examples]
        if any(with_ids):
            if not all(with_ids):
                raise ValueError(
                    "QACollator got a batch mixing items with and without a row index; build every item with "
                    "QADataset (or give every item 'index' and 'question')."
                )
            batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
            batch["question"] = [e["question"] for e in examples]
        return batch


class PartsCollator:
    """Batch :class:`ZippedDataset` items: one right-padded ``{input_ids, attention_mask, labels}`` per part.

    Args:
        pad_token_id: id written into padded positions.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.collate = QACollator(pad_token_id)

    def __call__(self, items: Sequence[Mapping[str, EncodedPair | QAExample]]) -> dict[str, Batch]:
        return {name: self.collate([item[name] for item in items]) for name in items[0]}
