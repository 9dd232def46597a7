"""CE-U: cross-entropy towards the model's own distribution with the answer token removed."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class CEU(UnlearningModule):
    """CE-U (Bo Yang, arXiv 2503.01224): ``L = γ · mean_t CE(softmax(sg[z_t] with z_t,y := −∞), p_θ,t) + α · L_retain``.

    Its gradient is the unlikelihood gradient ``p − q``: bounded as the answer token's probability vanishes, where
    gradient ascent's grows as ``1/p``. No reference model. The paper has no retain term, hence ``retain_loss="none"``
    by default; GD and KL are available like for every objective.

    Per-example share (G-effect callback): a position mean over the micro-batch, so forget example b's share of
    L_forget is ``Σ_{t ∈ answer(b)} ℓ_t / N`` with N the answer positions of the whole micro-batch left after skipping
    the first ``ignore_first_n`` of each answer.

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
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        forget = batch["forget"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        return ForgetTerm(losses.ceu(logits, forget["labels"], self.ignore_first_n, per_example=True))
