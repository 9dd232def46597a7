"""Forget quality vs scipy, model utility vs the hand-computed harmonic mean, ES/EM/min-k/AUC vs naive loops."""

import random

import numpy as np
import pytest
import torch
from scipy.stats import hmean, ks_2samp

from lit_unlearn.data.formatting import IGNORE_INDEX
from lit_unlearn.metrics import (
    MODEL_UTILITY_COMPONENTS,
    ExactMemorization,
    ExtractionStrength,
    MinKMembershipAUC,
    exact_memorization,
    extraction_strength,
    forget_quality,
    membership_auc,
    min_k_scores,
    model_utility,
    privleak,
)


def test_forget_quality_is_scipy_ks_pvalue() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(300, generator=gen, dtype=torch.float64)
    b = torch.rand(280, generator=gen, dtype=torch.float64) ** 2
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a.numpy(), b.numpy()).pvalue, rel=1e-12)
    # Invariant under a monotone transform of both samples (TOFU legacy tests 1/R, OpenUnlearning R).
    assert forget_quality(1 / a, 1 / b) == pytest.approx(forget_quality(a, b), rel=1e-12)
    assert forget_quality(a, a) == 1.0
    with pytest.raises(ValueError, match="retain_truth_ratios"):
        forget_quality(a, [])


def test_model_utility_harmonic_mean() -> None:
    values = [0.9, 0.8, 0.5, 0.4, 0.6, 0.45, 0.35, 0.7, 0.55]
    expected = 9 / sum(1 / v for v in values)
    assert model_utility(values) == pytest.approx(expected)
    assert model_utility(values) == pytest.approx(hmean(values))
    assert model_utility(dict(zip(MODEL_UTILITY_COMPONENTS, values, strict=True))) == pytest.approx(expected)
    assert model_utility([0.0, *values[1:]]) == 0.0
    with pytest.raises(ValueError, match="missing components"):
        model_utility({"retain/probability": 0.5})


def _naive_es(preds: list[int], target: list[int]) -> float:
    pairs = [(p, t) for p, t in zip(preds, target, strict=True) if t != IGNORE_INDEX]
    n = len(pairs)
    k = next(k for k in range(n + 1) if all(p == t for p, t in pairs[k:]))
    return 1 - k / n


def _random_tokens(seed: int, rows: int = 16, width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    target = torch.full((rows, width), IGNORE_INDEX)
    preds = torch.randint(0, 3, (rows, width), generator=torch.Generator().manual_seed(seed))
    for i in range(rows):
        start, stop = rng.randint(0, 4), rng.randint(6, width)
        target[i, start:stop] = torch.randint(0, 3, (stop - start,), generator=torch.Generator().manual_seed(seed + i))
        if i % 3 == 0:  # some fully memorised rows
            preds[i, start:stop] = target[i, start:stop]
    return preds, target


def test_extraction_strength_and_exact_memorization_vs_naive() -> None:
    preds, target = _random_tokens(1)
    es = extraction_strength(preds, target).tolist()
    em = exact_memorization(preds, target).tolist()
    for i in range(preds.shape[0]):
        assert es[i] == pytest.approx(_naive_es(preds[i].tolist(), target[i].tolist()))
        pairs = [(p, t) for p, t in zip(preds[i].tolist(), target[i].tolist(), strict=True) if t != IGNORE_INDEX]
        assert em[i] == pytest.approx(sum(p == t for p, t in pairs) / len(pairs))
    # Hand example: suffix of 2 of 4 tokens matches → 0.5; last token wrong → 0.
    assert extraction_strength(torch.tensor([[5, 9, 7, 8]]), torch.tensor([[5, 6, 7, 8]])).item() == 0.5
    assert extraction_strength(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[5, 6, 7, 8]])).item() == 0.0
    metric_es, metric_em = ExtractionStrength(), ExactMemorization()
    for rows in (slice(0, 5), slice(5, 16)):
        metric_es.update(preds[rows], target[rows])
        metric_em.update(preds[rows], target[rows])
    assert metric_es.compute().item() == pytest.approx(np.mean(es))
    assert metric_em.compute().item() == pytest.approx(np.mean(em))


def test_min_k_scores_vs_naive() -> None:
    gen = torch.Generator().manual_seed(2)
    logps = -torch.rand(6, 10, generator=gen, dtype=torch.float64) * 5
    mask = torch.zeros(6, 10, dtype=torch.bool)
    for i, n in enumerate([1, 2, 3, 5, 8, 10]):
        mask[i, 10 - n :] = True
    for k in (0.2, 0.4, 1.0):
        scores = min_k_scores(logps, mask, k).tolist()
        for i in range(6):
            values = sorted(logps[i][mask[i]].tolist())
            num = max(1, int(len(values) * k))
            assert scores[i] == pytest.approx(-np.mean(values[:num]))


def test_membership_auc_vs_pairwise_count_and_privleak() -> None:
    gen = torch.Generator().manual_seed(3)
    members = torch.randint(0, 20, (40,), generator=gen).double()  # integer scores: many ties
    others = torch.randint(5, 25, (30,), generator=gen).double()
    pairs = [(1.0 if o > m else 0.5 if o == m else 0.0) for m in members.tolist() for o in others.tolist()]
    assert membership_auc(members, others) == pytest.approx(sum(pairs) / len(pairs))
    assert membership_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    # privleak: ((1 - 0.9) - (1 - 0.5)) / (1 - 0.5) * 100 = -80
    assert privleak(0.9) == pytest.approx(-80.0)
    assert privleak(0.7, retain_auc=0.7) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both sides"):
        membership_auc(members, torch.tensor([]))


def test_min_k_auc_metric_matches_functional() -> None:
    gen = torch.Generator().manual_seed(4)
    forget = -torch.rand(8, 6, generator=gen, dtype=torch.float64)  # high log-probs: members
    holdout = -torch.rand(7, 6, generator=gen, dtype=torch.float64) * 4
    mask_f, mask_h = torch.ones_like(forget, dtype=torch.bool), torch.ones_like(holdout, dtype=torch.bool)
    metric = MinKMembershipAUC(k=0.4)
    metric.update(forget[:4], mask_f[:4], True)
    metric.update(holdout, mask_h, False)
    metric.update(forget[4:], mask_f[4:], True)
    expected = membership_auc(min_k_scores(forget, mask_f, 0.4), min_k_scores(holdout, mask_h, 0.4))
    assert metric.compute().item() == pytest.approx(expected)
    assert expected > 0.8


def _pairwise_auc(members: list[float], others: list[float]) -> float:
    """P(non-member scores above member), ties 1/2, by counting every pair."""
    pairs = [(1.0 if o > m else 0.5 if o == m else 0.0) for m in members for o in others]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_membership_auc_vs_brute_force_pairwise_count(scale: float) -> None:
    """Continuous scores with some exact ties, small and far past where a sigmoid rounds to 1 (unlearned models reach
    min-k NLLs of 100 and more): binary_auroc must see their order, not squashed ties."""
    gen = torch.Generator().manual_seed(5)
    members = torch.rand(50, generator=gen, dtype=torch.float64) * scale + 40 * (scale > 1)
    others = torch.rand(45, generator=gen, dtype=torch.float64) * scale * 1.3 + 40 * (scale > 1)
    others[:5] = members[:5]  # exact ties across the two sides
    expected = _pairwise_auc(members.tolist(), others.tolist())
    assert membership_auc(members, others) == pytest.approx(expected, rel=1e-6)
    assert 0.55 < expected < 0.95  # neither separable nor indistinguishable: the order matters
