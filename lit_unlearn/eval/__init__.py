"""TOFU evaluation: the shared evaluation step (through the ``lit_unlearn.metrics`` Metric classes), the Lightning
mixin, a plain runner, output files and ``lit-unlearn summarize``. The evaluation datasets and loaders are in
``lit_unlearn.data``."""

from lit_unlearn.eval.aggregate import summarize_records
from lit_unlearn.eval.evaluator import TOFUEvaluator
from lit_unlearn.eval.io import load_eval, write_outputs
from lit_unlearn.eval.items import ItemRecord
from lit_unlearn.eval.mixin import TOFUEvalMixin
from lit_unlearn.eval.runner import evaluate
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.eval.summarize import summarize

__all__ = [
    "EvalSettings",
    "ItemRecord",
    "TOFUEvalMixin",
    "TOFUEvaluator",
    "evaluate",
    "load_eval",
    "summarize",
    "summarize_records",
    "write_outputs",
]
