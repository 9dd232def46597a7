"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule
from lit_unlearn.modules.idk_po import idk_part


class IdkDPO(UnlearningModule):
    """IdkDPO (Rafailov et al. 2023 Eq. 7, as used by TOFU/OpenUnlearning).

    ``L = −(2/β) · mean log σ(β · [(log π − log π_ref)(y_idk) − (log π − log π_ref)(y_forget)])``.

    Per-example share (G-effect callback): a mean over (refusal, forget answer) pairs, so forget example b's share of
    L_forget is its pair's ``−(2/β) log σ(β · [...]_b) / B`` with B the micro-batch size.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Inverse temperature β (OpenUnlearning: 0.1).
        retain_loss: Retain regulariser, ``"nll"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    reference_parts = ("idk", "forget")

    def __init__(
        self, model_name_or_path: str, beta: float = 0.1, retain_loss: RetainLoss = "nll", **kwargs: Any
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta")
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        chosen, chosen_mask = self.answer_logps(idk_part(self, batch))
        rejected, rejected_mask = self.answer_logps(batch["forget"])
        chosen_ref, rejected_ref = reference.logps("idk"), reference.logps("forget")
        shares = losses.dpo(
            chosen, chosen_ref, chosen_mask, rejected, rejected_ref, rejected_mask, self.beta, per_example=True
        )
        return ForgetTerm(shares)
