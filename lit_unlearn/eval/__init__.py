"""TOFU evaluation: datasets and collator, the shared evaluation step, the Lightning mixin, a plain runner, output
files and ``lit-unlearn summarize``."""

from lit_unlearn.eval.aggregate import summarize_records
from lit_unlearn.eval.data import EVAL_SPLITS, TOFUEvalCollator, TOFUEvalDataset, eval_dataloader, tofu_eval_dataloaders
from lit_unlearn.eval.evaluator import TOFUEvaluator
from lit_unlearn.eval.io import load_eval, write_outputs
from lit_unlearn.eval.mixin import TOFUEvalMixin
from lit_unlearn.eval.runner import evaluate
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.eval.summarize import summarize

__all__ = [
    "EVAL_SPLITS",
    "EvalSettings",
    "TOFUEvalCollator",
    "TOFUEvalDataset",
    "TOFUEvalMixin",
    "TOFUEvaluator",
    "eval_dataloader",
    "evaluate",
    "load_eval",
    "summarize",
    "summarize_records",
    "tofu_eval_dataloaders",
    "write_outputs",
]
