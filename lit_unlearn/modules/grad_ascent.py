"""Gradient ascent (GA): push the forget answers' likelihood down."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class GradAscent(UnlearningModule):
    """Gradient ascent on the forget set (Jang et al. 2023; G-effect paper §4.1), ``L = −mean_tokens(ce)``.

    Its gradient weights every token by the inverse confidence ``1/p_i``: the less likely a token already is, the
    harder GA pushes, which the G-effect paper identifies as the cause of excessive unlearning.

    Per-example share (G-effect callback): a token mean over the micro-batch, so forget example b's share of L_forget
    is ``(1/N) Σ_{i ∈ answer(b)} log p_i`` with N the answer tokens of the whole micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        retain_loss: Retain regulariser; plain GA has none (the G-effect paper's ``ga``; its ``ga_kl`` is
            ``retain_loss="kl"``, its ``gd`` is :class:`~lit_unlearn.modules.GradDiff`).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(self, model_name_or_path: str, retain_loss: RetainLoss = "none", **kwargs: Any) -> None:
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        return ForgetTerm(losses.gradient_ascent(*self.answer_logps(batch["forget"]), per_example=True))
