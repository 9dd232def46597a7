"""``TOFUUnlearnDataModule``: paired forget/retain(/idk) batches for unlearning, TOFU evaluation sets for eval."""

import math
import random
from importlib import resources
from typing import Literal, NamedTuple

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset
from transformers import PreTrainedTokenizerBase

from lit_unlearn.data.datasets import PartsCollator, QACollator, QADataset, ZippedDataset
from lit_unlearn.data.evaluation import EVAL_SPLITS, tofu_eval_dataloaders, tofu_file_of
from lit_unlearn.data.formatting import PromptFormat
from lit_unlearn.data.loaders import PartsCombinedLoader, seeded_loader
from lit_unlearn.data.ranking import SubsetMode, check_subset_options, select_subset
from lit_unlearn.data.subsets import FORGET_AUTHORS, RETAIN_OF_FORGET, author_of, forget_authors, full_indices
from lit_unlearn.data.tofu import NUM_TOFU_AUTHORS, check_local_tofu_files, load_tofu, resolve_tofu_file
from lit_unlearn.models.hub import load_tokenizer

ForgetSplit = Literal["forget01", "forget05", "forget10"]
RetainSplit = Literal["retain99", "retain95", "retain90"]

RETAIN_EVAL_SPLIT = "retain_perturbed"
"""TOFU's retain evaluation set: the first 400 rows of ``full`` with paraphrased and perturbed answers."""


class SplitRows(NamedTuple):
    """Rows of a TOFU split chosen for training, in file order.

    Args:
        rows: The rows (``question``, ``answer``, ...).
        names: One name per row for error messages, e.g. ``"forget10[3]"``.
        indices: Each row's index in the split file.
    """

    rows: list[dict]
    names: list[str]
    indices: list[int]


