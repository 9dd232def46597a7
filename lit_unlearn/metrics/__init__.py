"""TOFU metrics in torchmetrics style: functional math in ``lit_unlearn.metrics.functional``, thin ``Metric`` classes
here. Metrics receive numbers or strings (average NLLs, token ids, log-probs, generated text), never models.

The classes keep one value per item (``ItemMetric``), gathered across processes by torchmetrics and counted once per
item id, so that the TOFU evaluation (``lit_unlearn.eval``) aggregates through them under DDP as in one process.

The ``TruthRatio`` class lives in ``truth.py``: a submodule named ``truth_ratio`` would shadow the exported function
``truth_ratio`` as an attribute of this package."""

from lit_unlearn.metrics.functional import (
    MODEL_UTILITY_COMPONENTS,
    aggregate_truth_ratios,
    answer_probabilities,
    answer_probability,
    exact_memorization,
    extraction_strength,
    forget_quality,
    membership_auc,
    min_k_scores,
    model_utility,
    privleak,
    rouge_l_recall,
    truth_ratio,
    truth_ratios,
)
from lit_unlearn.metrics.item_metric import ItemMean, ItemMetric, first_occurrences
from lit_unlearn.metrics.memorization import ExactMemorization, ExtractionStrength
from lit_unlearn.metrics.mia import MinKMembershipAUC
from lit_unlearn.metrics.probability import AnswerProbability
from lit_unlearn.metrics.rouge import ROUGELRecall
from lit_unlearn.metrics.truth import TruthRatio

__all__ = [
    "MODEL_UTILITY_COMPONENTS",
    "AnswerProbability",
    "ExactMemorization",
    "ExtractionStrength",
    "ItemMean",
    "ItemMetric",
    "MinKMembershipAUC",
    "ROUGELRecall",
    "TruthRatio",
    "aggregate_truth_ratios",
    "answer_probabilities",
    "answer_probability",
    "exact_memorization",
    "extraction_strength",
    "first_occurrences",
    "forget_quality",
    "membership_auc",
    "min_k_scores",
    "model_utility",
    "privleak",
    "rouge_l_recall",
    "truth_ratio",
    "truth_ratios",
]
