"""Answer probability and truth ratio against hand-computed values; Metric class == functional form."""

import math
import pickle

import pytest
import torch

from lit_unlearn.metrics import AnswerProbability, TruthRatio, answer_probability, truth_ratio
from lit_unlearn.metrics.functional.truth_ratio import truth_ratios

NLL = torch.tensor([0.5, 1.0, 2.0])
PERTURBED = torch.tensor([[1.0, 2.0], [1.0, 1.0], [0.5, 1.5]])
PARAPHRASED = torch.tensor([1.0, 0.5, 2.0])


def test_plain_probability_hand_computed() -> None:
    expected = (math.exp(-0.5) + math.exp(-1.0) + math.exp(-2.0)) / 3
    assert answer_probability(NLL).item() == pytest.approx(expected)


def test_option_normalised_probability_hand_computed() -> None:
    per_item = []
    for a, perts in zip(NLL.tolist(), PERTURBED.tolist(), strict=True):
        p = math.exp(-a)
        per_item.append(p / (p + sum(math.exp(-x) for x in perts)))
    assert answer_probability(NLL, PERTURBED).item() == pytest.approx(sum(per_item) / 3)


def test_truth_ratio_is_geometric_mean_of_perturbed_over_correct() -> None:
    ratios = truth_ratios(PARAPHRASED, PERTURBED)
    for r, c, perts in zip(ratios.tolist(), PARAPHRASED.tolist(), PERTURBED.tolist(), strict=True):
        geometric = math.prod(math.exp(-x) for x in perts) ** (1 / len(perts))
        assert r == pytest.approx(geometric / math.exp(-c))
    # R = e^{1-1.5}, e^{0.5-1}, e^{2-1}
    expected_r = [math.exp(-0.5), math.exp(-0.5), math.exp(1.0)]
    assert ratios.tolist() == pytest.approx(expected_r)
    forget = sum(min(r, 1 / r) for r in expected_r) / 3
    others = sum(max(0.0, 1 - r) for r in expected_r) / 3
    assert truth_ratio(PARAPHRASED, PERTURBED, "closer_to_1_better").item() == pytest.approx(forget)
    assert truth_ratio(PARAPHRASED, PERTURBED, "true_better").item() == pytest.approx(others)


@pytest.mark.parametrize("aggregation", ["closer_to_1_better", "true_better"])
def test_truth_ratio_class_keeps_per_item_values(aggregation: str) -> None:
    metric = TruthRatio(aggregation)
    batch_value = metric(PARAPHRASED[:2], PERTURBED[:2])
    assert batch_value.item() == pytest.approx(truth_ratio(PARAPHRASED[:2], PERTURBED[:2], aggregation).item())
    metric.update(PARAPHRASED[2:], PERTURBED[2:])
    assert metric.compute().item() == pytest.approx(truth_ratio(PARAPHRASED, PERTURBED, aggregation).item())
    assert metric.ratios().tolist() == pytest.approx(truth_ratios(PARAPHRASED, PERTURBED).tolist())
    restored = pickle.loads(pickle.dumps(metric))
    assert restored.compute().item() == pytest.approx(metric.compute().item())
    metric.reset()
    assert metric.values == []


def test_probability_class_plain_and_normalised() -> None:
    plain = AnswerProbability()
    normalised = AnswerProbability(normalized=True)
    for rows in (slice(0, 1), slice(1, 3)):
        plain.update(NLL[rows])
        normalised.update(NLL[rows], PERTURBED[rows])
    assert plain.compute().item() == pytest.approx(answer_probability(NLL).item())
    assert normalised.compute().item() == pytest.approx(answer_probability(NLL, PERTURBED).item())
    with pytest.raises(ValueError, match="needs `perturbed_nll`"):
        normalised.update(NLL)


def test_shape_errors_name_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,\) and \(2, 2\)"):
        truth_ratio(PARAPHRASED, PERTURBED[:2])
    with pytest.raises(ValueError, match="Unknown truth-ratio aggregation"):
        TruthRatio("mean")  # type: ignore[arg-type]
