"""UNDIAL: self-distillation towards the initial model with the answer token's logit lowered."""

from collections.abc import Mapping
from typing import Any, Literal

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


class UNDIAL(UnlearningModule):
    """UNDIAL (Dong et al., NAACL 2025): ``L = γ · mean_t CE(softmax(z^ref_t − β e_{y_t}), p_θ,t) + α · L_retain``.

    The target is the frozen initial model's distribution with only the answer token made less likely, so the update
    stays close to the model before unlearning everywhere else; the loss is bounded, unlike gradient ascent's.
    Defaults: β = 10 and no retain term, OpenUnlearning's UNDIAL config (its ``α = 0``; its README: the paper uses
    β ∈ {3, 10, 30} and no retain set). That config's learning rate is 1e-4 over 10 epochs.

    Per-example share (G-effect callback): a position mean over the micro-batch, so forget example b's share of
    L_forget is ``Σ_{t ∈ positions(b)} ℓ_t / N`` with N the averaged positions of the whole micro-batch (its answer
    positions; with ``positions="all"`` every position, B·(T−1)).

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn (also the frozen teacher).
        beta: How far the answer token's logit is lowered, β ≥ 0 (β = 0 distils the teacher unchanged).
        positions: ``"answer"``: mean over answer positions (like every loss here); ``"all"``: OpenUnlearning's mean
            over every position, prompt and padding included (plain distillation there).
        retain_loss: Retain regulariser, ``"none"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    reference_parts = ("forget",)
    reference_logits_parts = ("forget",)

    def __init__(
        self,
        model_name_or_path: str,
        beta: float = 10.0,
        positions: Literal["answer", "all"] = "answer",
        retain_loss: RetainLoss = "none",
        **kwargs: Any,
    ) -> None:
        losses.check_positive(beta, f"{type(self).__name__} beta", allow_zero=True)
        if positions not in ("answer", "all"):
            raise ValueError(f"{type(self).__name__}: positions={positions!r}; choose 'answer' or 'all'.")
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.beta = beta
        self.positions = positions

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        forget = batch["forget"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        shares = losses.undial(
            logits, reference.logits["forget"], forget["labels"], self.beta, self.positions, per_example=True
        )
        return ForgetTerm(shares)
