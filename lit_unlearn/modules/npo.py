"""Negative preference optimisation (NPO)."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class NPO(UnlearningModule):
    """NPO (Zhang et al. 2024, Eq. 3): ``L = −(2/β) · mean_seq log σ(−β · log(π_θ(y|x) / π_ref(y|x)))``.

    Its gradient is gradient ascent's with the per-sequence weight ``2 p^β / (p^β + p_ref^β)`` (G-effect paper
    §4.2): sequences already unlikely relative to the reference get pushed less.

    Per-example share (G-effect callback): a mean over sequences, so forget example b's share of L_forget is
    ``−(2/β) log σ(−β · log(π_θ(y_b|x_b) / π_ref(y_b|x_b))) / B`` with B the micro-batch size.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Inverse temperature β (OpenUnlearning: 0.1; the G-effect paper's code: 0.5). β → 0 recovers GA.
        retain_loss: Retain regulariser, ``"nll"`` by default (OpenUnlearning's NPO). The G-effect paper's ``npo`` has
            none (``"none"``); its ``npo_kl`` is ``"kl"`` with ``retain_weight`` equal to β (its code ties the two).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    reference_parts = ("forget",)

    def __init__(
        self, model_name_or_path: str, beta: float = 0.1, retain_loss: RetainLoss = "nll", **kwargs: Any
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta")
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        return ForgetTerm(losses.npo(logps, reference.logps("forget"), mask, self.beta, per_example=True))
