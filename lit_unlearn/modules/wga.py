"""Weighted gradient ascent (WGA), proposed by the G-effect paper."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ReferenceOutputs, RetainLoss, UnlearningModule


class WGA(UnlearningModule):
    """WGA (Wang et al. 2025, §5): ``L = −mean_tokens(sg[p_i^β] · ce_i)``.

    The per-token confidence weight ``p_i^β`` cancels GA's inverse-confidence factor ``1/p_i`` for tokens already
    forgotten, so unlearning stops pushing them (β = 0 is GA).

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Weight exponent β (the paper's code: 5; OpenUnlearning: 1).
        retain_loss: Retain regulariser, ``"nll"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(
        self, model_name_or_path: str, beta: float = 5.0, retain_loss: RetainLoss = "nll", **kwargs: Any
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta

    @override
    def forget_loss(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> Tensor:
        logps, mask = self.answer_logps(batch["forget"])
        self.log_token_weight(losses.wga_weights(logps.detach(), self.beta), mask)
        return losses.wga(logps, mask, self.beta)
