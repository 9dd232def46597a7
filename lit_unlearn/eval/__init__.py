"""TOFU evaluation: the shared evaluation step (through the ``lit_unlearn.metrics`` Metric classes), the Lightning
mixin, a plain runner, output files and ``lit-unlearn summarize``. The evaluation datasets and loaders are in
``lit_unlearn.data``.

The names resolve on first use (``lit_unlearn._lazy``), so ``lit-unlearn summarize`` imports no Lightning; only the
mixin needs it.
"""

from typing import TYPE_CHECKING

from lit_unlearn._lazy import lazy_exports

# Imported now, not on first use: `summarize` is also its submodule's name, and importing the submodule (the console
# script does) would otherwise leave the module under the name the function should have.
from lit_unlearn.eval.summarize import summarize

if TYPE_CHECKING:
    from lit_unlearn.eval.aggregate import summarize_records
    from lit_unlearn.eval.evaluator import TOFUEvaluator
    from lit_unlearn.eval.io import load_eval, write_outputs
    from lit_unlearn.eval.items import ItemRecord
    from lit_unlearn.eval.mixin import TOFUEvalMixin
    from lit_unlearn.eval.runner import evaluate
    from lit_unlearn.eval.settings import EvalSettings

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lit_unlearn.eval.aggregate": ["summarize_records"],
        "lit_unlearn.eval.evaluator": ["TOFUEvaluator"],
        "lit_unlearn.eval.io": ["load_eval", "write_outputs"],
        "lit_unlearn.eval.items": ["ItemRecord"],
        "lit_unlearn.eval.mixin": ["TOFUEvalMixin"],
        "lit_unlearn.eval.runner": ["evaluate"],
        "lit_unlearn.eval.settings": ["EvalSettings"],
        "lit_unlearn.eval.summarize": ["summarize"],
    },
)
