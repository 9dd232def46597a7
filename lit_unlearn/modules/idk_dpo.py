"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import RetainLoss, UnlearningModule
from lit_unlearn.modules.idk_po import idk_part


class IdkDPO(UnlearningModule):
    """IdkDPO (Rafailov et al. 2023 Eq. 7, as used by TOFU/OpenUnlearning).

    ``L = −(2/β) · mean log σ(β · [(log π − log π_ref)(y_idk) − (log π − log π_ref)(y_forget)])``.

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
        if beta <= 0:
            raise ValueError(f"IdkDPO needs beta > 0, got {beta}.")
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta

    @override
    def forget_loss(self, batch: Mapping[str, Batch], reference: Mapping[str, Tensor]) -> Tensor:
        idk, forget = idk_part(self, batch), batch["forget"]
        chosen, chosen_mask = self.answer_logps(idk)
        rejected, rejected_mask = self.answer_logps(forget)
        chosen_ref, _ = losses.token_logps(reference["idk"], idk["labels"])
        rejected_ref, _ = losses.token_logps(reference["forget"], forget["labels"])
        return losses.dpo(chosen, chosen_ref, chosen_mask, rejected, rejected_ref, rejected_mask, self.beta)
