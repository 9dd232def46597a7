"""PDU: primal-dual unlearning, a logit-flattening forget loss under a bound on the retain loss."""

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


def dual_ascent(dual: float, retain: float, epsilon: float, step_size: float) -> float:
    """One projected dual-ascent step on the constraint ``R ≤ ε``: ``λ ← max(0, λ + η · (R − ε))``.

    Args:
        dual: The current dual variable λ ≥ 0.
        retain: The retain loss R of the step (averaged over its micro-batches and ranks).
        epsilon: The bound ε.
        step_size: The dual step size η ≥ 0.

    Returns:
        The next λ: it grows while the constraint is violated (R > ε) and shrinks, never below 0, while it holds.

    Example:
        >>> dual_ascent(100.0, 0.25, epsilon=0.3, step_size=5.0)
        99.75
    """
    return max(0.0, dual + step_size * (retain - epsilon))


class PDU(UnlearningModule):
    """PDU (Entesari et al., "Constrained Entropic Unlearning", arXiv 2506.05314): ``min F`` subject to ``R ≤ ε``.

    ``F`` flattens the output on the forget answers (:func:`~lit_unlearn.losses.pdu_forget`, the squared gap between
    the largest and the mean logit); ``R`` is the retain loss. Each micro-batch minimises the Lagrangian
    ``L = γ · F + λ · (R − ε)``; once per optimiser step the dual variable takes one projected ascent step
    ``λ ← max(0, λ + η · (R̄ − ε))`` (:func:`dual_ascent`), R̄ being the retain loss averaged over the step's
    micro-batches and over all ranks, so every rank holds the same λ. λ starts at ``retain_weight`` (α), stays there
    during the first ``dual_warmup_epochs`` epochs, is logged as ``train/dual`` and saved in checkpoints.

    ``retain_loss`` chooses the constrained quantity R: ``"nll"`` (the paper's, retain answer NLL), ``"kl"`` (the
    KL from the frozen model on the retain answers, so ε bounds a KL) or ``"none"`` (no constraint: ``L = γ · F`` and
    λ is unused). Unlike the other objectives, R is computed even while λ = 0, since λ may have to rise again.

    Per-example share (G-effect callback): F is a position mean over the micro-batch, so forget example b's share of
    F is ``Σ_{t ∈ answer(b)} gap_t² / N`` with N the answer positions of the whole micro-batch; the regulariser term
    of ``objective_terms`` is ``λ · (R − ε)`` with the current λ.

    Differences from OpenUnlearning's PDU: λ moves once per optimiser step, not once per micro-batch, and with the
    retain loss of all ranks rather than a per-rank λ; the forget mask is shifted like every loss here (see
    :func:`~lit_unlearn.losses.pdu_forget`); its ``primal_dual=False`` is ``dual_step_size=0`` here, and its
    once-per-epoch update mode is not offered.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        epsilon: ε ≥ 0, the bound on the retain loss. Required: set it somewhat above the retain loss of the model
            before unlearning (the authors' README). OpenUnlearning leaves it unset (``???``); its community TOFU run
            uses 0.3 with Llama-3.2.
        dual_step_size: η ≥ 0 (OpenUnlearning's config: 1; the community TOFU run: 5). 0 keeps λ at α.
        dual_warmup_epochs: Epochs during which λ stays at α (OpenUnlearning's config and the TOFU run: 5 of 10).
            Counted in epochs, like the published settings: an epoch count carries over between forget splits, batch
            sizes and device counts, a step count does not.
        retain_loss: The constrained retain quantity R: ``"nll"`` (default), ``"kl"`` or ``"none"``.
        forget_weight: γ (OpenUnlearning: 1).
        retain_weight: α, the initial dual variable λ₀ (OpenUnlearning's config: 1; the TOFU run: 100, as F is a
            squared logit gap and can be large).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    checkpoint_key = "pdu_dual"
    """Where checkpoints hold λ (beside ``state_dict``)."""

    def __init__(
        self,
        model_name_or_path: str,
        epsilon: float,
        dual_step_size: float = 1.0,
        dual_warmup_epochs: int = 0,
        retain_loss: RetainLoss = "nll",
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        losses.check_positive(epsilon, f"{name} epsilon", allow_zero=True)
        if not math.isfinite(epsilon):
            raise ValueError(f"{name} epsilon must be finite, got {epsilon}.")
        losses.check_positive(dual_step_size, f"{name} dual_step_size", allow_zero=True)
        losses.check_positive(dual_warmup_epochs, f"{name} dual_warmup_epochs", allow_zero=True)
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.epsilon = epsilon
        self.dual_step_size = dual_step_size
        self.dual_warmup_epochs = dual_warmup_epochs
        # A Python float, not a buffer: precision="bf16-true" casts floating buffers to bf16, which rounds 100.25 to
        # 100. A float is exact and, updated from the same all-reduced R̄, equal on every rank.
        self.dual = float(self.retain_weight)
        self._retain_sum: Tensor | None = None
        self._retain_count = 0

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        forget = batch["forget"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        return ForgetTerm(losses.pdu_forget(logits, forget["labels"], per_example=True))

    @property
    @override
    def has_regularizer(self) -> bool:
        # R is needed at every step for the dual update, even while λ = 0: λ may have to rise again.
        return self.retain_loss != "none"

    @override
    def regularizer(self, retain: Tensor) -> Tensor:
        """The Lagrangian's constraint term ``λ · (R − ε)`` with the current λ."""
        return self.dual * (retain - self.epsilon)

    @override
    def regularizer_logs(self) -> dict[str, float]:
        return {"train/dual": self.dual}

    @override
    def observe_retain(self, retain: Tensor) -> None:
        self._retain_sum = retain if self._retain_sum is None else self._retain_sum + retain
        self._retain_count += 1

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        # An earlier fit stopped mid-step must not leak its micro-batches into this run's first dual update.
        self._retain_sum, self._retain_count = None, 0

    @override
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Called once per optimiser step, after every micro-batch of the step has formed its loss with the same λ.
        retain_sum, count = self._retain_sum, self._retain_count
        self._retain_sum, self._retain_count = None, 0
        if retain_sum is None or self.current_epoch < self.dual_warmup_epochs:
            return
        # Sum and count over all ranks (every rank takes part: all see the same epoch and retain_loss).
        totals = self.trainer.strategy.reduce(torch.stack([retain_sum, retain_sum.new_tensor(count)]), reduce_op="sum")
        self.dual = dual_ascent(self.dual, float(totals[0] / totals[1]), self.epsilon, self.dual_step_size)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.checkpoint_key] = self.dual

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.checkpoint_key not in checkpoint:
            raise KeyError(
                f"{type(self).__name__}: the checkpoint has no {self.checkpoint_key!r} entry (the dual variable), so "
                "it was not written by PDU; start a new PDU run from the model instead of resuming this checkpoint."
            )
        self.dual = float(checkpoint[self.checkpoint_key])
