"""``ROUGELRecall``: torchmetrics' ROUGE restricted to TOFU's number, ROUGE-L recall with Porter stemming."""

from typing import Any

from torch import Tensor
from torchmetrics.text import ROUGEScore


class ROUGELRecall(ROUGEScore):
    """Mean ROUGE-L recall of generations against ground-truth answers (TOFU's ``rougeL_recall``).

    A thin wrapper of ``torchmetrics.text.ROUGEScore(rouge_keys="rougeL", use_stemmer=True)`` whose ``compute``
    returns the recall tensor only, so ``LightningModule.log`` can take the metric object. Per-sample scores are
    list states, gathered across processes by torchmetrics.

    Inputs of ``update``: ``preds`` (generated answers) and ``target`` (ground-truth answers), a string or a sequence
    of strings each. ``compute`` returns a scalar tensor: the mean recall over every pair seen.

    Args:
        kwargs: forwarded to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).

    Example:
        >>> metric = ROUGELRecall()
        >>> metric.update(["the cats were sitting"], ["the cat sat on the mat"])
        >>> round(metric.compute().item(), 4)
        0.3333
    """

    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        # rougeLsum is never requested: it downloads NLTK's punkt model.
        super().__init__(rouge_keys="rougeL", use_stemmer=True, **kwargs)

    def compute(self) -> Tensor:
        """Mean ROUGE-L recall over all pairs."""
        return super().compute()["rougeL_recall"]
