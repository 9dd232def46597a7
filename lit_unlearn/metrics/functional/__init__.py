"""Functional forms of the TOFU metrics: pure functions of tensors (average NLLs, token ids, log-probs) or strings.

Per-item functions (``answer_probabilities``, ``truth_ratios``, ``extraction_strength``, ``min_k_scores``, ...) and
their aggregates; the ``Metric`` classes of ``lit_unlearn.metrics`` are thin stateful wrappers of these.
"""

from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS, forget_quality, model_utility
from lit_unlearn.metrics.functional.memorization import exact_memorization, extraction_strength
from lit_unlearn.metrics.functional.mia import membership_auc, min_k_scores, privleak
from lit_unlearn.metrics.functional.probability import answer_probabilities, answer_probability
from lit_unlearn.metrics.functional.rouge import rouge_l_recall, rouge_l_recall_batch
from lit_unlearn.metrics.functional.truth_ratio import (
    TruthRatioAggregation,
    aggregate_truth_ratios,
    truth_ratio,
    truth_ratios,
)

__all__ = [
    "MODEL_UTILITY_COMPONENTS",
    "TruthRatioAggregation",
    "aggregate_truth_ratios",
    "answer_probabilities",
    "answer_probability",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "membership_auc",
    "min_k_scores",
    "model_utility",
    "privleak",
    "rouge_l_recall",
    "rouge_l_recall_batch",
    "truth_ratio",
    "truth_ratios",
]
