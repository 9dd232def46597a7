"""``TOFUFinetuneDataModule``: the question/answer pairs a target or retain ("oracle") model is fine-tuned on."""

from typing import Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_unlearn.data.datasets import QACollator, QADataset
from lit_unlearn.data.formatting import PromptFormat
from lit_unlearn.data.loaders import seeded_loader
from lit_unlearn.data.subsets import FULL_OFFSETS, author_of, check_authors, forget_authors, full_indices
from lit_unlearn.data.tofu import NUM_TOFU_AUTHORS, TOFU_SPLITS, check_local_tofu_files, load_tofu, resolve_tofu_file
from lit_unlearn.models.hub import load_tokenizer

AuthorSplit = Literal["full", "retain99", "retain95", "retain90", "forget01", "forget05", "forget10"]
"""Splits that are contiguous blocks of ``full``, so their rows map to author indices."""
ForgetSplit = Literal["forget01", "forget05", "forget10"]


def _positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class TOFUFinetuneDataModule(LightningDataModule):
    """TOFU question/answer pairs for supervised fine-tuning (loss on answer tokens only).

    The training set is built in three steps: the rows of ``split``; if any of ``authors``, ``num_authors``,
    ``include_forget_authors`` is given, only the rows of the union of those authors; minus the authors of
    ``exclude_split``; then every row of each of ``extra_splits`` appended. Authors are indices 0..199 in the
    order of ``full`` (20 rows each); the forget authors of ``forgetXX`` are the last 2/10/20.

    Typical settings:

    * full-scale target model: ``split="full"``; full-scale retain model: ``split="retain90"``
      (or ``split="full", exclude_split="forget10"``).
    * tiny target model: ``num_authors=20, include_forget_authors="forget01",
      extra_splits=["real_authors_perturbed", "world_facts_perturbed"]`` (the world-knowledge QA stands in for
      pre-training); tiny retain model: the same plus ``exclude_split="forget01"``.

    Args:
        tokenizer_name_or_path: Hub id or local directory of the tokenizer (normally the model's).
        split: The TOFU split to start from: ``full``, ``retain99/95/90`` or ``forget01/05/10``.
        authors: Keep only these authors (indices 0..199 in ``full`` order).
        num_authors: Keep only the first N authors of ``full`` (united with ``authors``).
        include_forget_authors: Also keep the authors of this forget split (united with the above), e.g.
            ``forget01`` adds the last 2 authors to a ``num_authors`` subset.
        exclude_split: Drop the authors of this split (applied last, so it wins over the options above), e.g.
            ``forget01`` to build the retain model of a subset.
        extra_splits: Whole TOFU splits appended to the training set, e.g.
            ``["real_authors_perturbed", "world_facts_perturbed"]`` as world-knowledge QA.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the validation loader (the training pairs in order).
        max_length: Longest example in tokens; a pair whose answer would be cut away entirely raises at setup.
        prompt_format: ``auto`` (chat template when the tokenizer has one, else ``qa``), ``chat``, ``qa``
            (``Question: ...\\nAnswer: ...``) or ``llama2`` (``[INST] ... [/INST]``).
        num_workers: DataLoader worker processes.
        seed: Seed of the training shuffle (independent of the global RNG). Under DDP, Lightning swaps the
            sampler for a ``DistributedSampler`` seeded by ``seed_everything`` instead.
        data_dir: Folder holding TOFU's ``{split}.json`` files; ``None``: ``$LIT_UNLEARN_TOFU_DIR``, else the
            Hub dataset ``locuslab/TOFU``.
    """

    def __init__(
        self,
        tokenizer_name_or_path: str,
        split: AuthorSplit = "full",
        authors: list[int] | None = None,
        num_authors: int | None = None,
        include_forget_authors: ForgetSplit | None = None,
        exclude_split: AuthorSplit | None = None,
        extra_splits: list[str] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        max_length: int = 512,
        prompt_format: PromptFormat = "auto",
        num_workers: int = 0,
        seed: int = 0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        if split not in FULL_OFFSETS:
            raise ValueError(f"split={split!r} is not a block of TOFU's full split; use one of {list(FULL_OFFSETS)}.")
        if exclude_split is not None and exclude_split not in FULL_OFFSETS:
            raise ValueError(f"exclude_split={exclude_split!r} must be one of {list(FULL_OFFSETS)} or None.")
        if include_forget_authors is not None:
            forget_authors(include_forget_authors)  # validates the name
        if authors is not None:
            check_authors(authors, "authors")
        if num_authors is not None and (
            isinstance(num_authors, bool)
            or not isinstance(num_authors, int)
            or not 1 <= num_authors <= NUM_TOFU_AUTHORS
        ):
            raise ValueError(f"num_authors must be an integer in 1..{NUM_TOFU_AUTHORS} or None, got {num_authors!r}.")
        for extra in extra_splits or []:
            if extra not in TOFU_SPLITS:
                raise ValueError(f"extra_splits: unknown TOFU split {extra!r}. Valid splits: {', '.join(TOFU_SPLITS)}.")
        for value, name in (
            (batch_size, "batch_size"),
            (eval_batch_size, "eval_batch_size"),
            (max_length, "max_length"),
        ):
            _positive(value, name)
        self.save_hyperparameters()
        check_local_tofu_files(self.tofu_splits(), data_dir)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_dataset: QADataset | None = None

    def _selecting(self) -> bool:
        hp = self.hparams
        return hp.authors is not None or hp.num_authors is not None or hp.include_forget_authors is not None

    def tofu_splits(self) -> set[str]:
        """The TOFU files this data module reads: the training splits, the excluded one, ``full`` to select by."""
        hp = self.hparams
        splits = {hp.split, *(hp.extra_splits or [])}
        if hp.exclude_split is not None:
            splits.add(hp.exclude_split)
        if self._selecting() or hp.exclude_split is not None:
            splits.add("full")
        return splits

    def prepare_data(self) -> None:
        """Download the needed TOFU files and the tokenizer into the Hugging Face cache (once per node)."""
        for split in sorted(self.tofu_splits()):
            resolve_tofu_file(split, self.hparams.data_dir)
        load_tokenizer(self.hparams.tokenizer_name_or_path)

    def training_rows(self) -> tuple[list[dict], list[str]]:
        """The training rows and a name for each (``"full[17]"``: row 17 of ``full.json``), in file order.

        Raises:
            ValueError: a requested author is not in ``split``, or the selection leaves no rows.
        """
        hp = self.hparams
        rows = load_tofu(hp.split, hp.data_dir)
        names = [f"{hp.split}[{i}]" for i in range(len(rows))]
        if self._selecting() or hp.exclude_split is not None:
            full_rows = rows if hp.split == "full" else load_tofu("full", hp.data_dir)
            ids = full_indices(hp.split, rows, full_rows)
            present = {author_of(i) for i in ids}
            keep = present
            if self._selecting():
                wanted = set(hp.authors or []) | set(range(hp.num_authors or 0))
                if hp.include_forget_authors is not None:
                    wanted |= set(forget_authors(hp.include_forget_authors))
                missing = sorted(wanted - present)
                if missing:
                    raise ValueError(
                        f"Authors {missing} are not in split {hp.split!r} (it holds authors {min(present)}.."
                        f"{max(present)}); start from split='full' or drop them from the selection."
                    )
                keep = wanted
            if hp.exclude_split is not None:
                excluded_rows = load_tofu(hp.exclude_split, hp.data_dir)
                keep = keep - {author_of(i) for i in full_indices(hp.exclude_split, excluded_rows, full_rows)}
            kept = [pos for pos, i in enumerate(ids) if author_of(i) in keep]
            rows, names = [rows[pos] for pos in kept], [names[pos] for pos in kept]
        if not rows:
            raise ValueError(
                f"The selection (split={hp.split!r}, authors={hp.authors}, num_authors={hp.num_authors}, "
                f"include_forget_authors={hp.include_forget_authors!r}, exclude_split={hp.exclude_split!r}) "
                "leaves no training row; keep at least one author outside exclude_split."
            )
        for extra in hp.extra_splits or []:
            extra_rows = load_tofu(extra, hp.data_dir)
            rows += extra_rows
            names += [f"{extra}[{i}]" for i in range(len(extra_rows))]
        return rows, names

    def setup(self, stage: str) -> None:
        """Load the tokenizer and encode the training pairs (once, whatever the stage)."""
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        if self.train_dataset is None:
            rows, names = self.training_rows()
            self.train_dataset = QADataset(rows, self.tokenizer, hp.prompt_format, hp.max_length, row_names=names)

    def _require_setup(self) -> QADataset:
        if self.train_dataset is None or self.tokenizer is None:
            raise RuntimeError("TOFUFinetuneDataModule: call setup() (the Trainer does) before asking for a loader.")
        return self.train_dataset

    def train_dataloader(self) -> DataLoader:
        """The training pairs, shuffled with a permutation that depends only on ``seed`` and the epoch."""
        dataset = self._require_setup()
        collate = QACollator(self.tokenizer.pad_token_id)
        hp = self.hparams
        return seeded_loader(dataset, hp.batch_size, collate, shuffle=True, seed=hp.seed, num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        """The training pairs in order: fine-tuning on TOFU aims at memorisation, so this measures it."""
        dataset = self._require_setup()
        collate = QACollator(self.tokenizer.pad_token_id)
        hp = self.hparams
        return seeded_loader(dataset, hp.eval_batch_size, collate, shuffle=False, num_workers=hp.num_workers)
