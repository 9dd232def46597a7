"""TOFU data: loading (local folder or Hub), prompt formatting, tokenized datasets, collators, DataModules and the
TOFU evaluation sets (``lit_unlearn.eval`` builds on them, never the reverse)."""

from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.datasets import PartsCollator, QACollator, QADataset, ZippedDataset
from lit_unlearn.data.evaluation import (
    EVAL_SPLITS,
    GENERATION_SPLITS,
    PARAPHRASED_SPLITS,
    TOFUEvalCollator,
    TOFUEvalDataset,
    eval_dataloader,
    pad_token_id_of,
    tofu_eval_dataloaders,
    tofu_file_of,
)
from lit_unlearn.data.finetune_datamodule import TOFUFinetuneDataModule
from lit_unlearn.data.formatting import PromptFormat, encode_answer, encode_pair, encode_prompt
from lit_unlearn.data.loaders import PartsCombinedLoader
from lit_unlearn.data.subsets import FORGET_AUTHORS, RETAIN_OF_FORGET, forget_authors
from lit_unlearn.data.tofu import TOFU_SPLITS, TOFUDataError, TOFUFileNotFoundError, load_tofu, resolve_tofu_file
from lit_unlearn.data.unlearn_datamodule import TOFUUnlearnDataModule, idk_answers

__all__ = [
    "EVAL_SPLITS",
    "FORGET_AUTHORS",
    "GENERATION_SPLITS",
    "IGNORE_INDEX",
    "PARAPHRASED_SPLITS",
    "RETAIN_OF_FORGET",
    "TOFU_SPLITS",
    "PartsCollator",
    "PartsCombinedLoader",
    "PromptFormat",
    "QACollator",
    "QADataset",
    "TOFUDataError",
    "TOFUEvalCollator",
    "TOFUEvalDataset",
    "TOFUFileNotFoundError",
    "TOFUFinetuneDataModule",
    "TOFUUnlearnDataModule",
    "ZippedDataset",
    "encode_answer",
    "encode_pair",
    "encode_prompt",
    "eval_dataloader",
    "forget_authors",
    "idk_answers",
    "load_tofu",
    "pad_sequences",
    "pad_token_id_of",
    "resolve_tofu_file",
    "tofu_eval_dataloaders",
    "tofu_file_of",
]
