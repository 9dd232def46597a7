"""TOFU data: loading (local folder or Hub), prompt formatting, tokenized datasets, collators, DataModules."""

from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.datasets import PartsCollator, QACollator, QADataset, ZippedDataset
from lit_unlearn.data.finetune_datamodule import TOFUFinetuneDataModule
from lit_unlearn.data.formatting import PromptFormat, encode_answer, encode_pair, encode_prompt
from lit_unlearn.data.loaders import PartsCombinedLoader
from lit_unlearn.data.subsets import FORGET_AUTHORS, RETAIN_OF_FORGET, forget_authors
from lit_unlearn.data.tofu import TOFU_SPLITS, TOFUDataError, load_tofu, resolve_tofu_file
from lit_unlearn.data.unlearn_datamodule import TOFUUnlearnDataModule, idk_answers

__all__ = [
    "FORGET_AUTHORS",
    "IGNORE_INDEX",
    "RETAIN_OF_FORGET",
    "TOFU_SPLITS",
    "PartsCollator",
    "PartsCombinedLoader",
    "PromptFormat",
    "QACollator",
    "QADataset",
    "TOFUDataError",
    "TOFUFinetuneDataModule",
    "TOFUUnlearnDataModule",
    "ZippedDataset",
    "encode_answer",
    "encode_pair",
    "encode_prompt",
    "forget_authors",
    "idk_answers",
    "load_tofu",
    "pad_sequences",
    "resolve_tofu_file",
]
