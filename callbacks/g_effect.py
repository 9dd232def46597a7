"""The G-effect, measured online during training, as a drop-in Lightning callback.

The G-effect (Wang et al., ICLR 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
arXiv 2502.19301, Sec. 3) of a training step on a risk ``R`` is the inner product

    e = ∇_θ R(θ_t) · g_t,

where ``g_t`` is the objective gradient the optimiser is about to apply. For a plain gradient step
``θ_{t+1} = θ_t − η g_t`` the first-order change of the risk is ``R(θ_{t+1}) − R(θ_t) ≈ −η e``. In unlearning, ``R`` is
the answer NLL on the forget data (``e_u < 0`` is the goal: the forget risk rises) or on the retain data (``e_r ≥ 0``
or ≈ 0 is the goal; negative means collateral damage).

This module imports only ``torch`` and ``lightning`` (matplotlib lazily, for the optional PNG) so it can be vendored
into any Lightning project. The module being trained tells the callback what its risks are by implementing
:class:`SupportsRiskLosses`; per-instance G-effects additionally need :class:`SupportsPerExampleRisks`.
"""

import contextlib
import csv
import os
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from typing_extensions import override

#: Matches the block index in transformer parameter names: ``model.layers.3.``, ``transformer.h.3.``, ``blocks.3.``.
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\."

#: Named groups for the parameters outside the transformer blocks, tried in order after the layer pattern.
DEFAULT_GROUPS: dict[str, str] = {
    "embedding": r"embed_tokens|wte|wpe|embed_in|word_embeddings|embeddings",
    "final_norm": r"norm|ln_f",
    "lm_head": r"lm_head|embed_out",
}

#: Coarse depth groups in the spirit of the paper's figures (its code: embed / shallow / middle / deep / lm_head).
COARSE_NAMES = ("shallow", "middle", "deep")


