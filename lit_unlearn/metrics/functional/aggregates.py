"""TOFU's two headline aggregates: forget quality and model utility (TOFU §2.5.3; OpenUnlearning ``ks_test`` and
``hm_aggregate``)."""

from collections.abc import Mapping, Sequence

import torch
from scipy.stats import ks_2samp
from torch import Tensor

MODEL_UTILITY_COMPONENTS: tuple[str, ...] = tuple(
    f"{split}/{metric}"
    for split in ("retain", "real_authors", "world_facts")
    for metric in ("probability", "rouge_l_recall", "truth_ratio")
)
"""The nine numbers of model utility, as ``<split>/<metric>``: {answer probability (option-normalised on
real_authors/world_facts), ROUGE-L recall, truth ratio (``true_better``)} × {retain, real_authors, world_facts}."""


def _as_float_list(values: Tensor | Sequence[float], name: str) -> list[float]:
    out = values.detach().flatten().tolist() if isinstance(values, Tensor) else [float(v) for v in values]
    if not out:
        raise ValueError(f"`{name}` is empty; forget quality needs at least one per-item truth ratio on each side.")
    return out


def forget_quality(truth_ratios: Tensor | Sequence[float], retain_truth_ratios: Tensor | Sequence[float]) -> float:
    """Forget quality: the two-sample Kolmogorov–Smirnov p-value between the per-item forget-set truth ratios of the
    evaluated model and those of the retain model (trained without the forget authors).

    Any strictly monotone transform of both samples gives the same p-value, so TOFU legacy (testing ``1/R``) and
    OpenUnlearning (testing ``R``) agree with this function.

    Args:
        truth_ratios: per-item truth ratios ``R`` of the evaluated model on the forget set.
        retain_truth_ratios: the same for the retain model.

    Returns:
        ``scipy.stats.ks_2samp(truth_ratios, retain_truth_ratios).pvalue``; 1.0 for identical samples.
    """
    a = _as_float_list(truth_ratios, "truth_ratios")
    b = _as_float_list(retain_truth_ratios, "retain_truth_ratios")
    return float(ks_2samp(a, b).pvalue)


def model_utility(components: Mapping[str, float] | Sequence[float]) -> float:
    """Model utility: the harmonic mean of the nine utility components.

    Args:
        components: either a mapping holding every key of ``MODEL_UTILITY_COMPONENTS`` (extra keys are ignored), or
            the nine values themselves.

    Returns:
        ``9 / Σ 1/x_i``; 0.0 as soon as one component is 0 (the harmonic mean's limit, as ``scipy.stats.hmean``).

    Raises:
        ValueError: on a missing component, a wrong count, or a negative/NaN value.
    """
    if isinstance(components, Mapping):
        missing = [k for k in MODEL_UTILITY_COMPONENTS if k not in components]
        if missing:
            raise ValueError(
                f"model_utility is missing components {missing}; it needs all of {list(MODEL_UTILITY_COMPONENTS)} "
                "(evaluate the retain, real_authors and world_facts splits)."
            )
        values = [float(components[k]) for k in MODEL_UTILITY_COMPONENTS]
    else:
        values = [float(v) for v in components]
        if len(values) != len(MODEL_UTILITY_COMPONENTS):
            raise ValueError(f"model_utility needs {len(MODEL_UTILITY_COMPONENTS)} components, got {len(values)}.")
    if any(not (v >= 0.0) for v in values):
        raise ValueError(f"model_utility components must be non-negative numbers, got {values}.")
    if any(v == 0.0 for v in values):
        return 0.0
    return len(values) / float(torch.tensor(values, dtype=torch.float64).reciprocal().sum())
