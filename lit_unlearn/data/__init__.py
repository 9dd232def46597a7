"""TOFU data: loading (local folder or Hub), prompt formatting, tokenized datasets, collators, DataModules and the
TOFU evaluation sets (``lit_unlearn.eval`` builds on them, never the reverse).

The names resolve on first use (``lit_unlearn._lazy``): ``load_tofu`` and the evaluation sets need no Lightning,
the DataModules do.
"""

from typing import TYPE_CHECKING

from lit_unlearn._lazy import lazy_exports

if TYPE_CHECKING:
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

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lit_unlearn.batch": ["IGNORE_INDEX"],
        "lit_unlearn.data.collate": ["pad_sequences"],
        "lit_unlearn.data.datasets": ["PartsCollator", "QACollator", "QADataset", "ZippedDataset"],
        "lit_unlearn.data.evaluation": [
            "EVAL_SPLITS",
            "GENERATION_SPLITS",
            "PARAPHRASED_SPLITS",
            "TOFUEvalCollator",
            "TOFUEvalDataset",
            "eval_dataloader",
            "pad_token_id_of",
            "tofu_eval_dataloaders",
            "tofu_file_of",
        ],
        "lit_unlearn.data.finetune_datamodule": ["TOFUFinetuneDataModule"],
        "lit_unlearn.data.formatting": ["PromptFormat", "encode_answer", "encode_pair", "encode_prompt"],
        "lit_unlearn.data.loaders": ["PartsCombinedLoader"],
        "lit_unlearn.data.subsets": ["FORGET_AUTHORS", "RETAIN_OF_FORGET", "forget_authors"],
        "lit_unlearn.data.tofu": [
            "TOFU_SPLITS",
            "TOFUDataError",
            "TOFUFileNotFoundError",
            "load_tofu",
            "resolve_tofu_file",
        ],
        "lit_unlearn.data.unlearn_datamodule": ["TOFUUnlearnDataModule", "idk_answers"],
    },
)
