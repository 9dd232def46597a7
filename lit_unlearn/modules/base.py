"""``UnlearningModule``: the model to unlearn, its frozen reference, and the objective
``forget_weight·L_forget + retain_weight·L_retain`` (OpenUnlearning's γ and α).

Each objective is a small subclass that implements :meth:`UnlearningModule.forget_term` over the log-probs this base
class computes: L_forget split over the forget examples (a :class:`ForgetTerm`), so that the training loss, the
G-effect callback's objective terms and its per-example shares are one computation. Forward passes live here, so every
objective does exactly one forward with gradient per batch part and at most one reference forward per batch (all parts
that need it, concatenated), under ``no_grad``.

The module implements the G-effect callback's protocols (``callbacks/g_effect.py``): ``risk_losses``,
``per_example_risks``, ``objective_terms`` (``{"unlearn": γ·L_forget, "regularizer": α·L_retain}``),
``per_example_unlearn`` (each forget example's share of the unlearn term) and ``example_ids`` (each forget example's
row index in the forget split file and its question, carried by the batches of
:class:`~lit_unlearn.data.TOFUUnlearnDataModule`).
"""

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypedDict, get_args

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from transformers import PreTrainedModel
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.data.collate import pad_to_width
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.models import DType, LoraSettings, load_causal_lm
from lit_unlearn.modules.causal_lm import AdamWSettings, CausalLMModule, Decay, ScheduleSettings

RetainLoss = Literal["none", "nll", "kl"]
"""The retain regularisers every objective offers; an objective with its own (RMU) extends this Literal."""


class ExampleId(TypedDict):
    """A forget example's identity in the G-effect callback's instance rows and ranking (``example_ids``).

    Args:
        index: Its row index in the forget split file (``forget10.json`` line ``index``, 0-based).
        question: Its question, so a ranking can be checked against the split it is applied to.
    """

    index: int
    question: str


@dataclass(frozen=True)
class ForgetTerm:
    """An objective's forget term L_forget on one micro-batch, split over the micro-batch's forget examples.

    Args:
        shares: ``(B,)`` each forget example's exact additive share of L_forget (unweighted by ``forget_weight``):
            ``L_forget = shares.sum()``. The share follows the objective's own averaging (see the objective's
            docstring), e.g. ``Σ_{t ∈ answer(b)} ℓ_t / N`` for a token mean over the micro-batch's N answer tokens.
        logs: Detached diagnostics ``training_step`` logs next to the loss (e.g. ``train/mean_token_weight``).
    """

    shares: Tensor
    logs: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def value(self) -> Tensor:
        """L_forget itself: the sum of the shares."""
        return self.shares.sum()


@dataclass(frozen=True)
class StepTerms:
    """The objective's terms on one micro-batch, before weighting.

    Args:
        forget: L_forget, split over the forget examples.
        retain: L_retain; ``None`` when the objective has no regulariser (``retain_loss="none"`` or weight 0), or when
            it was not asked for.
    """

    forget: ForgetTerm
    retain: Tensor | None


@dataclass(frozen=True)
class ReferenceOutputs:
    """What the frozen reference computed on one training batch: log-probs or logits of the parts that need them.

    Args:
        batch: The training batch (``"forget"``, ``"retain"``, maybe ``"idk"``).
        logits: Reference logits (B, T, V) of each part whose full distribution is needed (``"retain"`` for the KL
            retain term, :attr:`UnlearningModule.reference_logits_parts`), each as wide as its own part.
        token_logps: Reference token log-probs (B, T-1) of the parts that need only those (the rest of
            :attr:`UnlearningModule.reference_parts`), taken from their logits at once so that the (B, T, V) logits
            do not live through the step.
    """

    batch: Mapping[str, Batch]
    logits: Mapping[str, Tensor]
    token_logps: Mapping[str, Tensor] = field(default_factory=dict)

    def logps(self, part: str) -> Tensor:
        """Reference token log-probs (B, T-1) of ``batch[part]``'s labels; the mask is the model's own (same labels).

        Raises:
            KeyError: ``part`` has no reference outputs: the objective must list it in ``reference_parts``.
        """
        if part in self.token_logps:
            return self.token_logps[part]
        if part not in self.logits:
            raise KeyError(
                f"No reference logits for batch part {part!r} (computed: {sorted({*self.logits, *self.token_logps})});"
                " add it to the objective's reference_parts."
            )
        logps, _ = losses.token_logps(self.logits[part], self.batch[part]["labels"])
        return logps