@runtime_checkable
class SupportsRiskLosses(Protocol):
    """A LightningModule that can evaluate the risks whose G-effects are measured.

    ``risk_losses(batches)`` receives the micro-batches of one optimiser step (the same objects ``training_step``
    received) and returns differentiable scalar risks keyed by name, computed with plain forward passes of the module
    itself. Unlearning modules return ``{"forget": R_f, "retain": R_r}``, the mean answer NLL (token mean over the
    valid answer tokens of all the batches) on the forget and retain parts.
    """

    def risk_losses(self, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return the risks on ``batches`` as differentiable scalars keyed by risk name."""
        ...


@runtime_checkable
class SupportsPerExampleRisks(Protocol):
    """A LightningModule that can evaluate each example's own risk, for per-instance G-effects.

    ``per_example_risks(batches)`` returns, for each risk name of ``risk_losses``, a 1-D tensor with one value per
    example of ``batches`` (concatenated over the micro-batches in order): that example's mean answer NLL. It must be
    a pure function of the parameters (no ``requires_grad_`` calls, no in-place writes to parameters), because the
    callback differentiates it in forward mode with :func:`torch.func.jvp`.
    """

    def per_example_risks(self, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return one risk value per example of ``batches``, keyed by risk name."""
        ...


#: ``"group"``: a fine group (a block, a named group or a parameter); ``"coarse"``: a third of the blocks;
#: ``"total"``: the sum over all parameters.
_Level = Literal["group", "coarse", "total"]

#: The risk changes a step row carries, each with a running sum in :class:`GEffectRow`.
_CHANGES = ("predicted_change", "realised_change", "update_change")


class _StepValues(TypedDict):
    """The values of one measured step on one risk and group (a :class:`GEffectRow` without the running sums)."""

    step: int
    risk: str
    group: str
    level: _Level
    g_effect: float
    risk_value: float
    predicted_change: float
    realised_change: float | None
    update_change: float | None


class GEffectRow(_StepValues):
    """One row of :attr:`GEffectCallback.history`: one measured step, one risk, one parameter group.

    Keys: ``step`` (the ``global_step`` of the optimiser step); ``risk``; ``group`` (``"total"`` for the sum over the
    fine groups); ``level`` (``"group"``, ``"coarse"`` or ``"total"``); ``g_effect`` (∇R·g over the group);
    ``risk_value`` (R at θ_t); ``predicted_change`` (−Σ_p η_p ∇_pR·g_p, the first-order risk change of a plain SGD step
    with the optimiser's learning rates); ``realised_change`` (R(θ_{t+1}) − R(θ_t) on the same batches, total rows
    only, None otherwise or when ``realised_change`` is off); ``update_change`` (∇R·Δθ against the optimiser's real
    update, None when ``measure_update`` is off); and ``cumulative_predicted_change`` / ``cumulative_realised_change``
    / ``cumulative_update_change``: running sums over the measured steps of the run (None where the step's value is
    None), each step weighted by ``every_n_steps`` (exact sums when it is 1, an estimate of the whole-run change
    otherwise).
    """

    cumulative_predicted_change: float
    cumulative_realised_change: float | None
    cumulative_update_change: float | None


class GEffectInstanceRow(TypedDict):
    """One row of :attr:`GEffectCallback.instance_history`: example ``index`` of a measured step, ``∇ℓ_i·g``.

    ``index`` counts the examples of the step's micro-batches in order (under DDP: rank-major over the gathered
    ranks).
    """

    step: int
    risk: str
    index: int
    g_effect: float


@dataclass
class _PendingStep:
    """An optimiser step measured at θ_t, completed at θ_{t+1} (``on_train_batch_end``) into history rows.

    All values are already averaged (or gathered) over the ranks.
    """

    #: The ``global_step`` of the measured optimiser step.
    step: int
    #: The risk names, in the order of the rows of ``per_param`` and ``risk_values``.
    names: list[str]
    #: (risks, params) float64 per-parameter G-effects ``∇_pR·g_p``.
    per_param: Tensor
    #: (risks,) float64 risks ``R(θ_t)``.
    risk_values: Tensor
    #: (params,) float64 learning rate each parameter is stepped with (0 for parameters the optimiser does not own).
    lrs: Tensor
    #: Which parameter belongs to which group.
    layout: "_GroupLayout"
    #: The micro-batches the risks were evaluated on; ``realised_change`` evaluates them again at θ_{t+1}.
    batches: list[Any]
    #: The measured parameters, in the order of the columns of ``per_param``.
    params: list[Tensor]
    #: ``measure_update``: each risk's gradient at θ_t, one tensor per parameter (else empty).
    kept: list[list[Tensor]]
    #: ``measure_update``: each risk's (params,) float64 dots ``∇_pR·θ_t`` (else empty).
    anchors: list[Tensor]
    #: ``per_instance``: each risk's per-example G-effects ``∇ℓ_i·g``, float64 on the CPU (else None).
    instances: dict[str, Tensor] | None


class GEffectCallback(Callback):
    r"""Measure the G-effect of every ``every_n_steps``-th optimiser step, per layer group, step and instance.

    In ``on_before_optimizer_step`` the parameters' ``.grad`` hold the objective gradient exactly as the optimiser
    will use it: accumulated over micro-batches, DDP-averaged, AMP-unscaled, not yet clipped. The callback evaluates
    the module's risks on the step's micro-batches and takes their gradients with :func:`torch.autograd.grad` on the
    unwrapped module (never ``.grad``, never the DDP wrapper), under
    :func:`~lightning.pytorch.utilities.seed.isolate_rng` and the precision plugin's autocast, so the training
    trajectory is bit-identical with and without the callback.
    Dot products accumulate in float32; under DDP the local dots are averaged over ranks (one all-reduce), which equals
    the global G-effect exactly when the ranks' batches have equal sizes.

    The risk forward runs in the module's current mode (train mode during fit, as in the paper's code): with dropout
    it is a stochastic estimate, and its random draws do not advance the training RNG. Gradient clipping happens after
    the hook, so the G-effect uses the unclipped gradient.

    Args:
        every_n_steps: Measure on optimiser steps whose ``global_step`` is a multiple of this.
        group_by: ``"layer"``: one group per transformer block plus the named ``groups``; ``"parameter"``: one group
            per parameter tensor; ``"none"``: the total only.
        layer_pattern: Regex whose first capturing group is the block index in a parameter name (``group_by="layer"``).
        groups: Named groups for parameters outside the blocks, as ``{group: regex}`` tried in order (first match
            wins; unmatched parameters go to ``"other"``). Default: embedding / final_norm / lm_head.
        coarse_groups: Also report the paper's coarse depth groups: the blocks split into shallow / middle / deep
            thirds (embedding, final norm and lm_head stay as they are).
        micro_batches: Evaluate the risks on ``"all"`` micro-batches of the accumulation window (matches the
            accumulated gradient) or only the ``"last"`` one (cheaper).
        realised_change: After the step, re-evaluate the risks on the same batches at the new parameters and record
            the realised risk change next to the first-order prediction. Costs one extra forward (no backward) per
            measured step, about +40 % of a plain step on the benchmark model, hence off by default.
        measure_update: Also measure against the optimiser's actual update ``Δθ = θ_{t+1} − θ_t`` (AdamW is not SGD):
            records ``∇R·Δθ``, the first-order risk change of the real step. Keeps one gradient copy per risk.
        per_instance: Also compute each example's G-effect ``∇ℓ_i·g`` by forward-mode differentiation (one JVP of
            all per-example risks along ``g``, no per-example backward), stored in ``instance_history``. ``ℓ_i`` is
            the example's own risk from :class:`SupportsPerExampleRisks` (its mean answer NLL), so the instance
            values average to the total only when all examples have the same number of answer tokens. Under DDP the
            values of all ranks are gathered, rank-major. Attention runs on the math SDPA kernel inside the JVP
            (the fused CPU/flash kernels have no forward-mode rule).
        streaming: Dot each risk gradient with the objective gradient as soon as autograd produces it and drop it, so
            the extra memory is one parameter's gradient instead of a full gradient copy.
        log_prefix: Prefix of the logged scalars ``<prefix>/<risk>/<group>``.
        output_dir: Where ``g_effect.csv`` (and ``g_effect_instances.csv``, ``g_effect.png``) are written when fit
            ends. Default: ``trainer.log_dir``, else ``trainer.default_root_dir``.
        save_plot: Also write a PNG of the per-group curves (needs matplotlib).

    Example:
        A regression trained on its own risk: the G-effect is then the squared gradient norm, never negative.

        >>> import tempfile
        >>> import torch
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> class Regression(LightningModule):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 1)
        ...     def risk_losses(self, batches):  # SupportsRiskLosses
        ...         x, y = (torch.cat(parts) for parts in zip(*batches))
        ...         return {"mse": torch.nn.functional.mse_loss(self.net(x), y)}
        ...     def training_step(self, batch, batch_idx):
        ...         return self.risk_losses([batch])["mse"]
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> _ = torch.manual_seed(0)
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
        >>> callback = GEffectCallback(every_n_steps=2, group_by="none", save_plot=False)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     trainer = Trainer(
        ...         accelerator="cpu", max_steps=4, callbacks=[callback], default_root_dir=out, logger=False,
        ...         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     )
        ...     trainer.fit(Regression(), torch.utils.data.DataLoader(data, batch_size=4))
        >>> [(row["step"], row["risk"], row["group"]) for row in callback.history]
        [(0, 'mse', 'total'), (2, 'mse', 'total')]
        >>> all(row["g_effect"] > 0 for row in callback.history)
        True
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        group_by: Literal["layer", "parameter", "none"] = "layer",
        layer_pattern: str = DEFAULT_LAYER_PATTERN,
        groups: dict[str, str] | None = None,
        coarse_groups: bool = False,
        micro_batches: Literal["all", "last"] = "all",
        realised_change: bool = False,
        measure_update: bool = False,
        per_instance: bool = False,
        streaming: bool = True,
        log_prefix: str = "g_effect",
        output_dir: str | None = None,
        save_plot: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"GEffectCallback: every_n_steps must be a positive int, got {every_n_steps!r}.")
        if group_by not in ("layer", "parameter", "none"):
            raise ValueError(f"GEffectCallback: group_by must be 'layer', 'parameter' or 'none', got {group_by!r}.")
        if micro_batches not in ("all", "last"):
            raise ValueError(f"GEffectCallback: micro_batches must be 'all' or 'last', got {micro_batches!r}.")
        groups = dict(DEFAULT_GROUPS if groups is None else groups)
        for name, pattern in [("layer_pattern", layer_pattern), *groups.items()]:
            try:
                compiled = re.compile(pattern)
            except re.error as err:
                raise ValueError(f"GEffectCallback: regex for {name!r} is invalid ({err}): {pattern!r}.") from err
            if name == "layer_pattern" and compiled.groups < 1:
                raise ValueError(
                    f"GEffectCallback: layer_pattern needs a capturing group for the block index, got {pattern!r} "
                    r"(e.g. r'\.layers\.(\d+)\.')."
                )
        if "total" in groups:
            raise ValueError("GEffectCallback: 'total' is reserved for the sum over groups; rename that group.")
        self.every_n_steps = every_n_steps
        self.group_by = group_by
        self.layer_pattern = layer_pattern
        self.groups = groups
        self.coarse_groups = coarse_groups
        self.micro_batches = micro_batches
        self.realised_change = realised_change
        self.measure_update = measure_update
        self.per_instance = per_instance
        self.streaming = streaming
        self.log_prefix = log_prefix
        self.output_dir = output_dir
        self.save_plot = save_plot

        #: One row per (step, risk, group).
        self.history: list[GEffectRow] = []
        #: One row per (step, risk, example) when ``per_instance``.
        self.instance_history: list[GEffectInstanceRow] = []
        #: The last measured values, ``"<risk>/<group>" -> g_effect``.
        self.last_g_effect: dict[str, float] = {}

        self._batches: list[Any] = []
        self._batch_step = -1
        self._measured_step = -1
        self._pending: _PendingStep | None = None
        self._layout: _GroupLayout | None = None
        #: Running sums of the risk changes, ``"<risk>/<group>/<change>" -> sum``: see :func:`_with_running_sums`.
        self._cumulative: dict[str, float] = {}
        self._files: dict[str, Path] = {}
        self._warned_nonfinite = False

    # ------------------------------------------------------------------ override points

    def risk_losses(self, pl_module: LightningModule, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return the risks on ``batches``; override for modules that do not implement :class:`SupportsRiskLosses`.

        Args:
            pl_module: The (unwrapped) module being trained.
            batches: The micro-batches of the measured optimiser step, as ``training_step`` received them.

        Returns:
            Differentiable scalar risks keyed by name.
        """
        return pl_module.risk_losses(batches)

    def per_example_risks(self, pl_module: LightningModule, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return per-example risks; override for modules without :class:`SupportsPerExampleRisks`.

        Args:
            pl_module: The (unwrapped) module being trained; its parameters are swapped for dual tensors here.
            batches: The micro-batches of the measured optimiser step.

        Returns:
            One 1-D tensor (one value per example) per risk name.
        """
        return pl_module.per_example_risks(batches)

    # ------------------------------------------------------------------ validation

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        sharded = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
        culprit = next((cls for cls in sharded if isinstance(trainer.strategy, cls)), None)
        if culprit is not None:
            raise NotImplementedError(
                f"GEffectCallback does not support {culprit.__name__}: with sharded parameters and "
                "gradients each rank holds only a shard, so the local dot product is not the G-effect. Use "
                "strategy='auto', 'ddp', 'ddp_spawn' or 'ddp_find_unused_parameters_true' (single device or DDP)."
            )
        overrides_risk = type(self).risk_losses is not GEffectCallback.risk_losses
        if not overrides_risk and not isinstance(pl_module, SupportsRiskLosses):
            raise TypeError(
                f"GEffectCallback needs the risks to measure, but {type(pl_module).__name__} has no "
                "`risk_losses(self, batches) -> Mapping[str, Tensor]` method. Add it to the module (e.g. return "
                '{"forget": nll_forget, "retain": nll_retain}) or subclass GEffectCallback and override '
                "`risk_losses(self, pl_module, batches)`."
            )
        overrides_per_example = type(self).per_example_risks is not GEffectCallback.per_example_risks
        if self.per_instance and not overrides_per_example and not isinstance(pl_module, SupportsPerExampleRisks):
            raise TypeError(
                f"GEffectCallback(per_instance=True) needs per-example risks, but {type(pl_module).__name__} has no "
                "`per_example_risks(self, batches) -> Mapping[str, Tensor]` method (one value per example and risk). "
                "Add it, override `GEffectCallback.per_example_risks`, or set per_instance=False."
            )
        culprit = _reentrant_checkpointing(pl_module)
        if culprit is not None:
            raise ValueError(
                f"GEffectCallback cannot differentiate through reentrant gradient checkpointing (module "
                f"{culprit!r}): torch.autograd.grad does not see parameters inside a reentrant checkpoint. Enable it "
                'with `gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})` or '
                "call torch.utils.checkpoint.checkpoint(..., use_reentrant=False)."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A second fit with the same callback starts its step counter afresh (history is kept).
        self._batches, self._batch_step, self._measured_step, self._pending = [], -1, -1, None
        # The optimisers exist only from here on (after strategy.setup), so this is the earliest check for them.
        if trainer.scaler is None:
            return
        for optimizer in trainer.optimizers:
            # No public API says whether an optimiser unscales inside its own step. `_step_supports_amp_scaling` is
            # the flag torch.amp.GradScaler.step reads for that (set by the fused Adam/AdamW/SGD/Adagrad), and
            # Lightning's MixedPrecision skips its unscale_ before on_before_optimizer_step when it is set: the
            # gradients this callback would dot are then still multiplied by the loss scale.
            if getattr(optimizer, "_step_supports_amp_scaling", False):
                raise ValueError(
                    f"GEffectCallback: {type(optimizer).__name__} unscales fp16 gradients inside its own step (a fused "
                    "optimiser), so the gradients the callback sees are still multiplied by the loss scale. Use "
                    "precision='bf16-mixed', or an unfused optimiser (e.g. AdamW(..., fused=False))."
                )

    # ------------------------------------------------------------------ collection

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0:
            return
        if step != self._batch_step:
            # First micro-batch of a measured accumulation window: forget batches of an earlier window.
            self._batches = []
            self._batch_step = step
        if pl_module.automatic_optimization and len(self._batches) >= trainer.accumulate_grad_batches:
            # A batch whose training_step returned None was not stepped on: keep only the window's micro-batches.
            self._batches.pop(0)
        self._batches.append(batch)

    # ------------------------------------------------------------------ measurement at θ_t

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        step = trainer.global_step
        if self._pending is not None:
            # Several optimiser steps in one batch (manual optimisation): close the earlier record without its
            # realised change rather than mixing two steps.
            self._finalise(trainer, after=None)
        if not self._batches or self._batch_step != step or self._measured_step == step:
            return
        self._measured_step = step
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad and p.grad is not None]
        if not named:
            return
        layout = self._group_layout(named)
        params = [p for _, p in named]
        batches = self._batches if self.micro_batches == "all" else self._batches[-1:]
        lrs = _param_lrs(optimizer, params)

        with self._quiet_forward(trainer, pl_module), torch.enable_grad():
            risks = self._checked_risks(pl_module, batches)
            names = list(risks)
            dots, kept, anchors = [], [], []
            for i, name in enumerate(names):
                d, grads = self._risk_dots(risks[name], params, retain_graph=i < len(names) - 1)
                dots.append(d)
                if self.measure_update:
                    kept.append(grads)
                    # ∇R·θ_t now, ∇R·θ_{t+1} after the step: their float64 difference is ∇R·Δθ without a θ_t copy.
                    anchors.append(_dots64(grads, params))
            values = torch.stack([risks[n].detach().float() for n in names])
            del risks

        # One all-reduce for everything on every rank, before any rank-zero-only code (DDP collectives must match).
        local = torch.cat([torch.cat(dots), values])
        reduced = trainer.strategy.reduce(local, reduce_op="mean").cpu().double()
        per_param = reduced[: len(names) * len(params)].view(len(names), len(params))
        risk_values = reduced[len(names) * len(params) :]

        instances = None
        if self.per_instance:
            instances = self._instance_effects(trainer, pl_module, named, batches, names)

        self._pending = _PendingStep(
            step=step,
            names=names,
            per_param=per_param,
            risk_values=risk_values,
            lrs=torch.tensor(lrs, dtype=torch.float64),
            layout=layout,
            batches=list(batches),
            params=params,
            kept=kept,
            anchors=anchors,
            instances=instances,
        )

    # ------------------------------------------------------------------ measurement at θ_{t+1}

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        pending = self._pending
        names = pending.names
        parts = []
        if self.realised_change:
            with self._quiet_forward(trainer, pl_module), torch.no_grad():
                after = self._checked_risks(pl_module, pending.batches, differentiable=False)
                missing = set(names) - set(after)
                if missing:
                    raise RuntimeError(f"GEffectCallback: risk_losses returned no {sorted(missing)} after the step.")
                parts.append(torch.stack([after[n].detach().float() for n in names]).to(pending.per_param.device))
        if self.measure_update:
            for grads, anchor in zip(pending.kept, pending.anchors, strict=True):
                # Same float64 dots as the anchors, now at θ_{t+1}; exact zero when the step was skipped.
                parts.append((_dots64(grads, pending.params) - anchor).float())
        reduced = None
        if parts:
            device = trainer.strategy.root_device
            reduced = trainer.strategy.reduce(torch.cat([p.to(device) for p in parts]), reduce_op="mean")
            reduced = reduced.cpu().double()
        self._finalise(trainer, after=reduced)

    def _finalise(self, trainer: Trainer, after: Tensor | None) -> None:
        """Turn the pending measurement into history rows, logged scalars and ``last_g_effect``.

        Args:
            trainer: The trainer (for its loggers).
            after: The rank-averaged values measured at θ_{t+1} by ``on_train_batch_end``: the risks (when
                ``realised_change``), then the per-parameter ``∇R·Δθ`` of each risk (when ``measure_update``);
                None when nothing was measured after the step.
        """
        pending, self._pending = self._pending, None
        self._batches = []
        names, n_params = pending.names, len(pending.params)
        realised = update = None
        if after is not None:
            offset = 0
            if self.realised_change:
                realised = after[: len(names)] - pending.risk_values
                offset = len(names)
            if self.measure_update:
                update = after[offset:].view(len(names), n_params)
        if not torch.isfinite(pending.per_param).all():
            # fp16: GradScaler skips this step (inf/nan gradients), yet the hook still fired.
            if not self._warned_nonfinite:
                rank_zero_warn(f"GEffectCallback: non-finite G-effect at step {pending.step}; step not recorded.")
                self._warned_nonfinite = True
            return
        rows, self._cumulative = _with_running_sums(
            _step_values(pending, realised, update), self._cumulative, self.every_n_steps
        )
        self.history.extend(rows)
        self.instance_history.extend(_instance_rows(pending))
        self.last_g_effect = {f"{r['risk']}/{r['group']}": r["g_effect"] for r in rows}
        self._log(trainer, pending.step, rows)

    def _log(self, trainer: Trainer, step: int, rows: Sequence[GEffectRow]) -> None:
        # Direct log_metrics with an explicit step: values given to self.log reach the logger only on the trainer's
        # log_every_n_steps cadence, so a value measured every `every_n_steps` steps would be recorded under a later
        # step, or dropped when another value of the same key arrives before the next flush.
        metrics: dict[str, float] = {}
        for row in rows:
            metrics[f"{self.log_prefix}/{row['risk']}/{row['group']}"] = row["g_effect"]
            if row["level"] == "total":
                base = f"{self.log_prefix}_risk/{row['risk']}"
                metrics[f"{base}/value"] = row["risk_value"]
                for key in _CHANGES:
                    if row[key] is not None:
                        metrics[f"{base}/{key}"] = row[key]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ helpers: risks and gradients

    @contextlib.contextmanager
    def _quiet_forward(self, trainer: Trainer, pl_module: LightningModule) -> Iterator[None]:
        """A forward that leaves training untouched: own RNG, same autocast, buffers (e.g. BatchNorm stats) restored."""
        buffers = [(b, b.detach().clone()) for b in pl_module.buffers()]
        try:
            with isolate_rng(), trainer.precision_plugin.forward_context():
                yield
        finally:
            with torch.no_grad():
                for buf, saved in buffers:
                    if not torch.equal(buf, saved):
                        buf.copy_(saved)

    def _checked_risks(
        self, pl_module: LightningModule, batches: Sequence[Any], differentiable: bool = True
    ) -> Mapping[str, Tensor]:
        risks = self.risk_losses(pl_module, batches)
        if not isinstance(risks, Mapping) or not risks:
            raise TypeError(
                f"GEffectCallback: risk_losses of {type(pl_module).__name__} must return a non-empty mapping "
                f"{{name: scalar tensor}}, got {type(risks).__name__}."
            )
        for name, risk in risks.items():
            if not isinstance(risk, Tensor) or risk.numel() != 1:
                raise TypeError(
                    f"GEffectCallback: risk {name!r} from {type(pl_module).__name__}.risk_losses must be a scalar "
                    f"tensor (e.g. the mean answer NLL), got {getattr(risk, 'shape', type(risk).__name__)}."
                )
            if differentiable and not risk.requires_grad:
                raise RuntimeError(
                    f"GEffectCallback: risk {name!r} does not require grad. Compute it with a plain forward of the "
                    "module's trainable parameters, outside torch.no_grad() and without detach()."
                )
        return {name: risk.reshape(()) for name, risk in risks.items()}

    def _risk_dots(self, risk: Tensor, params: list[Tensor], retain_graph: bool) -> tuple[Tensor, list[Tensor]]:
        """Per-parameter float32 dots ``∇_pR·g_p`` (and the risk gradients when ``measure_update`` keeps them)."""
        dots = torch.zeros(len(params), dtype=torch.float32, device=params[0].device)
        kept: list[Tensor | None] = [None] * len(params)
        keep = self.measure_update
        try:
            if self.streaming:
                # A leaf tensor hook receives each parameter's full risk gradient; dotting it there and handing
                # autograd a stride-0 zero view means no full gradient copy ever exists.
                def make_hook(i: int) -> Callable[[Tensor], Tensor]:
                    def hook(grad: Tensor) -> Tensor:
                        dots[i] += _dot32(grad, params[i].grad)
                        if keep:
                            kept[i] = grad.detach() if kept[i] is None else kept[i] + grad.detach()
                        return torch.zeros((), dtype=grad.dtype, device=grad.device).expand_as(grad)

                    return hook

                handles = [p.register_hook(make_hook(i)) for i, p in enumerate(params)]
                try:
                    torch.autograd.grad(risk, params, retain_graph=retain_graph, allow_unused=True)
                finally:
                    for handle in handles:
                        handle.remove()
            else:
                grads = torch.autograd.grad(risk, params, retain_graph=retain_graph, allow_unused=True)
                for i, (grad, p) in enumerate(zip(grads, params, strict=True)):
                    if grad is not None:
                        dots[i] = _dot32(grad, p.grad)
                        kept[i] = grad if keep else None
        except RuntimeError as err:
            if "reentrant" in str(err):
                raise RuntimeError(
                    "GEffectCallback: the risk gradient crosses reentrant gradient checkpointing. Use "
                    "torch.utils.checkpoint.checkpoint(..., use_reentrant=False) (HF: gradient_checkpointing_kwargs="
                    '{"use_reentrant": False}).'
                ) from err
            raise
        # Unused parameters have a zero risk gradient (allow_unused returns None for them).
        kept_full = [torch.zeros_like(p) if g is None else g for g, p in zip(kept, params, strict=True)] if keep else []
        return dots, kept_full

    def _instance_effects(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        named: list[tuple[str, Tensor]],
        batches: Sequence[Any],
        names: list[str],
    ) -> dict[str, Tensor]:
        """Per-example ``∇ℓ_i·g`` for every risk, as one forward-mode JVP of the per-example risks along ``g``."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        primals = {f"module.{n}": p.detach() for n, p in named}
        # JVP accumulates in the parameter dtype; the tangent is g itself (already unscaled, synced).
        tangents = {f"module.{n}": p.grad.detach().to(p.dtype) for n, p in named}
        wrapper = _BoundCall(pl_module, self.per_example_risks)

        def per_example(params: dict[str, Tensor]) -> dict[str, Tensor]:
            out = torch.func.functional_call(wrapper, params, (batches,), strict=False)
            return {name: out[name].float().reshape(-1) for name in names}

        # No forward-mode rule exists for the fused CPU/flash SDPA kernels; the math kernel has one.
        with self._quiet_forward(trainer, pl_module), torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            try:
                _, jvps = torch.func.jvp(per_example, (primals,), (tangents,))
            except KeyError as err:
                raise KeyError(
                    f"GEffectCallback: per_example_risks must return the same risk names as risk_losses {names}; "
                    f"missing {err}."
                ) from err
        gathered = {}
        for name in names:
            values = trainer.strategy.all_gather(jvps[name].detach())
            gathered[name] = values.reshape(-1).double().cpu()
        return gathered

    # ------------------------------------------------------------------ helpers: grouping

    def _group_layout(self, named: list[tuple[str, Tensor]]) -> "_GroupLayout":
        names = tuple(n for n, _ in named)
        if self._layout is None or self._layout.names != names:
            self._layout = _GroupLayout.build(names, self.group_by, self.layer_pattern, self.groups, self.coarse_groups)
        return self._layout

    # ------------------------------------------------------------------ outputs

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_outputs(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # What was measured before a crash or Ctrl-C is still worth keeping.
        with contextlib.suppress(Exception):
            self._write_outputs(trainer)

    def _output_dir(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _target(self, directory: Path, filename: str) -> Path:
        """This callback's own file: an existing file from another run is never overwritten (a suffix is added)."""
        if filename not in self._files:
            path = directory / filename
            stem, suffix = path.stem, path.suffix
            k = 0
            while path.exists():
                k += 1
                path = directory / f"{stem}_{k}{suffix}"
            self._files[filename] = path
        return self._files[filename]

    def _write_outputs(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        directory = self._output_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_csv(self._target(directory, "g_effect.csv"), self.history)
        if self.instance_history:
            _atomic_write_csv(self._target(directory, "g_effect_instances.csv"), self.instance_history)
        if self.save_plot:
            try:
                self._write_plot(self._target(directory, "g_effect.png"))
            except ImportError:
                rank_zero_warn("GEffectCallback: matplotlib is not installed; skipping g_effect.png.")

    def _write_plot(self, path: Path) -> None:
        """Per-group G-effect curves (one row per risk) and cumulative predicted vs realised risk change."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        risks = list(dict.fromkeys(r["risk"] for r in self.history))
        fine = list(dict.fromkeys(r["group"] for r in self.history if r["level"] == "group"))
        coarse = list(dict.fromkeys(r["group"] for r in self.history if r["level"] == "coarse"))
        # Many fine groups make an unreadable plot: fall back to the coarse groups (plus the non-block groups).
        shown = [g for g in fine if not g.startswith("layer_")] + coarse if len(fine) > 12 and coarse else fine[:12]
        fig = Figure(figsize=(11, 3.2 * len(risks)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(risks), 2, squeeze=False)
        for row, risk in enumerate(risks):
            ax, ax_cum = axes[row]
            for group in [*shown, "total"]:
                pts = [(r["step"], r["g_effect"]) for r in self.history if r["risk"] == risk and r["group"] == group]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    style = {"color": "black", "linewidth": 2} if group == "total" else {"linewidth": 1}
                    ax.plot(xs, ys, label=group, **style)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set_title(f"G-effect on the {risk} risk")
            ax.set_xlabel("step")
            ax.legend(fontsize=7, ncol=2)
            totals = [r for r in self.history if r["risk"] == risk and r["level"] == "total"]
            for key, label in [
                ("cumulative_predicted_change", "predicted (−Σ η e)"),
                ("cumulative_realised_change", "realised"),
                ("cumulative_update_change", "predicted (∇R·Δθ)"),
            ]:
                pts = [(r["step"], r[key]) for r in totals if r[key] is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax_cum.plot(xs, ys, label=label)
            ax_cum.set_title(f"cumulative change of the {risk} risk")
            ax_cum.set_xlabel("step")
            ax_cum.legend(fontsize=7)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain lists, dicts, str, int, float and None: a checkpoint loads with torch.load(weights_only=True), the
        # default of torch >= 2.6 and of Trainer.fit(ckpt_path=...). Copies, because an asynchronous checkpoint writer
        # may serialise them while training appends further rows.
        return {
            "history": list(self.history),
            "instance_history": list(self.instance_history),
            "cumulative": dict(self._cumulative),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.instance_history = list(state_dict.get("instance_history", []))
        self._cumulative = dict(state_dict.get("cumulative", {}))


class _GroupLayout:
    """Which parameter belongs to which group, as index tensors into the per-parameter dot vector."""

    def __init__(self, names: tuple[str, ...], entries: list[tuple[str, _Level, Tensor]]) -> None:
        self.names = names
        self.entries = entries

    @classmethod
    def build(
        cls,
        names: tuple[str, ...],
        group_by: str,
        layer_pattern: str,
        groups: dict[str, str],
        coarse: bool,
    ) -> "_GroupLayout":
        layer_rx = re.compile(layer_pattern)
        compiled = [(g, re.compile(rx)) for g, rx in groups.items()]
        assignment: list[str] = []
        layer_of: dict[str, int] = {}
        if group_by == "layer":
            indices = [m.group(1) for m in (layer_rx.search(n) for n in names) if m]
            width = max([2, *(len(str(int(i))) for i in indices)])
            for name in names:
                match = layer_rx.search(name)
                if match:
                    group = f"layer_{int(match.group(1)):0{width}d}"
                    layer_of[group] = int(match.group(1))
                else:
                    group = next((g for g, rx in compiled if rx.search(name)), "other")
                assignment.append(group)
        elif group_by == "parameter":
            assignment = list(names)
        else:
            assignment = []
        entries: list[tuple[str, _Level, Tensor]] = []
        for group in dict.fromkeys(assignment):
            idx = torch.tensor([i for i, g in enumerate(assignment) if g == group], dtype=torch.long)
            entries.append((group, "group", idx))
        if coarse and layer_of:
            blocks = sorted(set(layer_of.values()))
            for label, chunk in zip(COARSE_NAMES, _thirds(blocks), strict=True):
                members = {g for g, b in layer_of.items() if b in set(chunk)}
                idx = torch.tensor([i for i, g in enumerate(assignment) if g in members], dtype=torch.long)
                if len(idx):
                    entries.append((label, "coarse", idx))
        entries.append(("total", "total", torch.arange(len(names))))
        return cls(names, entries)

    def iter_groups(self) -> Iterator[tuple[str, _Level, Tensor]]:
        """Yield ``(group, level, parameter indices)``, fine groups first, then coarse, then the total."""
        yield from self.entries


def _step_values(pending: _PendingStep, realised: Tensor | None, update: Tensor | None) -> list[_StepValues]:
    """The values of one measured step, one entry per (risk, group) in the layout's order.

    Args:
        pending: The step measured at θ_t.
        realised: (risks,) float64 ``R(θ_{t+1}) − R(θ_t)``, or None when not measured.
        update: (risks, params) float64 per-parameter ``∇_pR·Δθ_p``, or None when not measured.

    Returns:
        The rows' step values; the running sums are added by :func:`_with_running_sums`.
    """
    values: list[_StepValues] = []
    for r, name in enumerate(pending.names):
        dots = pending.per_param[r]
        predicted = -pending.lrs * dots
        upd = update[r] if update is not None else None
        for group, level, index in pending.layout.iter_groups():
            values.append(
                _StepValues(
                    step=pending.step,
                    risk=name,
                    group=group,
                    level=level,
                    g_effect=float(dots[index].sum()),
                    risk_value=float(pending.risk_values[r]),
                    predicted_change=float(predicted[index].sum()),
                    realised_change=float(realised[r]) if level == "total" and realised is not None else None,
                    update_change=float(upd[index].sum()) if upd is not None else None,
                )
            )
    return values


def _with_running_sums(
    values: Sequence[_StepValues], totals: Mapping[str, float], weight: int
) -> tuple[list[GEffectRow], dict[str, float]]:
    """Add one step's risk changes, each weighted by ``weight``, to the running sums.

    Args:
        values: One step's values (:func:`_step_values`).
        totals: The running sums before this step, ``"<risk>/<group>/<change>" -> sum``; not modified.
        weight: How many optimiser steps one measured step stands for (``every_n_steps``).

    Returns:
        The step's history rows, each with the running sums after this step (None where the step's change is
        None, which leaves that sum as it was), and the new running sums.
    """
    new_totals = dict(totals)
    rows: list[GEffectRow] = []
    for value in values:
        cumulative: dict[str, float | None] = {}
        for change in _CHANGES:
            amount = value[change]
            if amount is None:
                cumulative[change] = None
                continue
            key = f"{value['risk']}/{value['group']}/{change}"
            new_totals[key] = new_totals.get(key, 0.0) + amount * weight
            cumulative[change] = new_totals[key]
        rows.append(
            GEffectRow(
                **value,
                cumulative_predicted_change=cumulative["predicted_change"],
                cumulative_realised_change=cumulative["realised_change"],
                cumulative_update_change=cumulative["update_change"],
            )
        )
    return rows, new_totals


def _instance_rows(pending: _PendingStep) -> list[GEffectInstanceRow]:
    """One row per risk and example of the step's per-instance G-effects (none when they were not measured)."""
    if pending.instances is None:
        return []
    return [
        GEffectInstanceRow(step=pending.step, risk=name, index=i, g_effect=v)
        for name, values in pending.instances.items()
        for i, v in enumerate(values.tolist())
    ]


class _BoundCall(nn.Module):
    """Expose ``fn(module, batches)`` as ``forward`` so :func:`torch.func.functional_call` can swap parameters."""

    def __init__(self, module: nn.Module, fn: Callable[[Any, Sequence[Any]], Mapping[str, Tensor]]) -> None:
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        return self._fn(self.module, batches)


def _thirds(items: list[int]) -> list[list[int]]:
    """Split ``items`` into three contiguous, nearly equal chunks (earlier chunks get the remainder)."""
    n = len(items)
    sizes = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def _dot32(a: Tensor, b: Tensor) -> Tensor:
    """Dot product accumulated in float32 (bf16 products summed in bf16 lose most digits)."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def _dots64(grads: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """Per-parameter float64 dots ``grad·param``; float64 keeps ``∇R·θ_{t+1} − ∇R·θ_t`` free of cancellation."""
    with torch.no_grad():
        pairs = zip(grads, params, strict=True)
        return torch.stack([torch.dot(g.reshape(-1).double(), p.reshape(-1).double()) for g, p in pairs])


def _param_lrs(optimizer: Any, params: Sequence[Tensor]) -> list[float]:
    """The learning rate each parameter will be stepped with (0 for parameters the optimiser does not own)."""
    lr_of: dict[int, float] = {}
    for group in getattr(optimizer, "param_groups", []):
        lr = group.get("lr", 0.0)
        lr = float(lr.item()) if isinstance(lr, Tensor) else float(lr)
        for p in group["params"]:
            lr_of[id(p)] = lr
    return [lr_of.get(id(p), 0.0) for p in params]


def _reentrant_checkpointing(module: nn.Module) -> str | None:
    """The name of a Hugging Face submodule with reentrant gradient checkpointing enabled, else None.

    Neither torch nor transformers has a public way to ask whether a module checkpoints reentrantly, and this file must
    not import transformers, so this reads the attributes transformers sets on each checkpointable submodule: the
    public flag ``gradient_checkpointing`` and the private ``_gradient_checkpointing_func``, a
    ``functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)`` whose keywords say ``use_reentrant``. Finding
    it in ``setup`` turns a failure at the first measured step into an error before training starts. Reentrant
    checkpointing set up any other way is caught when the risk gradient is taken (:meth:`GEffectCallback._risk_dots`).
    """
    for name, sub in module.named_modules():
        if not getattr(sub, "gradient_checkpointing", False):
            continue
        fn = getattr(sub, "_gradient_checkpointing_func", None)
        keywords = getattr(fn, "keywords", None) or {}
        # torch.utils.checkpoint defaults to reentrant when use_reentrant is not given.
        if keywords.get("use_reentrant", True):
            return name or type(sub).__name__
    return None


def _atomic_write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` to ``path`` through a temporary file and ``os.replace``: a crash never leaves half a file."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    # A sibling temporary file (same filesystem, so os.replace is atomic), created with the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_history(path: str | os.PathLike) -> list[GEffectRow]:
    """Read a ``g_effect.csv`` written by :class:`GEffectCallback` back into history rows.

    Args:
        path: The CSV file.

    Returns:
        The rows, typed as in :attr:`GEffectCallback.history` (empty cells as None).

    Raises:
        ValueError: If the file's columns are not those of :class:`GEffectRow`, or a cell cannot be read.
    """
    return _read_rows(Path(path), GEffectRow)  # type: ignore[return-value]


def load_instance_history(path: str | os.PathLike) -> list[GEffectInstanceRow]:
    """Read a ``g_effect_instances.csv`` written by :class:`GEffectCallback` back into per-instance rows.

    Args:
        path: The CSV file.

    Returns:
        The rows, typed as in :attr:`GEffectCallback.instance_history`.

    Raises:
        ValueError: If the file's columns are not those of :class:`GEffectInstanceRow`, or a cell cannot be read.
    """
    return _read_rows(Path(path), GEffectInstanceRow)  # type: ignore[return-value]


def _read_rows(path: Path, row_type: type) -> list[dict[str, Any]]:
    """Read a CSV whose columns are the keys of the TypedDict ``row_type``, converting each cell to its key's type."""
    hints = typing.get_type_hints(row_type)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        if columns != list(hints):
            raise ValueError(
                f"{path}: the columns {columns} are not those of a {row_type.__name__} ({list(hints)}). Read "
                "g_effect.csv with load_history and g_effect_instances.csv with load_instance_history."
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for key, hint in hints.items():
                try:
                    row[key] = _parse_cell(raw[key], hint)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{path}, line {line}, column {key!r}: {err}") from err
            rows.append(row)
    return rows


def _parse_cell(text: str | None, hint: Any) -> Any:
    """One CSV cell as the type ``hint`` of its row key: int, str (or a Literal of str), float, or ``... | None``."""
    optional = type(None) in typing.get_args(hint)
    if text is None or text == "":
        if optional:
            return None
        raise ValueError("the cell is empty, but the column holds a value in every row")
    if hint is int:
        return int(text)
    if hint is str or typing.get_origin(hint) is Literal:
        return text
    return float(text)


__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_LAYER_PATTERN",
    "GEffectCallback",
    "GEffectInstanceRow",
    "GEffectRow",
    "SupportsPerExampleRisks",
    "SupportsRiskLosses",
    "load_history",
    "load_instance_history",
]
