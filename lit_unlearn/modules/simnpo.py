"""SimNPO: reference-free, length-normalised NPO."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class SimNPO(UnlearningModule):
    """SimNPO (Fan et al. 2024, Eq. 4): ``L = −(2/β) · mean_seq log σ(β · (mean_i ce_i − δ))``.

    NPO with the reference replaced by a length-normalised log-likelihood and a margin δ; no frozen copy needed.

    Per-example share (G-effect callback): a mean over sequences, so forget example b's share of L_forget is
    ``−(2/β) log σ(β · (mean_{i ∈ answer(b)} ce_i − δ)) / B`` with B the micro-batch size.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Inverse temperature β (OpenUnlearning: 4.5).
        delta: Reward margin δ (OpenUnlearning: 0).
        retain_loss: Retain regulariser, ``"nll"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(
        self,
        model_name_or_path: str,
        beta: float = 4.5,
        delta: float = 0.0,
        retain_loss: RetainLoss = "nll",
        **kwargs: Any,
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta")
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta
        self.delta = delta

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        return ForgetTerm(losses.simnpo(logps, mask, self.beta, self.delta, per_example=True))
