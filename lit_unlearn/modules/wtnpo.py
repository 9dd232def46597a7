"""Weighted token-wise NPO (WTNPO), proposed by the G-effect paper."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class WTNPO(UnlearningModule):
    """WTNPO (Wang et al. 2025, §5): TNPO with weight ``w_i = 2 p_i^(β+α) / (p_i^β + p_ref,i^β)``.

    TNPO's weight times the WGA-style confidence ``p_i^α`` (α = 0 is TNPO).

    Per-example share (G-effect callback): a token mean over the micro-batch, so forget example b's share of L_forget
    is ``(1/N) Σ_{i ∈ answer(b)} sg[w_i] log p_i`` with N the answer tokens of the whole micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Inverse temperature β ≥ 0 (the paper's code: 4; β = 0 with eps = 0 is WGA with exponent α).
        alpha: Extra confidence exponent α (the paper's code: 1.5).
        eps: Added to the weight's denominator; the paper's code uses 1e-5, the paper's formula 0.
        retain_loss: Retain regulariser, ``"nll"`` by default. The G-effect paper's ``wtnpo_<α>`` has none
            (``"none"``), its ``wtnpo_<α>_kl`` is ``"kl"`` with weight 1.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    reference_parts = ("forget",)

    def __init__(
        self,
        model_name_or_path: str,
        beta: float = 4.0,
        alpha: float = 1.5,
        eps: float = 0.0,
        retain_loss: RetainLoss = "nll",
        **kwargs: Any,
    ) -> None:
        for name, value in (("beta", beta), ("alpha", alpha), ("eps", eps)):
            losses.check_positive(value, f"{type(self).__name__} {name}", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta
        self.alpha = alpha
        self.eps = eps

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        ref_logps = reference.logps("forget")
        weights = losses.wtnpo_weights(logps, ref_logps, self.beta, self.alpha, self.eps)
        shares = losses.wtnpo(logps, ref_logps, mask, self.beta, self.alpha, self.eps, per_example=True)
        return ForgetTerm(shares, self.token_weight_log(weights, mask))