class UnlearningModule(CausalLMModule):
    """Base class of every unlearning objective: loss = ``forget_weight · L_forget + retain_weight · L_retain``.

    The retain term is ``"nll"`` (gradient difference: mean answer NLL on the retain batch), ``"kl"`` (forward
    KL(p_ref ‖ p_θ) on the retain answer positions, from the frozen model before unlearning) or ``"none"``.
    Batches are ``{"forget": Batch, "retain": Batch}`` (plus ``"idk"`` for refusal objectives), as produced by
    :class:`lit_unlearn.data.TOFUUnlearnDataModule`.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn (the fine-tuned target).
        retain_loss: Retain regulariser, one of :attr:`retain_losses`: ``"nll"`` (GD), ``"kl"`` or ``"none"`` (an
            objective may add its own, e.g. RMU's ``"rmu"``).
        forget_weight: Weight of the forget term (γ in OpenUnlearning).
        retain_weight: Weight of the retain regulariser (OpenUnlearning calls it α; it is not WTNPO's exponent
            ``alpha``). The G-effect paper's code ties the KL weight of ``npo_kl`` to NPO's β (set both to the same
            number to reproduce it); every other ``*_kl`` and ``gd`` of that code uses 1.
        kl_positions: Where the ``"kl"`` retain term averages: ``"answer"`` (default: the retain answer positions, a
            value independent of prompt length and padding) or ``"all"`` (every position of the padded retain batch,
            prompt and padding included: the G-effect paper's code and OpenUnlearning, ``reduction="batchmean"``).
        tokenizer_name: Hub id or local directory of the tokenizer when it is not shipped with the weights
            (TOFU's released Phi-1.5 targets use the base Phi-1.5 tokenizer); ``None``: ``model_name_or_path``. On
            the command line the data module tokenizes with the same tokenizer (linked by ``LitUnlearnCLI``).
        lr: Peak learning rate of the default AdamW optimiser; ``None``: 1e-5 (TOFU: 1e-5 for Llama, 2e-5 for Phi).
        weight_decay: Weight decay of the default AdamW optimiser; ``None``: 0.01 (TOFU; the G-effect paper's code:
            0).
        betas: Adam betas of the default optimiser; ``None``: (0.9, 0.999).
        optimizer: Replaces the default AdamW when given; receives the trainable parameters. Giving ``lr``,
            ``weight_decay`` or ``betas`` with it is an error.
        warmup_epochs: Length of the linear warm-up in epochs; ``None``: 1 (TOFU and the G-effect paper).
        warmup_from_zero: Whether the warm-up starts at 0 (the first step does not move the weights, as in
            transformers' schedules) or at ``lr / W``; ``None``: ``True``.
        decay: Decay after the warm-up, ``"linear"`` or ``"cosine"``; ``None``: ``"linear"``.
        min_lr_ratio: Where the decay ends, as a fraction of ``lr``; ``None``: 0.
        scheduler: Replaces the default warm-up/decay schedule when given; stepped every optimiser step. Giving
            ``warmup_epochs``, ``warmup_from_zero``, ``decay`` or ``min_lr_ratio`` with it is an error.
        dtype: Weights dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        attn_implementation: Attention kernel passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``, ...).
        lora: Train LoRA adapters only (needs ``pip install 'lit-unlearn[lora]'``); the reference is then the base
            model with the adapters disabled, so no second copy of the weights is held.
        output_dir: Where the unlearned model and tokenizer are saved (``save_pretrained``) when ``fit`` ends.
        overwrite_output_dir: Let ``fit`` replace a model already saved in ``output_dir``; ``False``: ``fit`` refuses
            to start there, so an earlier run's model is never lost by running again.
        evaluation: TOFU evaluation settings for ``validate``/``test`` and in-training validation.
        gradient_checkpointing: Recompute each decoder block's activations in the backward pass instead of
            storing them (non-reentrant activation checkpointing): activation memory falls from every block's
            to about one block's, for roughly one extra forward pass per step.
        backward_per_part: Run the unlearn term's backward right after its forward, before the retain forward, so
            that the activations of one batch part, not of both, are alive at once: the step's peak falls by about
            one part's activations, at no extra compute, and the gradient is the same sum. Single process, automatic
            optimisation, no fp16 loss scaling (an error otherwise: DDP's and the scaler's hooks expect one backward
            per step); on the steps whose graph the G-effect callback records (``terms``, ``reuse_step_forward``),
            the step keeps one backward.
    """

    reference_parts: ClassVar[tuple[str, ...]] = ()
    """Batch parts whose reference log-probs :meth:`forget_term` needs (e.g. ``("forget",)`` for NPO)."""
    reference_logits_parts: ClassVar[tuple[str, ...]] = ()
    """Those of :attr:`reference_parts` whose full reference logits it needs, not only the label log-probs (UNDIAL)."""
    retain_losses: ClassVar[tuple[str, ...]] = get_args(RetainLoss)
    """The ``retain_loss`` values this class accepts: the arguments of the Literal its signature declares."""
    default_adamw = AdamWSettings(lr=1e-5, weight_decay=0.01)
    default_schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.0)

    def __init__(
        self,
        model_name_or_path: str,
        retain_loss: str = "nll",
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        kl_positions: losses.KLPositions = "answer",
        tokenizer_name: str | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_epochs: float | None = None,
        warmup_from_zero: bool | None = None,
        decay: Decay | None = None,
        min_lr_ratio: float | None = None,
        scheduler: LRSchedulerCallable | None = None,
        dtype: DType = "auto",
        attn_implementation: str | None = None,
        lora: LoraSettings | None = None,
        output_dir: str | None = None,
        overwrite_output_dir: bool = False,
        evaluation: EvalSettings | None = None,
        gradient_checkpointing: bool = False,
        backward_per_part: bool = False,
    ) -> None:
        if retain_loss not in self.retain_losses:
            raise ValueError(f"{type(self).__name__}: retain_loss={retain_loss!r}; choose one of {self.retain_losses}.")
        if forget_weight < 0 or retain_weight < 0:
            raise ValueError(f"forget_weight and retain_weight must be ≥ 0, got {forget_weight} and {retain_weight}.")
        if kl_positions not in get_args(losses.KLPositions):
            raise ValueError(
                f"{type(self).__name__}: kl_positions={kl_positions!r}; choose 'answer' (answer positions) or 'all' "
                "(every position, the G-effect paper's code and OpenUnlearning)."
            )
        super().__init__(
            model_name_or_path=model_name_or_path,
            tokenizer_name=tokenizer_name,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            optimizer=optimizer,
            warmup_epochs=warmup_epochs,
            warmup_from_zero=warmup_from_zero,
            decay=decay,
            min_lr_ratio=min_lr_ratio,
            scheduler=scheduler,
            dtype=dtype,
            attn_implementation=attn_implementation,
            lora=lora,
            output_dir=output_dir,
            overwrite_output_dir=overwrite_output_dir,
            evaluation=evaluation,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.retain_loss = retain_loss
        self.forget_weight = forget_weight
        self.retain_weight = retain_weight
        self.kl_positions = kl_positions
        self.backward_per_part = backward_per_part
        # backward_per_part: this micro-batch's gradients were zeroed before its early backward (skip Lightning's).
        self._zeroed_early = False
        self.reference_model: PreTrainedModel | None = None
        if self.needs_reference and not self.uses_lora:
            self.reference_model = load_causal_lm(
                model_name_or_path, dtype=dtype, attn_implementation=attn_implementation
            )
            self.reference_model.requires_grad_(False).eval()
        # The reference is rebuilt from model_name_or_path, never restored from a checkpoint (it is not saved).
        self.strict_loading = False
        self.register_state_dict_post_hook(_without_reference)
        # Graph-reuse G-effect (GEffectCallback(reuse_step_forward=True)): while a list, every training_step appends
        # the risks of its own forward, and backward keeps the graph for the callback's risk gradients.
        self._step_risks: list[dict[str, Tensor]] | None = None
        self._risk_parts: dict[int, str] = {}
        self._recorded: dict[str, Tensor] = {}
        # Per-term G-effect (GEffectCallback(terms=True)): while a dict, training_step puts the terms of its loss in it.
        self._loss_terms: dict[str, Tensor] | None = None
        # Set by the callback once it has put the unlearn term's gradient in .grad: the next backward skips that term.
        self._skip_unlearn = False
        # Between fit start and Lightning's eval-mode check: the warning filter that spares the frozen reference.
        self._eval_check_filter: warnings.catch_warnings | None = None

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def needs_reference(self) -> bool:
        """Whether a frozen copy of the model before unlearning is needed (reference log-probs, KL, RMU)."""
        return bool(self.reference_parts) or self.retain_loss == "kl"

    @override
    def models_to_shard(self) -> list[nn.Module]:
        # The frozen reference is sharded like the model: whole on every device it would cost one full copy of the
        # weights per device, the very memory sharding frees. Its forward then all-gathers one block at a time too.
        return [self.model] if self.reference_model is None else [self.model, self.reference_model]

    @override
    def train(self, mode: bool = True) -> "UnlearningModule":
        super().train(mode)
        # Lightning switches the whole module to train mode at fit start; the reference must stay deterministic.
        if self.reference_model is not None:
            self.reference_model.eval()
        return self

    def _hide_frozen_reference_from_eval_mode_check(self) -> None:
        """Silence Lightning's "Found N module(s) in eval mode" warning at fit start for the frozen reference alone.

        The reference is in eval mode on purpose (:meth:`train`). The filter matches exactly the reference's module
        count, so a module of the user's own left in eval mode still warns, and it lives only until the check has
        run (:meth:`on_train_start`, or :meth:`teardown` if the fit stops before).
        """
        if self.reference_model is None or self._eval_check_filter is not None:
            return
        count = sum(1 for _ in self.reference_model.modules())
        self._eval_check_filter = warnings.catch_warnings()
        self._eval_check_filter.__enter__()
        warnings.filterwarnings("ignore", message=rf"Found {count} module\(s\) in eval mode at the start of training")

    def _restore_eval_mode_check(self) -> None:
        if self._eval_check_filter is not None:
            self._eval_check_filter.__exit__(None, None, None)
            self._eval_check_filter = None

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self._restore_eval_mode_check()

    @override
    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        self._restore_eval_mode_check()

    # -------------------------------------------------------------------------------------------- forward passes
    def answer_logps(self, part: Batch) -> tuple[Tensor, Tensor]:
        """One forward with gradient: per-token answer log-probs and mask, each (B, T-1)."""
        logits = self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        logps, mask = losses.token_logps(logits, part["labels"])
        self._record_risk(part, logps, mask)
        return logps, mask

    def reference_logits(self, parts: Mapping[str, Batch]) -> dict[str, Tensor]:
        """Logits of the frozen reference on several batch parts, in ONE forward.

        The parts are right-padded to a common width and stacked: with right padding and a causal mask, the logits
        at each sequence's real positions do not depend on the padding, so one pass serves every part.
        """
        if not parts:
            return {}
        width = max(p["input_ids"].shape[1] for p in parts.values())
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.cat([pad_to_width(p["input_ids"], width, pad_id) for p in parts.values()])
        attention_mask = torch.cat([pad_to_width(p["attention_mask"], width, 0) for p in parts.values()])
        with self.frozen_reference() as reference:
            logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits  # (ΣB, width, V)
        out, start = {}, 0
        for name, part in parts.items():
            b, t = part["input_ids"].shape
            out[name] = logits[start : start + b, :t]
            start += b
        return out

    @contextmanager
    def frozen_reference(self) -> Iterator[nn.Module]:
        """The model before unlearning, to run forwards on under ``no_grad``.

        With LoRA it is the trained model itself with its adapters disabled for the duration of the block (no second
        copy of the weights); otherwise the frozen :attr:`reference_model`.

        Raises:
            RuntimeError: the module holds no reference (its objective declared no need for one).
        """
        with torch.no_grad():
            if self.uses_lora:
                with self.model.disable_adapter():
                    yield self.model
            elif self.reference_model is None:
                raise RuntimeError(
                    f"{type(self).__name__} asked for the reference model but holds none; an objective that needs "
                    "reference outputs lists the batch parts in reference_parts (or overrides needs_reference)."
                )
            else:
                yield self.reference_model

    # ------------------------------------------------------------------------------------------------ objective
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        """The objective's forget term L_forget (minimised), split over the forget examples of ``batch``.

        Args:
            batch: The whole training batch (``"forget"``, ``"retain"``, maybe ``"idk"``).
            reference: The reference's outputs on the parts named in :attr:`reference_parts`
                (``reference.logps("forget")``).

        Returns:
            The per-example shares (``(B,)``, one per forget example, summing to L_forget) and the diagnostics to log.
            Must be a pure function of the parameters (no logging, no ``.item()``): the G-effect callback
            differentiates the shares in forward mode.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forget_term.")

    def retain_term(self, retain: Batch, reference_logits: Tensor | None) -> Tensor:
        """The retain regulariser L_retain on a retain batch part (one forward with gradient)."""
        logits = self.model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        if self.retain_loss == "kl":
            if self._risk_parts:
                self._record_risk(retain, *losses.token_logps(logits, retain["labels"]))
            return losses.kl_divergence(logits, reference_logits, retain["labels"], self.kl_positions)
        logps, mask = losses.token_logps(logits, retain["labels"])
        self._record_risk(retain, logps, mask)
        return losses.nll(logps, mask)

    @property
    def has_regularizer(self) -> bool:
        """Whether the objective has a retain term: a ``retain_loss`` other than ``"none"`` with a positive weight."""
        return self.retain_loss != "none" and self.retain_weight > 0

    def regularizer(self, retain: Tensor) -> Tensor:
        """The regulariser term of the loss from L_retain: ``retain_weight · L_retain``."""
        return self.retain_weight * retain

    def observe_retain(self, retain: Tensor) -> None:
        """Called by ``training_step`` (only there) with each micro-batch's detached L_retain; a no-op here."""

    def regularizer_logs(self) -> dict[str, float]:
        """Values ``training_step`` logs with the regulariser (e.g. PDU's dual variable); none here."""
        return {}

    def step_terms(
        self,
        batch: Mapping[str, Batch],
        regularizer: bool = True,
        after_forget: Callable[[ForgetTerm], None] | None = None,
    ) -> StepTerms:
        """The objective's terms on one micro-batch: the reference forward, then L_forget and (maybe) L_retain.

        Args:
            batch: One training batch.
            regularizer: Also compute L_retain (when :attr:`has_regularizer`); ``False`` skips its forward.
            after_forget: Called with L_forget before the retain forward (``backward_per_part``'s backward).
        """
        with_retain = regularizer and self.has_regularizer
        keep = [*self.reference_logits_parts, *(["retain"] if with_retain and self.retain_loss == "kl" else [])]
        wanted = dict.fromkeys([*self.reference_parts, *keep])
        logits = self.reference_logits({name: batch[name] for name in wanted})
        # The parts share the storage of one forward's logits: the log-probs are taken now and the logits kept are
        # copied out, so the (ΣB, T, V) tensor goes here and no part's logits outlive their use.
        reference = ReferenceOutputs(
            batch,
            logits={name: logits[name].contiguous() if len(logits) == 1 else logits[name].clone() for name in keep},
            token_logps={
                name: losses.token_logps(logits[name], batch[name]["labels"])[0] for name in wanted if name not in keep
            },
        )
        del logits
        forget = self.forget_term(batch, reference)
        if after_forget is not None:
            after_forget(forget)
        retain = self.retain_term(batch["retain"], reference.logits.get("retain")) if with_retain else None
        return StepTerms(forget=forget, retain=retain)

    @override
    def training_step(self, batch: Mapping[str, Batch], batch_idx: int) -> Tensor:
        if self._step_risks is None:
            return self._objective_step(batch, batch_idx)
        # Recording for the G-effect callback: the forwards below note the risks of these two parts as they go.
        self._risk_parts = {id(batch[name]): name for name in ("forget", "retain")}
        self._recorded = {}
        try:
            loss = self._objective_step(batch, batch_idx)
        finally:
            self._risk_parts = {}
        missing = sorted({"forget", "retain"} - set(self._recorded))
        if missing:
            raise RuntimeError(
                f"GEffectCallback(reuse_step_forward=True): {type(self).__name__}.training_step did not forward the "
                f"{' and '.join(missing)} part through answer_logps/retain_term, so the risks cannot come from its "
                "own forward (e.g. retain_loss='none'). Use the callback's default reuse_step_forward=False."
            )
        self._step_risks.append(self._recorded)
        self._recorded = {}
        return loss

    def _objective_step(self, batch: Mapping[str, Batch], batch_idx: int) -> Tensor:
        """The objective ``forget_weight·L_forget + <regulariser term>`` on one batch, logged."""
        # backward_per_part: the unlearn term's gradient is in .grad before the retain forward; the loss returned
        # then carries the regulariser's graph only, and the unlearn term's value.
        early = (
            self.backward_per_part
            and self.has_regularizer
            and torch.is_grad_enabled()
            and self._loss_terms is None
            and self._step_risks is None
        )
        terms = self.step_terms(batch, after_forget=(lambda f: self._backward_unlearn(f, batch_idx)) if early else None)
        forget = terms.forget.value
        loss = unlearn = self.forget_weight * forget
        logs: dict[str, Tensor | float] = {"train/forget_loss": forget.detach(), **terms.forget.logs}
        recorded = {"unlearn": unlearn}
        if terms.retain is not None:
            recorded["regularizer"] = self.regularizer(terms.retain)
            loss = (loss.detach() if early else loss) + recorded["regularizer"]
            logs["train/retain_loss"] = terms.retain.detach()
            logs.update(self.regularizer_logs())
            self.observe_retain(terms.retain.detach())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items())
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite loss at global step {self.global_step} ({parts}). "
                "Lower the learning rate, or use bf16/fp32 instead of fp16."
            )
        logs["train/loss"] = loss.detach()
        if self._loss_terms is not None:
            self._loss_terms = recorded
        batch_size = batch["forget"]["input_ids"].shape[0]
        self.log_dict(logs, prog_bar=True, batch_size=batch_size)
        return loss

    def _backward_unlearn(self, forget: ForgetTerm, batch_idx: int) -> None:
        """``backward_per_part``: differentiate the unlearn term now, scaled as Lightning scales the loss."""
        trainer = self.trainer
        if batch_idx % trainer.accumulate_grad_batches == 0:
            # Lightning zeroes the gradients of a new accumulation window between training_step and its backward
            # (same condition): that would erase this earlier backward, so they are zeroed now and that call skipped.
            for optimizer in trainer.optimizers:
                super().optimizer_zero_grad(self.current_epoch, batch_idx, optimizer)
            self._zeroed_early = True
        (self.forget_weight * forget.value / trainer.accumulate_grad_batches).backward()

    @override
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._zeroed_early:
            self._zeroed_early = False
            return
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._hide_frozen_reference_from_eval_mode_check()
        trainer = self.trainer
        if self.backward_per_part and (
            trainer.world_size > 1 or trainer.scaler is not None or not self.automatic_optimization
        ):
            raise ValueError(
                f"{type(self).__name__}(backward_per_part=True) runs on one process with automatic optimisation and "
                f"no fp16 loss scaling (here: {trainer.world_size} process(es), precision {trainer.precision!r}): "
                "DDP's gradient synchronisation and the fp16 scaler expect one backward per step. Set "
                "backward_per_part=False, or use gradient_checkpointing to save activation memory there."
            )

    @staticmethod
    def token_weight_log(weights: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The mean detached token weight of a weighted objective (WGA, TNPO, WTNPO, SatImp) over answer tokens."""
        return {"train/mean_token_weight": weights.detach()[mask].mean()}

    # ------------------------------------------------------------------------------------------------ G-effect
    def _record_risk(self, part: Batch, logps: Tensor, mask: Tensor) -> None:
        """Note ``part``'s risk (mean answer NLL) from a forward of the step being recorded, once per part."""
        name = self._risk_parts.get(id(part))
        if name is not None and name not in self._recorded:
            self._recorded[name] = losses.nll(logps, mask)

    def keep_step_risks(self, keep: bool) -> None:
        """:class:`~callbacks.SupportsStepRisks`: start recording the risks of each ``training_step``'s own forward
        (``True``; earlier records are dropped), or stop and drop them with their graphs (``False``)."""
        self._step_risks = [] if keep else None

    def step_risks(self) -> list[dict[str, Tensor]]:
        """:class:`~callbacks.SupportsStepRisks`: the forget and retain risks of each recorded ``training_step``."""
        return list(self._step_risks or [])

    @override
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self._skip_unlearn:
            self._skip_unlearn = False
            regularizer = (self._loss_terms or {}).get("regularizer")
            if regularizer is None:
                return  # the loss is the unlearn term alone, whose gradient the callback has added to .grad
            loss = regularizer / self.trainer.accumulate_grad_batches
        if self._step_risks is not None:
            # The callback differentiates the recorded risks through this same graph after this backward.
            kwargs["retain_graph"] = True
        super().backward(loss, *args, **kwargs)

    def skip_unlearn_backward(self) -> None:
        """:class:`~callbacks.SupportsSkipUnlearnBackward`: the callback has added the unlearn term's gradient of
        this micro-batch to ``.grad``; the next ``backward`` differentiates the regulariser term alone."""
        self._skip_unlearn = True

    def keep_loss_terms(self, keep: bool) -> None:
        """:class:`~callbacks.SupportsLossTerms`: start recording the terms of each ``training_step``'s loss
        (``True``), or stop and drop the last record (``False``)."""
        self._loss_terms = {} if keep else None

    def loss_terms(self) -> dict[str, Tensor]:
        """:class:`~callbacks.SupportsLossTerms`: ``{"unlearn": γ·L_forget, "regularizer": <the regulariser term>}``
        of the loss the latest ``training_step`` returned (only ``"unlearn"`` without a regulariser), with graph."""
        return dict(self._loss_terms or {})

    def risk_losses(self, batches: Sequence[Mapping[str, Batch]]) -> dict[str, Tensor]:
        """Mean answer NLL of the forget and retain parts of ``batches`` (the risks of the G-effect).

        Each micro-batch's risk is its token-mean NLL and the risks are averaged over micro-batches, matching how
        Lightning averages the accumulated objective gradient.
        """
        risks: dict[str, Tensor] = {}
        for name in ("forget", "retain"):
            per_batch = [losses.nll(*self.answer_logps(b[name])) for b in batches]
            risks[name] = torch.stack(per_batch).mean()
        return risks

    def per_example_risks(self, batches: Sequence[Mapping[str, Batch]]) -> dict[str, Tensor]:
        """Per-example mean answer NLL, shape (N,), of the forget and retain parts (per-instance G-effects)."""
        risks: dict[str, Tensor] = {}
        for name in ("forget", "retain"):
            per_example = []
            for b in batches:
                logps, mask = self.answer_logps(b[name])
                per_example.append(-(logps * mask).sum(-1) / mask.sum(-1))
            risks[name] = torch.cat(per_example)
        return risks

    def objective_terms(self, batches: Sequence[Mapping[str, Batch]]) -> dict[str, Tensor]:
        """The objective's terms on the step's micro-batches, for ``GEffectCallback(terms=True)``.

        ``{"unlearn": forget_weight · L_forget, "regularizer": <the regulariser term>}`` (only ``"unlearn"`` without a
        regulariser), each computed exactly as ``training_step`` computes it and averaged over the ``k`` micro-batches
        as Lightning averages accumulated gradients, so ``unlearn + regularizer`` is the mean of the losses
        ``training_step`` returns. The regulariser term is ``retain_weight · L_retain`` (PDU: ``λ · (R − ε)`` with the
        current λ).
        """
        unlearn, regularizer = [], []
        for batch in batches:
            terms = self.step_terms(batch)
            unlearn.append(self.forget_weight * terms.forget.value)
            if terms.retain is not None:
                regularizer.append(self.regularizer(terms.retain))
        out = {"unlearn": torch.stack(unlearn).mean()}
        if regularizer:
            out["regularizer"] = torch.stack(regularizer).mean()
        return out

    def per_example_unlearn(self, batches: Sequence[Mapping[str, Batch]]) -> Tensor:
        """Each forget example's share of ``objective_terms(batches)["unlearn"]``, shape (N,), summing to it.

        Example i of micro-batch j contributes ``forget_weight / k · shares_j[i]`` with ``shares_j`` the objective's
        :class:`ForgetTerm` shares (its docstring states the share) and k the number of micro-batches; the examples
        are concatenated over the micro-batches in order. No retain forward is run.
        """
        shares = [self.step_terms(batch, regularizer=False).forget.shares for batch in batches]
        return self.forget_weight * torch.cat(shares) / len(batches)

    def example_ids(self, batches: Sequence[Mapping[str, Batch]]) -> list[ExampleId]:
        """The forget examples of ``batches`` in ``per_example_unlearn``'s order: row index in the forget split file
        and question, from the ``index`` and ``question`` the data module's collator puts in each forget part.

        Raises:
            KeyError: a forget part without ``index`` or ``question`` (a batch not built by
                :class:`~lit_unlearn.data.TOFUUnlearnDataModule`).
        """
        ids: list[ExampleId] = []
        for batch in batches:
            forget = batch["forget"]
            if "index" not in forget or "question" not in forget:
                raise KeyError(
                    f"{type(self).__name__}.example_ids: the forget batch part has no 'index'/'question' (keys: "
                    f"{sorted(forget)}). Batches from lit_unlearn.data.TOFUUnlearnDataModule carry them; add both to "
                    "hand-built batches, or turn off the G-effect callback's objective side."
                )
            indices = forget["index"].tolist()
            ids += [ExampleId(index=int(i), question=str(q)) for i, q in zip(indices, forget["question"], strict=True)]
        return ids


def _without_reference(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` post-hook: drop the frozen reference, which equals the model at ``model_name_or_path``.

    Storing it would double a checkpoint's size. Dropping it from the state dict itself, rather than from the
    checkpoint afterwards, also keeps it out of the keys a sharded checkpoint is saved and resumed with
    (``torch.distributed.checkpoint`` loads exactly the keys of the module's state dict).
    """
    for key in [k for k in state_dict if k.startswith(f"{prefix}reference_model.")]:
        del state_dict[key]
