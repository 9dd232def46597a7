"""Token-wise NPO (TNPO), proposed by the G-effect paper."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class TNPO(UnlearningModule):
    """TNPO (Wang et al. 2025, §5): ``L = −mean_tokens(sg[w_i] · ce_i)``, ``w_i = 2 p_i^β / (p_i^β + p_ref,i^β)``.

    NPO's weight moved from sequences to tokens: its gradient is the gradient of token-wise NPO.

    Per-example share (G-effect callback): a token mean over the micro-batch, so forget example b's share of L_forget
    is ``(1/N) Σ_{i ∈ answer(b)} sg[w_i] log p_i`` with N the answer tokens of the whole micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Inverse temperature β ≥ 0 (the paper's code: 4; β = 0 with eps = 0 is gradient ascent).
        eps: Added to the weight's denominator; the paper's code uses 1e-5, the paper's formula 0. At β = 4 it matters:
            with ``p = p_ref = 0.03`` the weight is 0.139 instead of 1.
        retain_loss: Retain regulariser, ``"nll"`` by default. The G-effect paper's ``tnpo`` has none (``"none"``),
            its ``tnpo_kl`` is ``"kl"`` with weight 1.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    reference_parts = ("forget",)

    def __init__(
        self,
        model_name_or_path: str,
        beta: float = 4.0,
        eps: float = 0.0,
        retain_loss: RetainLoss = "nll",
        **kwargs: Any,
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta", allow_zero=True)
        losses.check_positive(eps, f"{type(self).__name__} eps", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta
        self.eps = eps

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        ref_logps = reference.logps("forget")
        logs = self.token_weight_log(losses.tnpo_weights(logps, ref_logps, self.beta, self.eps), mask)
        return ForgetTerm(losses.tnpo(logps, ref_logps, mask, self.beta, self.eps, per_example=True), logs)