def idk_answers() -> list[str]:
    """The refusal answers shipped in ``lit_unlearn/data/idk_answers.txt``, one per line."""
    text = resources.files("lit_unlearn.data").joinpath("idk_answers.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class TOFUUnlearnDataModule(LightningDataModule):
    """Forget and retain question/answer pairs for unlearning on TOFU, and the TOFU evaluation sets.

    Each training batch is ``{"forget": b, "retain": b}`` (plus ``"idk"`` with ``with_idk``), every part a dict
    of (B, T) long tensors ``input_ids``, ``attention_mask``, ``labels`` (right padded; labels -100 on prompt
    and padding). An epoch is one pass over the shuffled forget set; each forget batch comes with a batch of
    retain pairs from a seeded shuffle of the retain pool (cycled when the pool is smaller than the forget set).

    At tiny scale (``num_authors``) the retain pool keeps only its first N authors. With
    ``hold_out_retain_eval=True`` those start after the 20 held-out authors, so a tiny model fine-tuned on the
    first 20 authors needs ``hold_out_retain_eval=False`` to regularise on authors it knows.

    Every forget (and idk) part carries ``index``, each row's index in the forget split file, and ``question``: the
    unlearning modules name their forget examples by them for the G-effect callback's instance rows and ranking.

    Subset unlearning (the G-effect paper's instance-ranking experiment): with ``subset`` and ``subset_fraction``
    only ``floor(subset_fraction · N)`` of the N forget rows are unlearned (the idk part keeps the same rows, with the
    refusals they get in the whole split). ``"top"`` keeps the rows with the LARGEST ``ranking_column`` values of
    ``ranking_file`` (sorted by value, descending), ``"bottom"`` the SMALLEST (ascending), ties broken by the smaller
    row index; ``"random"`` draws them uniformly with ``subset_seed``, ignoring any ranking values (the control). The
    ranking is the ``g_effect_ranking.csv`` of ``GEffectCallback(per_instance="objective")`` on this forget split;
    by ``g_effect_retain`` (the default column), negative means the example's unlearning raises the retain risk
    (collateral damage), so ``"bottom"`` keeps the most damaging examples and ``"top"`` the most benign ones; by
    ``g_effect_forget``, more negative means more removal, so ``"bottom"`` keeps the examples that unlearn hardest.
    See :mod:`lit_unlearn.data.ranking`.

    Args:
        tokenizer_name_or_path: Hub id or local directory of the tokenizer (normally the model's).
        forget_split: The forget set: ``forget01``, ``forget05`` or ``forget10`` (the last 2/10/20 authors).
        retain_split: The retain pool; ``None`` derives it (forget01 → retain99, forget05 → retain95,
            forget10 → retain90).
        hold_out_retain_eval: Drop the 400 ``retain_perturbed`` rows (the first 20 authors, used to evaluate
            retained knowledge) from the retain pool, as the paper's code does; ``False`` keeps them, as
            OpenUnlearning does.
        num_authors: Keep only the first N authors of the retain pool (tiny scale); ``None`` keeps all.
        with_idk: Add an ``"idk"`` part: the forget questions, in the same order as the ``"forget"`` part, each
            answered by a refusal drawn (seeded, once per question) from ``lit_unlearn/data/idk_answers.txt``.
        batch_size: Forget (and retain, and idk) pairs per training batch.
        eval_batch_size: Questions per evaluation batch.
        max_length: Longest example in tokens; a pair whose answer would be cut away entirely raises at setup.
        prompt_format: ``auto`` (chat template when the tokenizer has one, else ``qa``), ``chat``, ``qa``
            (``Question: ...\\nAnswer: ...``) or ``llama2`` (``[INST] ... [/INST]``).
        num_workers: DataLoader worker processes.
        seed: Seed of the forget and retain shuffles and of the refusal draws (independent of the global RNG).
            Under DDP, Lightning swaps the samplers for ``DistributedSampler`` seeded by ``seed_everything``;
            the forget/idk alignment and the retain cycling hold there too.
        data_dir: Folder holding TOFU's ``{split}.json`` files; ``None``: ``$LIT_UNLEARN_TOFU_DIR``, else the
            Hub dataset ``locuslab/TOFU``.
        eval_max_items: The evaluation loaders hold only the first N rows of each split (original TOFU: 300);
            ``None``: all rows (OpenUnlearning). On the command line it is set from ``model.evaluation.max_items``
            (the one evaluation cap, linked by ``LitUnlearnCLI``); in Python, give it the model's
            ``EvalSettings.max_items``, or the evaluator stops at the first row beyond its cap.
        ranking_file: A ``g_effect_ranking.csv`` of ``forget_split`` to select ``"top"``/``"bottom"`` rows by; checked
            against the split (every row ranked once, questions matching) also for ``"random"``.
        ranking_column: The ranking's column to sort by, ``g_effect_retain`` (default) or ``g_effect_forget``.
        subset: ``"top"``, ``"bottom"`` or ``"random"`` (see above); ``None`` unlearns the whole forget split.
        subset_fraction: The fraction of the forget split to unlearn, in (0, 1] (needs ``subset``).
        subset_seed: Seed of the ``"random"`` subset.
    """

    def __init__(
        self,
        tokenizer_name_or_path: str,
        forget_split: ForgetSplit = "forget10",
        retain_split: RetainSplit | None = None,
        hold_out_retain_eval: bool = True,
        num_authors: int | None = None,
        with_idk: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_length: int = 512,
        prompt_format: PromptFormat = "auto",
        num_workers: int = 0,
        seed: int = 0,
        data_dir: str | None = None,
        eval_max_items: int | None = None,
        ranking_file: str | None = None,
        ranking_column: str = "g_effect_retain",
        subset: SubsetMode | None = None,
        subset_fraction: float | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__()
        check_subset_options(ranking_file, ranking_column, subset, subset_fraction)
        if forget_split not in FORGET_AUTHORS:
            raise ValueError(f"forget_split={forget_split!r}: choose one of {list(FORGET_AUTHORS)}.")
        if retain_split is not None and retain_split not in RETAIN_OF_FORGET.values():
            raise ValueError(f"retain_split={retain_split!r}: choose one of {list(RETAIN_OF_FORGET.values())} or None.")
        if num_authors is not None and (
            isinstance(num_authors, bool)
            or not isinstance(num_authors, int)
            or not 1 <= num_authors <= NUM_TOFU_AUTHORS
        ):
            raise ValueError(f"num_authors must be an integer in 1..{NUM_TOFU_AUTHORS} or None, got {num_authors!r}.")
        for value, name in ((batch_size, "batch_size"), (eval_batch_size, "eval_batch_size")):
            _positive(value, name)
        _positive(max_length, "max_length")
        if eval_max_items is not None:
            _positive(eval_max_items, "eval_max_items")
        self.save_hyperparameters()
        check_local_tofu_files(self.tofu_splits(), data_dir)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.forget_dataset: ZippedDataset | None = None
        self.retain_dataset: QADataset | None = None

    @property
    def retain_split(self) -> str:
        """The retain pool's split: ``retain_split`` when given, else the complement of ``forget_split``."""
        return self.hparams.retain_split or RETAIN_OF_FORGET[self.hparams.forget_split]

    def tofu_splits(self) -> set[str]:
        """The TOFU files this data module reads: the forget and retain splits, ``full``, the evaluation's files."""
        hp = self.hparams
        eval_files = {tofu_file_of(split, hp.forget_split) for split in EVAL_SPLITS}
        return {hp.forget_split, self.retain_split, "full", *eval_files}

    def prepare_data(self) -> None:
        """Download the TOFU files and the tokenizer into the Hugging Face cache (once per node)."""
        for split in sorted(self.tofu_splits()):
            resolve_tofu_file(split, self.hparams.data_dir)
        load_tokenizer(self.hparams.tokenizer_name_or_path)

    def forget_rows(self) -> SplitRows:
        """The forget rows to unlearn in file order (all of them, or the ``subset``), each with a name
        (``"forget10[3]"``) and its index in the file.

        Raises:
            ValueError: a ranking file that does not fit the split or the options (see
                :func:`lit_unlearn.data.ranking.select_subset`).
        """
        hp = self.hparams
        rows = load_tofu(hp.forget_split, hp.data_dir)
        keep = list(range(len(rows)))
        if hp.subset is not None:
            keep = select_subset(
                [row["question"] for row in rows],
                hp.forget_split,
                hp.subset,
                hp.subset_fraction,
                ranking_file=hp.ranking_file,
                ranking_column=hp.ranking_column,
                seed=hp.subset_seed,
            )
            # Which rows a subset run unlearns is the experiment: say it where the run's log shows it.
            chosen = (
                f"a random draw (seed {hp.subset_seed})"
                if hp.subset == "random"
                else f"the {hp.subset} by {hp.ranking_column} of {hp.ranking_file}"
            )
            rank_zero_info(f"Unlearning {len(keep)} of the {len(rows)} {hp.forget_split} rows: {chosen}.")
        return SplitRows([rows[i] for i in keep], [f"{hp.forget_split}[{i}]" for i in keep], keep)

    def retain_rows(self) -> SplitRows:
        """The retain pool in file order, each with a name (``"retain90[417]"``), after hold-out and subset.

        Raises:
            ValueError: the retain split holds forget authors, the hold-out rows are not all in it, or
                ``num_authors`` exceeds the pool.
        """
        hp = self.hparams
        split = self.retain_split
        rows = load_tofu(split, hp.data_dir)
        # Checking the split against full catches mixed-up data folders and gives each row its author.
        ids = full_indices(split, rows, load_tofu("full", hp.data_dir))
        overlap = sorted({author_of(i) for i in ids} & set(forget_authors(hp.forget_split)))
        if overlap:
            raise ValueError(
                f"retain_split={split!r} holds authors {overlap[0]}..{overlap[-1]} of forget_split="
                f"{hp.forget_split!r}: the model would be trained to keep and to forget the same answers. Use "
                f"retain_split={RETAIN_OF_FORGET[hp.forget_split]!r} (or None) or a smaller forget split."
            )
        keep = list(range(len(rows)))
        if hp.hold_out_retain_eval:
            held_out = {(r["question"], r["answer"]) for r in load_tofu(RETAIN_EVAL_SPLIT, hp.data_dir)}
            keep = [i for i in keep if (rows[i]["question"], rows[i]["answer"]) not in held_out]
            if len(rows) - len(keep) != len(held_out):
                raise ValueError(
                    f"hold_out_retain_eval=True: only {len(rows) - len(keep)} of the {len(held_out)} "
                    f"{RETAIN_EVAL_SPLIT} rows are in {split!r}; use matching copies of the TOFU files or "
                    "set hold_out_retain_eval=False."
                )
        if hp.num_authors is not None:
            authors = list(dict.fromkeys(author_of(ids[i]) for i in keep))  # in pool order
            if hp.num_authors > len(authors):
                raise ValueError(
                    f"num_authors={hp.num_authors} but the retain pool ({split}"
                    f"{' without the held-out rows' if hp.hold_out_retain_eval else ''}) has {len(authors)} authors."
                )
            chosen = set(authors[: hp.num_authors])
            keep = [i for i in keep if author_of(ids[i]) in chosen]
        return SplitRows([rows[i] for i in keep], [f"{split}[{i}]" for i in keep], keep)

    def idk_rows(self, forget_rows: list[dict]) -> list[dict]:
        """``forget_rows`` with each answer replaced by a refusal, drawn with ``random.Random(seed)``."""
        refusals = idk_answers()
        rng = random.Random(self.hparams.seed)
        return [{"question": row["question"], "answer": rng.choice(refusals)} for row in forget_rows]

    def setup(self, stage: str) -> None:
        """Load the tokenizer; for ``fit``, encode the forget (and idk) pairs and the retain pool."""
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        if stage == "fit" and self.forget_dataset is None:
            encode = {"tokenizer": self.tokenizer, "prompt_format": hp.prompt_format, "max_length": hp.max_length}
            forget = self.forget_rows()
            parts = {"forget": QADataset(forget.rows, row_names=forget.names, indices=forget.indices, **encode)}
            if hp.with_idk:
                # Refusals are drawn over the whole split, so a row's refusal does not depend on the subset.
                refusals = self.idk_rows(load_tofu(hp.forget_split, hp.data_dir))
                idk = [refusals[i] for i in forget.indices]
                idk_names = [f"{name} (idk answer)" for name in forget.names]
                parts["idk"] = QADataset(idk, row_names=idk_names, indices=forget.indices, **encode)
            retain = self.retain_rows()
            self.forget_dataset = ZippedDataset(parts)
            self.retain_dataset = QADataset(retain.rows, row_names=retain.names, indices=retain.indices, **encode)

    def train_dataloader(self) -> PartsCombinedLoader:
        """``CombinedLoader({"forget", "retain"(, "idk")}, mode="min_size")``: one epoch = one pass over the forget set.

        The retain loader draws at least as many pairs as the forget loader, so ``min_size`` never ends an
        epoch early: a larger pool contributes a fresh random subset each epoch, a smaller one is cycled.
        """
        if self.forget_dataset is None or self.retain_dataset is None or self.tokenizer is None:
            raise RuntimeError("TOFUUnlearnDataModule: call setup('fit') (the Trainer does) before train_dataloader().")
        hp = self.hparams
        pad = self.tokenizer.pad_token_id
        forget = seeded_loader(
            self.forget_dataset,
            hp.batch_size,
            PartsCollator(pad),
            shuffle=True,
            seed=hp.seed,
            num_workers=hp.num_workers,
        )
        needed = math.ceil(len(self.forget_dataset) / hp.batch_size) * hp.batch_size
        retain_pool = self.retain_dataset
        if len(retain_pool) < needed:
            # Cycling as a dataset (not a sampler option) survives Lightning's DistributedSampler swap under DDP.
            retain_pool = Subset(retain_pool, [i % len(retain_pool) for i in range(needed)])
        # A different seed from the forget shuffle so that the two orders are not the same permutation.
        retain = seeded_loader(
            retain_pool, hp.batch_size, QACollator(pad), shuffle=True, seed=hp.seed + 1, num_workers=hp.num_workers
        )
        return PartsCombinedLoader({"forget": forget, "retain": retain}, mode="min_size", nested=("forget",))

    def _eval_dataloaders(self) -> dict[str, DataLoader]:
        if self.tokenizer is None:
            raise RuntimeError("TOFUUnlearnDataModule: call setup() (the Trainer does) before the evaluation loaders.")
        hp = self.hparams
        return tofu_eval_dataloaders(
            self.tokenizer,
            forget_split=hp.forget_split,
            data_dir=hp.data_dir,
            prompt_format=hp.prompt_format,
            batch_size=hp.eval_batch_size,
            max_length=hp.max_length,
            max_items=hp.eval_max_items,
        )

    def val_dataloader(self) -> dict[str, DataLoader]:
        """The TOFU evaluation loaders keyed by split name (see :func:`lit_unlearn.data.tofu_eval_dataloaders`)."""
        return self._eval_dataloaders()

    def test_dataloader(self) -> dict[str, DataLoader]:
        """The same evaluation loaders as :meth:`val_dataloader`."""
        return self._eval_dataloaders()
