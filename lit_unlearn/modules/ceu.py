"""CE-U: cross-entropy towards the model's own distribution with the answer token removed."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ReferenceOutputs, RetainLoss, UnlearningModule


class CEU(UnlearningModule):
    """CE-U (Bo Yang, arXiv 2503.01224): ``L = γ · mean_t CE(softmax(sg[z_t] with z_t,y := −∞), p_θ,t) + α · L_retain``.

    Its gradient is the unlikelihood gradient ``p − q``: bounded as the answer token's probability vanishes, where
    gradient ascent's grows as ``1/p``. No reference model. The paper has no retain term, hence ``retain_loss="none"``
    by default; GD and KL are available like for every objective.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        ignore_first_n: Answer tokens skipped at the start of every answer (the paper's footnote; OpenUnlearning's
            config: 1).
        retain_loss: Retain regulariser, ``"none"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(
        self, model_name_or_path: str, ignore_first_n: int = 1, retain_loss: RetainLoss = "none", **kwargs: Any
    ) -> None:
        losses.check_positive(ignore_first_n, f"{type(self).__name__} ignore_first_n", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.ignore_first_n = ignore_first_n

    @override
    def forget_loss(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> Tensor:
        forget = batch["forget"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        return losses.ceu(logits, forget["labels"], self.ignore_first_n)
