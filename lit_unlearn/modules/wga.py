"""Weighted gradient ascent (WGA), proposed by the G-effect paper."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class WGA(UnlearningModule):
    """WGA (Wang et al. 2025, §5): ``L = −mean_tokens(sg[p_i^β] · ce_i)``.

    The per-token confidence weight ``p_i^β`` cancels GA's inverse-confidence factor ``1/p_i`` for tokens already
    forgotten, so unlearning stops pushing them (β = 0 is GA).

    Per-example share (G-effect callback): a token mean over the micro-batch, so forget example b's share of L_forget
    is ``(1/N) Σ_{i ∈ answer(b)} sg[p_i^β] log p_i`` with N the answer tokens of the whole micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta: Weight exponent β (the paper's code: 5; OpenUnlearning: 1).
        retain_loss: Retain regulariser, ``"nll"`` by default. The G-effect paper's ``wga`` has none (``"none"``), its
            ``wga_kl`` is ``"kl"`` with weight 1.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(
        self, model_name_or_path: str, beta: float = 5.0, retain_loss: RetainLoss = "nll", **kwargs: Any
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        logs = self.token_weight_log(losses.wga_weights(logps, self.beta), mask)
        return ForgetTerm(losses.wga(logps, mask, self.beta, per_example=True), logs)
