"""ROUGE-L recall: hand-computed cases, the Metric class against the functional form, parity with TOFU's logs."""

import json
import pickle

import pytest
import torch
from reference_data import PHI_REFERENCE

from lit_unlearn.metrics import ROUGELRecall, rouge_l_recall
from lit_unlearn.metrics.functional.rouge import rouge_l_recall_batch

REFERENCE = PHI_REFERENCE


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        # LCS "the cat" over the 6 target tokens; Porter maps cats → cat, but "sat" ≠ "sitting".
        ("the cats were sitting", "the cat sat on the mat", 2 / 6),
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        # Case and punctuation are dropped before matching; "Paris" and "paris" are one token.
        ("PARIS, France!", "Paris is in France", 2 / 4),
        ("nothing shared", "completely different words", 0.0),
        # Recall divides by the target length only: extra generated text costs nothing.
        ("yes the answer is blue and many more words follow here", "the answer is blue", 1.0),
    ],
)
def test_rouge_l_recall_hand_computed(prediction: str, target: str, expected: float) -> None:
    assert rouge_l_recall(prediction, target) == pytest.approx(expected, abs=1e-7)


def test_stemming_changes_the_number() -> None:
    # Without stemming "running" ≠ "run" and recall would be 1/2; TOFU uses the Porter stemmer.
    assert rouge_l_recall("he is running", "run fast") == pytest.approx(0.5)
    assert rouge_l_recall("running fast", "run fast") == pytest.approx(1.0)


def test_class_equals_mean_of_functional_and_resets() -> None:
    preds = ["the cats were sitting", "PARIS, France!", "nothing"]
    targets = ["the cat sat on the mat", "Paris is in France", "something"]
    metric = ROUGELRecall()
    batch_value = metric(preds[:2], targets[:2])
    assert batch_value.item() == pytest.approx((2 / 6 + 2 / 4) / 2, abs=1e-6)
    metric.update(preds[2:], targets[2:])
    expected = sum(rouge_l_recall(p, t) for p, t in zip(preds, targets, strict=True)) / 3
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    clone = pickle.loads(pickle.dumps(metric))
    assert clone.compute().item() == pytest.approx(expected, abs=1e-6)
    metric.reset()
    metric.update(["a b"], ["a b"])
    assert metric.compute().item() == pytest.approx(1.0)


def test_batch_rejects_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        rouge_l_recall_batch(["a", "b"], ["a"])


def test_parity_with_tofu_rouge_score_logs() -> None:
    """Every logged rougeL_recall of the Phi-1.5 full model (retain 300, forget 300, real authors 100, world facts
    117) recomputed from the logged [prompt, generation, ground truth] triples."""
    log = json.loads((REFERENCE / "full_eval_log_aggregated.json").read_text())
    worst, count = 0.0, 0
    for task in log.values():
        for key, (_, generation, truth) in task["generated_text"].items():
            worst = max(worst, abs(rouge_l_recall(generation, truth) - task["rougeL_recall"][key]))
            count += 1
    assert count == 817
    assert worst < 1e-6
    # The class aggregates exactly TOFU's per-split mean.
    retain = log["eval_log.json"]
    metric = ROUGELRecall()
    triples = list(retain["generated_text"].values())
    metric.update([g for _, g, _ in triples], [t for _, _, t in triples])
    expected = torch.tensor(list(retain["rougeL_recall"].values()), dtype=torch.float64).mean().item()
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
