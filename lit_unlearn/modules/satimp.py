"""SatImp: gradient ascent reweighted by saturation and importance, the G-effect authors' follow-up."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class SatImp(UnlearningModule):
    """SatImp (Yang et al., ICML 2025): ``L = γ · mean_tokens(sg[p_i^β1 (1 − p_i)^β2] · log p_i) + α · L_retain``.

    WGA's saturation weight ``p^β1`` (tokens already forgotten stop being pushed) times an importance weight
    ``(1 − p)^β2`` (tokens the model is certain of are pushed less). The defaults are the authors' (tmlr-group/SatImp):
    β1 = 5 and β2 = 0.1 (README), forget weight 1 and retain weight 0.1 with the GD retain term (``satimp_gd``).
    OpenUnlearning's config uses β2 = 1 and swaps the weights (γ = 0.1, α = 1).

    Per-example share (G-effect callback): a token mean over the micro-batch, so forget example b's share of L_forget
    is ``(1/N) Σ_{i ∈ answer(b)} w_i log p_i`` with N the answer tokens of the whole micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        beta1: Saturation exponent β1 ≥ 0 (the authors: 5); β1 = β2 = 0 is gradient ascent.
        beta2: Importance exponent β2 ≥ 0 (the authors: 0.1; OpenUnlearning: 1); β2 = 0 is WGA with β = β1.
        retain_loss: Retain regulariser, ``"nll"`` by default (the authors' ``satimp_gd``).
        forget_weight: γ (the authors: 1; OpenUnlearning's config: 0.1).
        retain_weight: α (the authors' ``coeff``: 0.1; OpenUnlearning's config: 1).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(
        self,
        model_name_or_path: str,
        beta1: float = 5.0,
        beta2: float = 0.1,
        retain_loss: RetainLoss = "nll",
        forget_weight: float = 1.0,
        retain_weight: float = 0.1,
        **kwargs: Any,
    ) -> None:
        losses.check_positive(beta1, f"{type(self).__name__} beta1", allow_zero=True)
        losses.check_positive(beta2, f"{type(self).__name__} beta2", allow_zero=True)
        super().__init__(
            model_name_or_path=model_name_or_path,
            retain_loss=retain_loss,
            forget_weight=forget_weight,
            retain_weight=retain_weight,
            **kwargs,
        )
        self.beta1 = beta1
        self.beta2 = beta2

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        logps, mask = self.answer_logps(batch["forget"])
        logs = self.token_weight_log(losses.satimp_weights(logps, self.beta1, self.beta2), mask)
        return ForgetTerm(losses.satimp(logps, mask, self.beta1, self.beta2, per_example=True), logs)
