"""The G-effect, measured online during training, as a drop-in Lightning callback.

The G-effect (Wang et al., ICLR 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
arXiv 2502.19301, Sec. 3) of a training step on a risk ``R`` is the inner product

    e = ∇_θ R(θ_t) · g_t,

where ``g_t`` is the objective gradient the optimiser is about to apply. For a plain gradient step
``θ_{t+1} = θ_t − η g_t`` the first-order change of the risk is ``R(θ_{t+1}) − R(θ_t) ≈ −η e``. In unlearning, ``R`` is
the answer NLL on the forget data (``e_u < 0`` is the goal: the forget risk rises) or on the retain data (``e_r ≥ 0``
or ≈ 0 is the goal; negative means collateral damage).

The callback splits the G-effect the three ways the paper analyses it:

* by parameter group: one group per transformer block plus the embedding, final norm and lm_head, and optionally
  coarse depth groups (thirds of the blocks, or explicit boundaries such as the paper's blocks 0–9 / 10–19 / ≥ 20);
* by objective term (``terms=True``): an unlearning objective is ``T_unlearn + T_regularizer`` (``γ·L_forget`` and
  ``α·L_retain``), so by linearity ``e = ∇R·∇T_unlearn + ∇R·∇T_regularizer``. The paper's G-effect is the unlearn
  term's: its code differentiates the forget objective without the regulariser;
* by instance (``per_instance``): on the risk side, ``∇ℓ_i·g`` for each risk example i (whose risk the step moves);
  on the objective side, ``∇R·∇ℓ_i`` for each forget example i, where ``ℓ_i`` is the example's share of the unlearn
  term (which forget example drives the step). The paper's code ranks forget examples by the latter;
  ``g_effect_ranking.csv`` accumulates it per example over the run.

Smoothing: every stored value is the raw value of one optimiser step, computed from the step's accumulated
gradient (the exact first-order quantity for that step). The paper's code instead keeps an exponential moving average
of the gradient VECTORS over micro-batches, ``ĝ ← 0.6·ĝ + 0.4·g_j`` for the objective gradient and likewise ``r̂``
for each risk gradient, and prints ``ĝ·r̂``. That is not a smoothed G-effect series: the dot product is bilinear, so
``ĝ_j·r̂_j = Σ_a Σ_b w_a w_b g_a·r_b`` contains cross terms between the objective gradient of one micro-batch and the
risk gradient of another, whereas an EMA of the series, ``Σ_a w_a g_a·r_a``, has only same-batch products; the two
differ unless the gradients do not change between micro-batches. Neither is computed into the stored values here;
``plot_smoothing`` smooths the plotted series only (TensorBoard's smoothing slider does the same to the logged
scalars).

This module imports only ``torch`` and ``lightning`` (matplotlib lazily, for the optional PNG) so it can be vendored
into any Lightning project. The module being trained tells the callback what to measure by implementing the
protocols below: :class:`SupportsRiskLosses` always; :class:`SupportsPerExampleRisks` for the risk side of
``per_instance``; :class:`SupportsObjectiveTerms` for ``terms`` (:class:`SupportsLossTerms` and
:class:`SupportsSkipUnlearnBackward` for its fast path);
:class:`SupportsPerExampleObjective` (and, for the ranking, :class:`SupportsExampleIds`) for the objective side of
``per_instance``; :class:`SupportsStepRisks` for ``reuse_step_forward`` (the risks from ``training_step``'s own
forward, without a second forward pass).
"""

import contextlib
import csv
import json
import os
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from typing_extensions import override

#: Matches the block index in transformer parameter names: ``model.layers.3.``, ``transformer.h.3.``, ``blocks.3.``.
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\."

#: Named groups for the parameters outside the transformer blocks, tried in order after the layer pattern.
DEFAULT_GROUPS: dict[str, str] = {
    "embedding": r"embed_tokens|wte|wpe|embed_in|word_embeddings|embeddings",
    "final_norm": r"norm|ln_f",
    "lm_head": r"lm_head|embed_out",
}

#: Coarse depth groups when they are thirds of the blocks (no ``coarse_boundaries``).
COARSE_NAMES = ("shallow", "middle", "deep")

#: The terms of :class:`SupportsObjectiveTerms`, in the order their rows are written.
TERMS = ("unlearn", "regularizer")

#: The ranking file's own columns: ``g_effect_<risk>`` per risk, then ``measurements``; example ids come first.
RANKING_PREFIX = "g_effect_"
RANKING_COUNT = "measurements"


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
    """A LightningModule that can evaluate each example's own risk, for the risk side of per-instance G-effects.

    ``per_example_risks(batches)`` returns, for each risk name of ``risk_losses``, a 1-D tensor with one value per
    example of ``batches`` (concatenated over the micro-batches in order): that example's mean answer NLL. It must be
    a pure function of the parameters (no ``requires_grad_`` calls, no in-place writes to parameters), because the
    callback differentiates it in forward mode with :func:`torch.func.jvp`.
    """

    def per_example_risks(self, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return one risk value per example of ``batches``, keyed by risk name."""
        ...


@runtime_checkable
class SupportsObjectiveTerms(Protocol):
    """A LightningModule whose objective is a sum of named terms, for the G-effect per term (``terms=True``).

    ``objective_terms(batches)`` receives the micro-batches of one optimiser step (as ``training_step`` received them)
    and returns the terms of the objective as differentiable scalars:
    ``{"unlearn": forget_weight · L_forget, "regularizer": retain_weight · L_retain}``, with only ``"unlearn"`` when
    the module has no regulariser (or its weight is 0); no other keys.

    Each term is averaged over the micro-batches the way Lightning averages accumulated gradients: with ``k``
    micro-batches, ``term = (1/k) · Σ_j term_j`` where ``term_j`` is that term exactly as ``training_step`` computes it
    on micro-batch ``j``. Hence, on one process, ``unlearn + regularizer`` has exactly the gradient the optimiser
    applies (the ``.grad`` seen in ``on_before_optimizer_step``, before clipping). Compute the terms with plain
    forward passes of the module's trainable parameters, in the same way ``training_step`` does (frozen reference
    models under ``no_grad`` are fine; detached weights inside a term, ``sg[·]``, are part of the term; the terms
    themselves must not be detached).
    """

    def objective_terms(self, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return the objective's terms on ``batches``, differentiable scalars keyed ``"unlearn"``/``"regularizer"``."""
        ...


@runtime_checkable
class SupportsLossTerms(Protocol):
    """A LightningModule that hands over the terms of the loss its own ``training_step`` returns (``terms=True``).

    The fast path of the G-effect per term. Between ``keep_loss_terms(True)`` and ``keep_loss_terms(False)`` every
    ``training_step`` records the terms of the loss it returns on its micro-batch, ``{"unlearn": ..., "regularizer":
    ...}`` named as in :class:`SupportsObjectiveTerms`, with their autograd graph and summing to that loss (the
    callback checks the sum). ``loss_terms()`` returns the latest record. Just before the objective's backward
    (``on_before_backward``), the callback differentiates the unlearn term through the step's own graph: one backward
    through the forget part and no forward, where ``objective_terms`` costs a forward of the objective and a backward
    per term. The regulariser's gradient is then the objective gradient minus the unlearn term's, exact because the
    recorded terms sum to the loss whose gradient the optimiser applies. The callback turns recording on for measured
    steps only.
    """

    def keep_loss_terms(self, keep: bool) -> None:
        """Start (``True``) or stop (``False``, dropping the last record) recording each ``training_step``'s terms."""
        ...

    def loss_terms(self) -> Mapping[str, Tensor]:
        """The terms of the loss the latest ``training_step`` returned, differentiable scalars keyed like the terms."""
        ...


@runtime_checkable
class SupportsSkipUnlearnBackward(Protocol):
    """A :class:`SupportsLossTerms` module whose next backward can leave its unlearn term out (``terms=True``).

    After the callback has differentiated the recorded unlearn term (in ``on_before_backward``) it makes that gradient
    ``.grad`` (setting the earlier micro-batches' sum aside, added back in its ``on_after_backward``, so the sums are
    those of the whole loss's backward) and calls ``skip_unlearn_backward()``; the module's ``backward`` that follows
    must then differentiate only the rest of the loss: the recorded ``"regularizer"`` term divided by
    ``trainer.accumulate_grad_batches`` (nothing when there is no regulariser), once, for that call only. The forget
    part is then back-propagated once per micro-batch on measured steps, as on unmeasured ones, instead of twice. The
    unlearn term's graph is freed by the callback's backward (unless ``reuse_step_forward`` needs it), so the
    regulariser must not reach it but through the parameters (its own forward, as in every ``lit_unlearn``
    objective); a module whose terms share a forward should not implement this protocol. The callback uses it on one
    process with automatic optimisation and no fp16 loss scaling (the loss backward receives is then exactly the
    terms' sum over the accumulation steps). On measured steps with gradient accumulation, ``.grad`` between the two
    hooks holds only the current micro-batch's gradient: ``on_before_backward`` of the callbacks placed after this
    one and of the module, and ``on_after_backward`` of the callbacks placed before it, see that partial sum.
    """

    def skip_unlearn_backward(self) -> None:
        """Make the next ``backward`` differentiate the recorded regulariser term alone."""
        ...


@runtime_checkable
class SupportsPerExampleObjective(Protocol):
    """A LightningModule that splits its unlearn term over the forget examples (objective side of ``per_instance``).

    ``per_example_unlearn(batches)`` returns a 1-D tensor of shape (N,), N the number of forget examples of
    ``batches`` concatenated over the micro-batches in order: entry ``i`` is forget example ``i``'s exact additive
    share of ``objective_terms(batches)["unlearn"]``, so that the entries sum to the unlearn term (up to float
    rounding). The share follows the objective's own averaging, which is not always a mean of per-example losses.
    With ``k`` micro-batches and forget weight ``γ``, for an example ``i`` of micro-batch ``j``:

    * a token mean over the micro-batch (GA, WGA, TNPO, WTNPO, the IdK NLL; RMU's per-position distance):
      ``γ/k · Σ_{t ∈ answer(i)} ℓ_t / N_j``, with ``ℓ_t`` the objective's loss at token ``t`` (e.g. ``−ce_t`` for GA,
      ``−sg[p_t^β]·ce_t`` for WGA) and ``N_j`` the number of answer tokens of the whole micro-batch ``j``; NOT
      ``γ/k · mean_{t ∈ answer(i)} ℓ_t / B_j`` (a mean of per-example means), which differs whenever answers have
      different lengths;
    * a mean over sequences (NPO, SimNPO, DPO): ``γ/k · ℓ(i) / B_j`` with ``ℓ(i)`` the example's sequence loss and
      ``B_j`` the micro-batch size.

    The shares are those of the loss ``training_step`` optimises on one process; under DDP the callback divides them
    by the world size itself (DDP averages the ranks' gradients).

    Like ``per_example_risks`` it must be a pure function of the parameters, because the callback differentiates it in
    forward mode (:func:`torch.func.jvp`, batched over the risks with :func:`torch.func.vmap`): no ``requires_grad_``
    calls, no in-place writes to parameters or buffers, no ``.item()`` or Python branching on values computed from the
    parameters. Detached weights (``sg[·]``) are fine: forward-mode differentiation respects ``detach``.
    """

    def per_example_unlearn(self, batches: Sequence[Any]) -> Tensor:
        """Return each forget example's share of the unlearn term, shape (N,), summing to the term."""
        ...


@runtime_checkable
class SupportsExampleIds(Protocol):
    """A LightningModule that names its forget examples, for the objective-side instance rows and the ranking.

    ``example_ids(batches)`` returns one small mapping per forget example, in the order of ``per_example_unlearn``,
    e.g. ``{"index": 17, "question": "Who wrote ...?"}``: the same keys for every example, values ``str``, ``int``,
    ``float`` or ``bool`` (one-element tensors are converted with ``.item()``). The keys become the leading columns of
    ``g_effect_ranking.csv`` and the tuple of the values is the key examples are aggregated by across steps, so use a
    stable id such as the dataset index, never the position in the batch. Keys must not be ``"measurements"`` or
    start with ``"g_effect_"`` (the ranking's own columns).
    """

    def example_ids(self, batches: Sequence[Any]) -> Sequence[Mapping[str, Any]]:
        """Return one id mapping per forget example of ``batches``, in ``per_example_unlearn``'s order."""
        ...


#: ``"group"``: a fine group (a block, a named group or a parameter); ``"coarse"``: a coarse depth group;
#: ``"total"``: the sum over all parameters.
@runtime_checkable
class SupportsStepRisks(Protocol):
    """A LightningModule that hands over the risks of its own ``training_step`` forward (``reuse_step_forward=True``).

    Between ``keep_step_risks(True)`` and ``keep_step_risks(False)`` every ``training_step`` records its risks,
    computed from the logits of the step's own forward (the values ``risk_losses([batch])`` would return for that
    micro-batch, with their autograd graph), and the module's ``backward`` keeps the graph (``retain_graph=True``)
    so that the callback can differentiate the risks after the objective's backward. ``step_risks()`` returns the
    records, one mapping per ``training_step`` call since ``keep_step_risks(True)``. ``keep_step_risks(False)`` drops
    them, which frees the graphs. The callback turns recording on at the first micro-batch of each measured step only,
    so the other steps keep no graph.
    """

    def keep_step_risks(self, keep: bool) -> None:
        """Start recording (``True``: forget earlier records) or stop and drop the records (``False``)."""
        ...

    def step_risks(self) -> Sequence[Mapping[str, Tensor]]:
        """The risks recorded since ``keep_step_risks(True)``, one ``{name: scalar}`` per ``training_step``."""
        ...


_Level = Literal["group", "coarse", "total"]

#: ``"total"``: the gradient the optimiser applies (``.grad``); ``"unlearn"``/``"regularizer"``: one objective term.
_Term = Literal["unlearn", "regularizer", "total"]

#: ``"risk"``: ``∇ℓ_i·g`` for a risk example; ``"objective"``: ``∇R·∇ℓ_i`` for a forget example's unlearn share.
_Side = Literal["risk", "objective"]

#: The risk changes a step row carries, each with a running sum in :class:`GEffectRow`.
_CHANGES = ("predicted_change", "realised_change", "update_change")


class _StepValues(TypedDict):
    """The values of one measured step on one risk, term and group (a :class:`GEffectRow` without the running sums)."""

    step: int
    risk: str
    term: _Term
    group: str
    level: _Level
    g_effect: float
    risk_value: float
    predicted_change: float
    realised_change: float | None
    update_change: float | None


class GEffectRow(_StepValues):
    """One row of :attr:`GEffectCallback.history`: one measured step, one risk, one term, one parameter group.

    Keys: ``step`` (the ``global_step`` of the optimiser step); ``risk``; ``term`` (``"total"``: the gradient the
    optimiser applies, the only term without ``terms=True``; ``"unlearn"`` / ``"regularizer"``: that objective term's
    gradient); ``group`` (``"total"`` for the sum over the fine groups); ``level`` (``"group"``, ``"coarse"`` or
    ``"total"``); ``g_effect`` (∇R·g over the group); ``risk_value`` (R at θ_t); ``predicted_change``
    (−Σ_p η_p ∇_pR·g_p, the first-order risk change of a plain SGD step with the optimiser's learning rates; for a term,
    that term's part of it); ``realised_change`` (R(θ_{t+1}) − R(θ_t) on the same batches, total rows of the total
    term only, None otherwise or when ``realised_change`` is off); ``update_change`` (∇R·Δθ against the optimiser's
    real update, rows of the total term only, None when ``measure_update`` is off: the real update is not split by
    term); and ``cumulative_predicted_change`` / ``cumulative_realised_change`` / ``cumulative_update_change``: running
    sums over the measured steps of the run (None where the step's value is None), each step weighted by
    ``every_n_steps`` (exact sums when it is 1, an estimate of the whole-run change otherwise).
    """

    cumulative_predicted_change: float
    cumulative_realised_change: float | None
    cumulative_update_change: float | None


class GEffectInstanceRow(TypedDict):
    """One row of :attr:`GEffectCallback.instance_history`: one example of a measured step, on one risk.

    ``side="risk"``: ``g_effect`` is ``∇ℓ_i·g`` for risk example ``index`` (``ℓ_i`` its own risk);
    ``side="objective"``: ``g_effect`` is ``∇R·∇ℓ_i`` for forget example ``index`` (``ℓ_i`` its share of the unlearn
    term). ``index`` counts the examples of the step's micro-batches in order (under DDP: rank-major over the gathered
    ranks), so it is a position, not an identity; ``example`` holds the example's ids from
    :class:`SupportsExampleIds` (objective side only; None otherwise).
    """

    step: int
    risk: str
    side: _Side
    index: int
    g_effect: float
    example: dict[str, Any] | None


class GEffectRankingRow(TypedDict):
    """One forget example of the ranking (a row of ``g_effect_ranking.csv``).

    ``example``: its ids (:class:`SupportsExampleIds`; strings when read back from the CSV file); ``g_effect``: per
    risk name, the objective-side G-effect ``∇R·∇ℓ_i`` summed over the measured steps it appeared in;
    ``measurements``: how many measured appearances that sum has (an example that appears twice in one step, e.g.
    through DDP sampler padding, counts twice).
    """

    example: dict[str, Any]
    g_effect: dict[str, float]
    measurements: int


#: Keys added to the row types after files and checkpoints were first written, with the value older rows mean.
_ADDED_KEYS: dict[type, dict[str, Any]] = {
    GEffectRow: {"term": "total"},
    GEffectInstanceRow: {"side": "risk", "example": None},
}


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
    #: (params,) float64 number of distinct pieces the ranks hold of each parameter (1 unless it is sharded).
    shards: Tensor
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
    #: ``terms``: the objective terms, in the order of the first axis of ``term_per_param`` (else empty).
    term_names: list[str]
    #: ``terms``: (terms, risks, params) float64 per-parameter G-effects of each term ``∇_pR·∇_pT`` (else None).
    term_per_param: Tensor | None
    #: Risk side of ``per_instance``: each risk's per-example ``∇ℓ_i·g``, float64 on the CPU (else None).
    risk_instances: dict[str, Tensor] | None
    #: Objective side of ``per_instance``: each risk's ``∇R·∇ℓ_i`` per forget example, float64 on the CPU (else None).
    objective_instances: dict[str, Tensor] | None
    #: The forget examples' ids, in the order of ``objective_instances`` (None without :class:`SupportsExampleIds`).
    example_ids: list[dict[str, Any]] | None


class GEffectCallback(Callback):
    r"""Measure the G-effect of every ``every_n_steps``-th optimiser step, per layer group, term, step and instance.

    In ``on_before_optimizer_step`` the parameters' ``.grad`` hold the objective gradient exactly as the optimiser
    will use it: accumulated over micro-batches, DDP-averaged, AMP-unscaled, not yet clipped. The callback evaluates
    the module's risks on the step's micro-batches and takes their gradients with :func:`torch.autograd.grad` on the
    unwrapped module (never ``.grad``, never the DDP wrapper), under
    :func:`~lightning.pytorch.utilities.seed.isolate_rng` and the precision plugin's autocast, so the training
    trajectory is bit-identical with and without the callback (a module may change how it runs a step the callback
    measures, e.g. ``lit_unlearn``'s ``backward_per_part``, or ``terms`` with :class:`SupportsSkipUnlearnBackward` on a
    model that uses a parameter twice in a forward: then equal up to float rounding).
    Dot products accumulate in float32; under DDP the local dots are averaged over ranks (one all-reduce), which equals
    the global G-effect exactly when the ranks' batches have equal sizes.

    The risk forward runs in the module's current mode (train mode during fit, as in the paper's code): with dropout
    it is a stochastic estimate, and its random draws do not advance the training RNG. Gradient clipping happens after
    the hook, so the G-effect uses the unclipped gradient. Values are raw per-step values; see the module docstring for
    how the paper's code smooths gradient vectors instead, and why that differs from smoothing the series.

    Args:
        every_n_steps: Measure on optimiser steps whose ``global_step`` is a multiple of this.
        group_by: ``"layer"``: one group per transformer block plus the named ``groups``; ``"parameter"``: one group
            per parameter tensor; ``"none"``: the total only.
        layer_pattern: Regex whose first capturing group is the block index in a parameter name (``group_by="layer"``).
        groups: Named groups for parameters outside the blocks, as ``{group: regex}`` tried in order (first match
            wins; unmatched parameters go to ``"other"``). Default: embedding / final_norm / lm_head.
        coarse_groups: Also report coarse depth groups (level ``"coarse"``): by default the blocks split into
            shallow / middle / deep thirds, blocks only (embedding, final norm and lm_head stay their own groups); see
            ``coarse_boundaries`` for the paper's fixed ranges.
        micro_batches: Evaluate the risks on ``"all"`` micro-batches of the accumulation window (matches the
            accumulated gradient) or only the ``"last"`` one (cheaper). The objective terms and the objective side of
            ``per_instance`` always use every micro-batch, because they decompose the accumulated gradient.
        realised_change: After the step, re-evaluate the risks on the same batches at the new parameters and record
            the realised risk change next to the first-order prediction. Costs one extra forward (no backward) per
            measured step, +0.24 to +0.64 of a plain step on the benchmark model over three runs, hence off by default.
        measure_update: Also measure against the optimiser's actual update ``Δθ = θ_{t+1} − θ_t`` (AdamW is not SGD):
            records ``∇R·Δθ``, the first-order risk change of the real step. Keeps one gradient copy per risk.
        per_instance: Per-example G-effects, stored in ``instance_history`` (rows keyed by ``side``), both without one
            backward per example. ``"risk"`` (or ``True``): each risk example's ``∇ℓ_i·g``, one forward-mode JVP of
            all per-example risks (:class:`SupportsPerExampleRisks`; ``ℓ_i`` is the example's own mean answer NLL, so
            these average to the total only when all examples have the same number of answer tokens).
            ``"objective"``: each forget example's ``∇R·∇ℓ_i`` for every risk ``R``, ``ℓ_i`` its share of the unlearn
            term (:class:`SupportsPerExampleObjective`), one forward-mode JVP of all shares along the risk gradients
            (batched over the risks; keeps one gradient copy per risk); the values sum to the unlearn term's G-effect.
            With :class:`SupportsExampleIds` the rows carry the examples' ids and ``g_effect_ranking.csv`` is written
            (without it there is no stable key across steps: the ranking is skipped, with a warning). ``"both"``: both
            sides. ``False``: none. Under DDP the values of all ranks are gathered, rank-major; an objective-side value
            is the rank's share of the global (rank-averaged) unlearn term, i.e. divided by the world size. Attention
            runs on the math SDPA kernel inside the JVPs (the fused CPU/flash kernels have no forward-mode rule).
        streaming: Dot each gradient with its partner as soon as autograd produces it and drop it, so the extra memory
            is one parameter's gradient instead of a full gradient copy (plus the copies ``measure_update``,
            the objective side and ``terms`` through ``objective_terms`` keep: one per risk; ``terms`` through
            :class:`SupportsLossTerms` keeps one, the unlearn term's gradient).
        log_prefix: Prefix of the logged scalars: ``<prefix>/<risk>/<group>`` without ``terms``,
            ``<prefix>/<risk>/<term>/<group>`` with ``terms`` (``term`` is ``total``, ``unlearn`` or ``regularizer``;
            the keys without ``terms`` are unchanged so existing dashboards keep working).
        output_dir: Where ``g_effect.csv`` (and ``g_effect_instances.csv``, ``g_effect_ranking.csv``, ``g_effect.png``)
            are written when fit ends or fails. Default: ``trainer.log_dir``, else ``trainer.default_root_dir``.
        save_plot: Also write a PNG of the per-group curves (needs matplotlib).
        terms: Also measure the G-effect of each objective term next to the total, for every risk and group
            (:class:`SupportsObjectiveTerms`): rows with ``term="unlearn"`` (the paper's G-effect) and
            ``term="regularizer"`` next to ``term="total"``. With :class:`SupportsLossTerms` on one process with
            automatic optimisation (every ``lit_unlearn`` objective), the unlearn term's gradient is taken from the
            step's own forward just before its backward (no forward; one gradient copy) and the regulariser's is
            ``.grad`` minus it (exact up to the float32 rounding of those two gradients: a few ulps of the larger
            term's G-effect); with :class:`SupportsSkipUnlearnBackward` too (every ``lit_unlearn`` objective; not
            under fp16 loss scaling) that gradient goes into ``.grad`` and the module's backward differentiates the
            regulariser alone, so the forget part is back-propagated once, as on an unmeasured step, and ``.grad`` is
            the whole loss's (bit for bit unless a parameter is used twice in a forward, e.g. a tied head: then up to
            float rounding). Otherwise each term's gradient comes from
            its own backward pass of ``objective_terms``, independently of ``.grad``, so ``unlearn + regularizer =
            total`` holds as a check (exactly, up to float rounding, without dropout; under DDP the terms use the
            all-reduced risk gradient, one gradient all-reduce per risk); that costs one forward of the objective and
            one backward per term, and keeps one gradient copy per risk.
        coarse_boundaries: Block indices at which a new coarse group starts, e.g. ``(10, 20)`` for the paper's groups
            of a 32-block model: blocks 0–9, 10–19 and 20–31, named ``blocks_00_09``, ``blocks_10_19`` and
            ``blocks_20_31+final_norm``. As in the paper's code, the final norm (the named group ``"final_norm"``) is
            counted in the last coarse group; the embedding and lm_head stay their own groups, as the paper's
            ``embed`` and ``lm`` buckets. Each boundary must lie inside the model's blocks (``first < b ≤ last``).
            Needs ``coarse_groups=True`` and ``group_by="layer"``.
        plot_smoothing: Smooth the curves of the PNG with an exponential moving average of the plotted series,
            ``s_t = w·s_{t−1} + (1−w)·e_t`` with this weight ``w`` in [0, 1) (the raw values are drawn faintly
            behind). Plot only: the stored and logged values stay raw, and this is not the paper's gradient EMA.
        reuse_step_forward: Take the risks from ``training_step``'s own forward instead of a forward of their own
            (:class:`SupportsStepRisks`): on measured steps the module keeps its graph through the objective's
            backward and the callback runs one backward per risk through it, so a measured step costs backward
            passes but no extra forward. The values equal the default mode's when the forward is deterministic
            (no dropout in training mode: the default mode's risk forward draws its own dropout masks). The memory
            of the step's activations is held until the risk gradients are taken. Single process only (DDP's and
            FSDP2's hooks expect one backward per forward).

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
        per_instance: bool | Literal["risk", "objective", "both"] = False,
        streaming: bool = True,
        log_prefix: str = "g_effect",
        output_dir: str | None = None,
        save_plot: bool = True,
        terms: bool = False,
        coarse_boundaries: tuple[int, ...] | None = None,
        plot_smoothing: float | None = None,
        reuse_step_forward: bool = False,
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
        self._sides = _instance_sides(per_instance)
        if coarse_boundaries is not None:
            coarse_boundaries = tuple(coarse_boundaries)
            if not coarse_groups or group_by != "layer":
                raise ValueError(
                    f"GEffectCallback: coarse_boundaries={coarse_boundaries} needs coarse_groups=True and "
                    f"group_by='layer' (got coarse_groups={coarse_groups!r}, group_by={group_by!r})."
                )
            ordered = all(isinstance(b, int) and not isinstance(b, bool) for b in coarse_boundaries) and all(
                a < b for a, b in zip(coarse_boundaries, coarse_boundaries[1:], strict=False)
            )
            if not coarse_boundaries or not ordered:
                raise ValueError(
                    "GEffectCallback: coarse_boundaries must be strictly increasing block indices, e.g. (10, 20) for "
                    f"the paper's blocks 0-9 / 10-19 / 20+, got {coarse_boundaries!r}."
                )
        if plot_smoothing is not None and not 0.0 <= plot_smoothing < 1.0:
            raise ValueError(
                f"GEffectCallback: plot_smoothing is the weight of the previous smoothed value, in [0, 1) (e.g. 0.6), "
                f"got {plot_smoothing!r}."
            )
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
        self.terms = terms
        self.coarse_boundaries = coarse_boundaries
        self.plot_smoothing = plot_smoothing
        self.reuse_step_forward = reuse_step_forward

        #: One row per (step, risk, term, group).
        self.history: list[GEffectRow] = []
        #: One row per (step, risk, side, example) when ``per_instance``.
        self.instance_history: list[GEffectInstanceRow] = []
        #: The last measured values, keyed like the logged scalars without the prefix: ``"<risk>/<group>"``, or
        #: ``"<risk>/<term>/<group>"`` with ``terms``.
        self.last_g_effect: dict[str, float] = {}

        self._batches: list[Any] = []
        self._batch_step = -1
        self._measured_step = -1
        self._pending: _PendingStep | None = None
        self._layout: _GroupLayout | None = None
        #: Running sums of the risk changes: see :func:`_with_running_sums`.
        self._cumulative: dict[str, float] = {}
        self._files: dict[str, Path] = {}
        self._directory: Path | None = None
        self._warned_nonfinite = False
        #: ``terms`` through :class:`SupportsLossTerms` (decided at fit start), and while a measured step's
        #: micro-batches run: the unlearn term's accumulated gradient per parameter, and the terms recorded.
        self._loss_terms = False
        #: The fast path hands the unlearn term's gradient to ``.grad`` (:class:`SupportsSkipUnlearnBackward`).
        self._skip_unlearn = False
        #: The gradients accumulated before the micro-batch being differentiated, per parameter (see above).
        self._set_aside: list[tuple[Tensor, Tensor | None]] = []
        self._unlearn_gradient: dict[Tensor, Tensor] = {}
        self._recorded_terms: set[str] = set()

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

    def objective_terms(self, pl_module: LightningModule, batches: Sequence[Any]) -> Mapping[str, Tensor]:
        """Return the objective's terms; override for modules without :class:`SupportsObjectiveTerms`.

        Args:
            pl_module: The (unwrapped) module being trained.
            batches: Every micro-batch of the measured optimiser step.

        Returns:
            ``{"unlearn": ..., "regularizer": ...}`` (or only ``"unlearn"``), differentiable scalars averaged over the
            micro-batches as Lightning averages accumulated gradients.
        """
        return pl_module.objective_terms(batches)

    def per_example_unlearn(self, pl_module: LightningModule, batches: Sequence[Any]) -> Tensor:
        """Return each forget example's unlearn share; override without :class:`SupportsPerExampleObjective`.

        Args:
            pl_module: The (unwrapped) module being trained; its parameters are swapped for dual tensors here.
            batches: Every micro-batch of the measured optimiser step.

        Returns:
            Shape (N,), summing to ``objective_terms(batches)["unlearn"]``.
        """
        return pl_module.per_example_unlearn(batches)

    def example_ids(self, pl_module: LightningModule, batches: Sequence[Any]) -> Sequence[Mapping[str, Any]]:
        """Return the forget examples' ids; override for modules without :class:`SupportsExampleIds`.

        Args:
            pl_module: The (unwrapped) module being trained.
            batches: Every micro-batch of the measured optimiser step.

        Returns:
            One mapping per forget example, in the order of :meth:`per_example_unlearn`.
        """
        return pl_module.example_ids(batches)

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(GEffectCallback, method)

    def _provides_ids(self, pl_module: LightningModule) -> bool:
        return self._overrides("example_ids") or isinstance(pl_module, SupportsExampleIds)

    # ------------------------------------------------------------------ validation

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        culprit = next((cls for cls in (FSDPStrategy, DeepSpeedStrategy) if isinstance(trainer.strategy, cls)), None)
        if culprit is not None:
            raise NotImplementedError(
                f"GEffectCallback does not support {culprit.__name__}: it flattens the parameters into buffers of "
                "its own, so neither the original parameter names (the per-layer groups) nor each rank's piece of a "
                "parameter's gradient can be read. For sharded training use "
                "strategy=lightning.pytorch.strategies.ModelParallelStrategy with a module that applies FSDP2 "
                "(fully_shard) in configure_model: the G-effect is then exact. Otherwise use a single device or "
                "strategy='ddp'."
            )
        if self._sides and isinstance(trainer.strategy, ModelParallelStrategy):
            raise NotImplementedError(_PER_INSTANCE_SHARDED)
        if self.reuse_step_forward and (isinstance(trainer.strategy, ModelParallelStrategy) or trainer.world_size > 1):
            # The step's graph runs through the strategy's wrapper (DDP's reducer, FSDP2's reduce-scatter hooks),
            # which expect one backward per forward; the default mode's risk forward bypasses the wrapper.
            raise NotImplementedError(
                "GEffectCallback(reuse_step_forward=True) runs on a single process only: under DDP or FSDP2 the "
                "step's forward goes through the strategy's wrapper, whose gradient-synchronisation hooks expect one "
                "backward pass per forward. Use the default reuse_step_forward=False, which is exact there."
            )
        if self.reuse_step_forward and not isinstance(pl_module, SupportsStepRisks):
            raise TypeError(
                f"GEffectCallback(reuse_step_forward=True) needs SupportsStepRisks, but {type(pl_module).__name__} "
                "has no `keep_step_risks(self, keep)` and `step_risks(self)` methods (the risks of training_step's "
                "own forward, with the graph kept by backward). Add them, or turn reuse_step_forward off."
            )
        owner = type(pl_module).__name__
        if not self._overrides("risk_losses") and not isinstance(pl_module, SupportsRiskLosses):
            raise TypeError(
                f"GEffectCallback needs the risks to measure, but {owner} has no "
                "`risk_losses(self, batches) -> Mapping[str, Tensor]` method. Add it to the module (e.g. return "
                '{"forget": nll_forget, "retain": nll_retain}) or subclass GEffectCallback and override '
                "`risk_losses(self, pl_module, batches)`."
            )
        needs = [
            (
                "risk" in self._sides,
                "per_example_risks",
                SupportsPerExampleRisks,
                "per_instance='risk'",
                "`per_example_risks(self, batches) -> Mapping[str, Tensor]` method (one value per example and risk)",
            ),
            (
                self.terms,
                "objective_terms",
                SupportsObjectiveTerms,
                "terms=True",
                '`objective_terms(self, batches) -> Mapping[str, Tensor]` method ({"unlearn": ..., ...})',
            ),
            (
                "objective" in self._sides,
                "per_example_unlearn",
                SupportsPerExampleObjective,
                "per_instance='objective'",
                "`per_example_unlearn(self, batches) -> Tensor` method (each forget example's unlearn share)",
            ),
        ]
        for wanted, method, protocol, option, what in needs:
            if wanted and not self._overrides(method) and not isinstance(pl_module, protocol):
                raise TypeError(
                    f"GEffectCallback({option}) needs {protocol.__name__}, but {owner} has no {what}. Add it, "
                    f"override `GEffectCallback.{method}`, or turn {option.split('=')[0]} off."
                )
        if "objective" in self._sides and not self._provides_ids(pl_module):
            rank_zero_warn(
                f"GEffectCallback: {owner} has no `example_ids(self, batches)` method, so the objective-side instance "
                "rows carry no example ids and g_effect_ranking.csv will not be written (an example's position in a "
                "step is not a stable key across steps). Add example_ids to rank the forget examples."
            )
        culprit = _reentrant_checkpointing(pl_module)
        if culprit is not None:
            raise ValueError(
                f"GEffectCallback cannot differentiate through reentrant gradient checkpointing (module "
                f"{culprit!r}): torch.autograd.grad does not see parameters inside a reentrant checkpoint. Enable it "
                'with `gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})` or '
                "call torch.utils.checkpoint.checkpoint(..., use_reentrant=False)."
            )
        if self.coarse_boundaries is not None:
            # Where the module already holds its parameters, a boundary outside its blocks fails here rather than
            # at the first measured step (modules that build the model in configure_model are checked then).
            layer_rx = re.compile(self.layer_pattern)
            names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
            blocks = sorted({int(m.group(1)) for m in map(layer_rx.search, names) if m})
            if blocks:
                _coarse_chunks(blocks, self.coarse_boundaries)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A second fit with the same callback starts its step counter afresh (history is kept).
        self._batches, self._batch_step, self._measured_step, self._pending = [], -1, -1, None
        self._set_aside = []
        # Resolved here, where every rank runs the hook: trainer.log_dir is a broadcast from rank 0, which would
        # wait forever if rank 0 alone asked for it when writing the files (or after an exception on one rank).
        self._directory = self._output_dir(trainer)
        # The terms from training_step's own graph need its loss to be the one backward differentiates, unscaled but
        # for the accumulation divisor (automatic optimisation), and autograd.grad to reach unsharded parameters
        # without a strategy hook in between (one process): elsewhere objective_terms is exact.
        self._loss_terms = (
            self.terms
            and isinstance(pl_module, SupportsLossTerms)
            and not self._overrides("objective_terms")
            and pl_module.automatic_optimization
            and trainer.world_size == 1
            and not isinstance(trainer.strategy, ModelParallelStrategy)
        )
        # fp16 scales the loss backward receives: adding the unscaled unlearn gradient would mix the two scales.
        self._skip_unlearn = (
            self._loss_terms and isinstance(pl_module, SupportsSkipUnlearnBackward) and trainer.scaler is None
        )
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
            if self.reuse_step_forward:
                pl_module.keep_step_risks(False)
            if self._loss_terms:
                pl_module.keep_loss_terms(False)
            return
        if step != self._batch_step:
            # First micro-batch of a measured accumulation window: forget batches of an earlier window.
            self._batches = []
            self._batch_step = step
            if self.reuse_step_forward:
                pl_module.keep_step_risks(True)
            if self._loss_terms:
                pl_module.keep_loss_terms(True)
                self._unlearn_gradient, self._recorded_terms = {}, set()
        if pl_module.automatic_optimization and len(self._batches) >= trainer.accumulate_grad_batches:
            # A batch whose training_step returned None was not stepped on: keep only the window's micro-batches.
            self._batches.pop(0)
        self._batches.append(batch)

    @override
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        step = trainer.global_step
        # _batch_step is set on measured steps only: this micro-batch belongs to a window still to be measured.
        if not self._loss_terms or step != self._batch_step or step == self._measured_step:
            return
        owner = type(pl_module).__name__
        terms = self._checked_terms(pl_module.loss_terms(), f"{owner}.loss_terms")
        # The loss backward receives is training_step's divided by the accumulation steps (and times the fp16 loss
        # scale): the recorded terms must add up to it, or their gradients would not split the applied one.
        scale = (trainer.scaler.get_scale() if trainer.scaler is not None else 1.0) / trainer.accumulate_grad_batches
        total = sum(t.detach().double() for t in terms.values()) * scale
        size = sum(t.detach().double().abs() for t in terms.values()) * scale
        # A non-finite loss has nothing to check: its step is dropped with a warning once measured (see _finalise).
        consistent = not torch.isfinite(total) or torch.isclose(
            loss.detach().double(), total, rtol=1e-5, atol=1e-6 * float(size) + 1e-12
        )
        if not consistent:
            raise RuntimeError(
                f"GEffectCallback(terms=True): the terms {owner}.loss_terms() recorded sum to {float(total):.6g} "
                f"(after Lightning's scaling) but the loss training_step returned is {float(loss.detach()):.6g} at "
                f"step {step}. Record the terms of the very loss training_step returns, once per training_step."
            )
        params = [p for p in pl_module.parameters() if p.requires_grad]
        unlearn = terms["unlearn"] / trainer.accumulate_grad_batches
        # The graph is the step's own. The objective's backward that follows this hook needs it, unless the module
        # leaves the unlearn term out of that backward: then its part (the forget activations) is freed here, not
        # held through the measurement, but for the risks of reuse_step_forward, which run through it.
        keep = not self._skip_unlearn or self.reuse_step_forward
        grads = torch.autograd.grad(unlearn, params, retain_graph=keep, allow_unused=True)
        for p, grad in zip(params, grads, strict=True):
            if grad is None:  # a parameter the term does not reach: zero
                continue
            if p in self._unlearn_gradient:
                self._unlearn_gradient[p].add_(grad)
            else:
                self._unlearn_gradient[p] = grad.clone() if self._skip_unlearn else grad
            if self._skip_unlearn:
                # The module's backward adds the regulariser's gradient to this micro-batch's unlearn gradient, and
                # on_after_backward adds the earlier micro-batches' sum: `g + (u + r)`, the very sums (bit for bit)
                # of the whole loss's backward, which accumulates u + r into g.
                self._set_aside.append((p, p.grad))
                p.grad = grad
        if self._skip_unlearn:
            pl_module.skip_unlearn_backward()
        self._recorded_terms.update(terms)

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for p, earlier in self._set_aside:
            if earlier is not None:
                p.grad = earlier.add_(p.grad)
        self._set_aside = []

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
        window = list(self._batches)
        batches = window if self.micro_batches == "all" else window[-1:]
        lrs = _param_lrs(optimizer, params)
        objective_side = "objective" in self._sides
        # The unlearn term's gradient from training_step's own graph (SupportsLossTerms), else None.
        unlearn = self._take_unlearn_gradient(pl_module, params)
        # The risk gradients are kept (one copy per risk) when something after the risk pass needs them whole.
        keep = self.measure_update or (self.terms and unlearn is None) or objective_side
        sharded = _check_sharded(params, bool(self._sides))
        # Sharded gradients arrive only through FSDP's own backward, which writes `.grad` of every trainable
        # parameter: those are saved and put back around each such pass.
        trainable = [p for p in pl_module.parameters() if p.requires_grad] if sharded else None
        # Each rank dots its own piece of every parameter; a piece held by several ranks (a replica) must count
        # once in the rank mean below, so a local dot is multiplied by the number of distinct pieces.
        shards = torch.tensor([float(_distinct_shards(p)) for p in params], device=_local(params[0]).device)

        with self._quiet_forward(trainer, pl_module), torch.enable_grad():
            if self.reuse_step_forward:
                risks = self._step_risks(pl_module, window)
            else:
                risks = self._checked_risks(pl_module, batches)
            names = list(risks)
            # One (risks, *shape) buffer per parameter (its local shard when sharded): row r is risk r's gradient.
            # Stacked this way they are also the batched tangents of the objective-side JVP, without a second copy.
            stores = (
                [torch.zeros((len(names), *_local(p).shape), dtype=p.dtype, device=_local(p).device) for p in params]
                if keep
                else []
            )
            # Each risk gradient is dotted with the objective gradient and, with the step's unlearn term, with its
            # gradient too, in the same backward pass.
            partners = [[_local(p.grad) for p in params]] + ([unlearn] if unlearn is not None else [])
            dots, unlearn_dots = [], []
            for r, name in enumerate(names):
                store = [s[r] for s in stores] if keep else None
                last = r == len(names) - 1
                d = self._gradient_dots(risks[name], params, partners, store, not last, trainable) * shards
                dots.append(d[0])
                unlearn_dots.append(d[1:])
            values = torch.stack([risks[n].detach().float() for n in names])
            del risks
            if self.reuse_step_forward:
                # The risk gradients are taken: the step's graph can go.
                pl_module.keep_step_risks(False)

        if keep and trainer.world_size > 1 and not sharded and (self.terms or objective_side):
            # The terms and the per-example shares below are this rank's, and so is ∇R: their dot product is
            # bilinear, so a mean of local dots is not the global value. With ∇R averaged over ranks first it is.
            # (Sharded gradients are already averaged over ranks by FSDP's reduce-scatter.)
            stores = [trainer.strategy.reduce(s, reduce_op="mean") for s in stores]
        kept = [[s[r] for s in stores] for r in range(len(names))] if keep else []
        # ∇R·θ_t now, ∇R·θ_{t+1} after the step: their float64 difference is ∇R·Δθ without a θ_t copy.
        anchors = [_dots64(grads, params) for grads in kept] if self.measure_update else []

        term_names: list[str] = []
        term_dots = torch.zeros(0, device=values.device)
        if unlearn is not None:
            # (terms, risks, params): the regulariser's gradient is the applied one minus the unlearn term's, since
            # the recorded terms sum to the loss (checked in on_before_backward).
            term_names = [t for t in TERMS if t in self._recorded_terms]
            unlearn_term = torch.cat(unlearn_dots)
            term_dots = torch.stack([unlearn_term, torch.stack(dots) - unlearn_term][: len(term_names)])
            self._unlearn_gradient, self._recorded_terms = {}, set()
        elif self.terms:
            with self._quiet_forward(trainer, pl_module), torch.enable_grad():
                source = f"{type(pl_module).__name__}.objective_terms"
                terms = self._checked_terms(self.objective_terms(pl_module, window), source)
                term_names = list(terms)
                last = len(term_names) - 1
                # (terms, risks, params): each term's own backward pass, dotted with every kept risk gradient.
                term_dots = torch.stack(
                    [
                        self._gradient_dots(terms[t], params, kept, None, k < last, trainable)
                        for k, t in enumerate(term_names)
                    ]
                )
                term_dots = term_dots * shards
                del terms

        # One all-reduce for everything on every rank, before any rank-zero-only code (DDP collectives must match).
        local = torch.cat([torch.cat(dots), values, term_dots.reshape(-1).to(values.device)])
        reduced = trainer.strategy.reduce(local, reduce_op="mean").cpu().double()
        n_risk, n_param = len(names), len(params)
        per_param = reduced[: n_risk * n_param].view(n_risk, n_param)
        risk_values = reduced[n_risk * n_param : n_risk * n_param + n_risk]
        term_per_param = None
        if self.terms:
            term_per_param = reduced[n_risk * n_param + n_risk :].view(len(term_names), n_risk, n_param)

        risk_instances = None
        if "risk" in self._sides:
            risk_instances = self._instance_effects(trainer, pl_module, named, batches, names)
        objective_instances = ids = None
        if objective_side:
            objective_instances, ids = self._objective_effects(trainer, pl_module, named, window, names, stores)

        self._pending = _PendingStep(
            step=step,
            names=names,
            per_param=per_param,
            risk_values=risk_values,
            lrs=torch.tensor(lrs, dtype=torch.float64),
            shards=shards.double(),
            layout=layout,
            batches=list(batches),
            params=params,
            kept=kept if self.measure_update else [],
            anchors=anchors,
            term_names=term_names,
            term_per_param=term_per_param,
            risk_instances=risk_instances,
            objective_instances=objective_instances,
            example_ids=ids,
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
                change = (_dots64(grads, pending.params) - anchor) * pending.shards.to(anchor.device)
                parts.append(change.float())
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
        finite = torch.isfinite(pending.per_param).all()
        if pending.term_per_param is not None:
            finite = finite and torch.isfinite(pending.term_per_param).all()
        if not finite:
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
        self.last_g_effect = {self._key(r): r["g_effect"] for r in rows}
        self._log(trainer, pending.step, rows)

    def _key(self, row: GEffectRow) -> str:
        """The scalar's name without the prefix: ``<risk>/<group>``, or ``<risk>/<term>/<group>`` with ``terms``."""
        if self.terms:
            return f"{row['risk']}/{row['term']}/{row['group']}"
        return f"{row['risk']}/{row['group']}"

    def _log(self, trainer: Trainer, step: int, rows: Sequence[GEffectRow]) -> None:
        # Direct log_metrics with an explicit step: values given to self.log reach the logger only on the trainer's
        # log_every_n_steps cadence, so a value measured every `every_n_steps` steps would be recorded under a later
        # step, or dropped when another value of the same key arrives before the next flush.
        metrics: dict[str, float] = {}
        for row in rows:
            metrics[f"{self.log_prefix}/{self._key(row)}"] = row["g_effect"]
            if row["level"] == "total" and row["term"] == "total":
                base = f"{self.log_prefix}_risk/{row['risk']}"
                metrics[f"{base}/value"] = row["risk_value"]
                for key in _CHANGES:
                    if row[key] is not None:
                        metrics[f"{base}/{key}"] = row[key]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ helpers: risks, terms and gradients

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

    def _step_risks(self, pl_module: LightningModule, window: Sequence[Any]) -> dict[str, Tensor]:
        """The risks of the window's own ``training_step`` forwards (``reuse_step_forward``), averaged over the
        micro-batches (or only the last, ``micro_batches="last"``) like :meth:`risk_losses`.

        Raises:
            RuntimeError: the module recorded another number of forwards than the window has micro-batches, or
                risks without a graph.
        """
        records = list(pl_module.step_risks())
        owner = type(pl_module).__name__
        if len(records) != len(window):
            raise RuntimeError(
                f"GEffectCallback(reuse_step_forward=True): {owner} recorded the risks of {len(records)} "
                f"training_step call(s), but the optimiser step accumulated {len(window)} micro-batch(es). Record "
                "exactly once per training_step between keep_step_risks(True) and keep_step_risks(False)."
            )
        used = records if self.micro_batches == "all" else records[-1:]
        names = list(used[0])
        risks = {name: torch.stack([r[name].reshape(()) for r in used]).mean() for name in names}
        for name, risk in risks.items():
            if not risk.requires_grad:
                raise RuntimeError(
                    f"GEffectCallback(reuse_step_forward=True): risk {name!r} recorded by {owner} has no graph; "
                    "record it from training_step's forward, outside torch.no_grad() and without detach()."
                )
        return risks

    def _take_unlearn_gradient(self, pl_module: LightningModule, params: list[Tensor]) -> list[Tensor] | None:
        """The unlearn term's gradient accumulated by :meth:`on_before_backward` over the step's micro-batches, one
        tensor per measured parameter (zero where the term does not reach it); None unless the step recorded terms.
        Recording stops here: the step's terms are all in."""
        if not self._loss_terms:
            return None
        pl_module.keep_loss_terms(False)
        if not self._recorded_terms:
            return None
        # on_before_backward kept a buffer for every parameter the term reaches; params are those with a gradient.
        return [self._unlearn_gradient[p] if p in self._unlearn_gradient else torch.zeros_like(p) for p in params]

    def _checked_terms(self, terms: Any, source: str) -> dict[str, Tensor]:
        """Objective terms returned by ``source`` (``"<Module>.<method>"``), validated and ordered as :data:`TERMS`."""
        keys = sorted(terms) if isinstance(terms, Mapping) else type(terms).__name__
        if not isinstance(terms, Mapping) or "unlearn" not in terms or set(terms) - set(TERMS):
            raise TypeError(
                f"GEffectCallback: {source} must return {{'unlearn': forget_weight * L_forget, "
                f"'regularizer': retain_weight * L_retain}} (only 'unlearn' without a regulariser), got {keys}."
            )
        out = {}
        for name in TERMS:
            term = terms.get(name)
            if term is None:
                continue
            if not isinstance(term, Tensor) or term.numel() != 1:
                raise TypeError(
                    f"GEffectCallback: term {name!r} from {source} must be a scalar tensor, got "
                    f"{getattr(term, 'shape', type(term).__name__)}."
                )
            if not term.requires_grad:
                raise RuntimeError(
                    f"GEffectCallback: term {name!r} from {source} does not require grad. Compute it "
                    "with the forward passes training_step uses (outside torch.no_grad(), without detach()), or leave "
                    "the term out when the module has none (e.g. its weight is 0)."
                )
            out[name] = term.reshape(())
        return out

    def _gradient_dots(
        self,
        loss: Tensor,
        params: list[Tensor],
        partners: Sequence[Sequence[Tensor]],
        store: list[Tensor] | None,
        retain_graph: bool,
        trainable: list[Tensor] | None = None,
    ) -> Tensor:
        """Per-parameter float32 dots of ``∇loss`` with each partner vector, from one backward pass.

        Args:
            loss: The scalar to differentiate.
            params: The measured parameters.
            partners: Vectors to dot the gradient with, each one tensor per parameter (the objective gradient ``.grad``
                for a risk; the kept risk gradients for a term); local shards when the parameters are sharded.
            store: Where to add the gradient, one tensor per parameter (zeros on entry, or a sum being accumulated),
                or None not to keep it.
            retain_graph: Keep the graph for a later backward through the same forward.
            trainable: Sharded parameters only (None otherwise): every trainable parameter of the module, whose
                ``.grad`` the backward pass overwrites and this method restores.

        Returns:
            (partners, params) float32 dots of this rank's pieces; zero for parameters the loss does not depend on.
        """
        dots = torch.zeros((len(partners), len(params)), dtype=torch.float32, device=_local(params[0]).device)
        try:
            if trainable is not None:
                # FSDP2 computes a block's gradient on its all-gathered parameters, which are not the registered
                # (sharded) ones, so torch.autograd.grad cannot reach them: only a real backward does, through
                # FSDP's hooks, which reduce-scatter the rank-averaged gradient into the sharded `.grad`. The
                # objective gradient is set aside for that pass and put back, the same tensors, afterwards.
                saved = [p.grad for p in trainable]
                for p in trainable:
                    p.grad = None
                try:
                    torch.autograd.backward(loss, retain_graph=retain_graph)
                    for i, p in enumerate(params):
                        if p.grad is None:
                            continue
                        grad = _local(p.grad)
                        for j, partner in enumerate(partners):
                            dots[j, i] = _dot32(grad, partner[i])
                        if store is not None:
                            store[i].add_(grad)
                finally:
                    for p, grad in zip(trainable, saved, strict=True):
                        p.grad = grad
            elif self.streaming:
                # A leaf tensor hook receives each parameter's full gradient; dotting it there and handing autograd a
                # stride-0 zero view means no full gradient copy ever exists (unless `store` asks for one).
                def make_hook(i: int) -> Callable[[Tensor], Tensor]:
                    def hook(grad: Tensor) -> Tensor:
                        for j, partner in enumerate(partners):
                            dots[j, i] += _dot32(grad, partner[i])
                        if store is not None:
                            store[i].add_(grad.detach())
                        return torch.zeros((), dtype=grad.dtype, device=grad.device).expand_as(grad)

                    return hook

                handles = [p.register_hook(make_hook(i)) for i, p in enumerate(params)]
                try:
                    torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
                finally:
                    for handle in handles:
                        handle.remove()
            else:
                grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
                for i, grad in enumerate(grads):
                    # Unused parameters (None) have a zero gradient.
                    if grad is not None:
                        for j, partner in enumerate(partners):
                            dots[j, i] = _dot32(grad, partner[i])
                        if store is not None:
                            store[i].add_(grad)
        except RuntimeError as err:
            if "reentrant" in str(err):
                raise RuntimeError(
                    "GEffectCallback: the gradient crosses reentrant gradient checkpointing. Use "
                    "torch.utils.checkpoint.checkpoint(..., use_reentrant=False) (HF: gradient_checkpointing_kwargs="
                    '{"use_reentrant": False}).'
                ) from err
            raise
        return dots

    def _instance_effects(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        named: list[tuple[str, Tensor]],
        batches: Sequence[Any],
        names: list[str],
    ) -> dict[str, Tensor]:
        """Per-example ``∇ℓ_i·g`` for every risk, as one forward-mode JVP of the per-example risks along ``g``."""
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

    def _objective_effects(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        named: list[tuple[str, Tensor]],
        window: Sequence[Any],
        names: list[str],
        stores: list[Tensor],
    ) -> tuple[dict[str, Tensor], list[dict[str, Any]] | None]:
        """Per forget example, ``∇R·∇ℓ_i`` for every risk: one forward-mode JVP of the shares, batched over the risks.

        Args:
            trainer: The trainer (precision context, strategy for the gather).
            pl_module: The module; its parameters are swapped for dual tensors inside the JVP.
            named: The measured parameters with their names.
            window: Every micro-batch of the step.
            names: The risk names, in the order of the rows of ``stores``.
            stores: One (risks, *shape) tensor per parameter: the risk gradients (rank-averaged under DDP).

        Returns:
            Per risk, the gathered (N_total,) float64 values on the CPU (rank-major under DDP), and the gathered example
            ids in the same order (None when the module names no examples).
        """
        owner = type(pl_module).__name__
        primals = {f"module.{n}": p.detach() for n, p in named}
        tangents = {f"module.{n}": s for (n, _), s in zip(named, stores, strict=True)}
        wrapper = _BoundCall(pl_module, self.per_example_unlearn)

        def shares(params: dict[str, Tensor]) -> Tensor:
            out = torch.func.functional_call(wrapper, params, (window,), strict=False)
            if not isinstance(out, Tensor) or out.ndim != 1:
                raise TypeError(
                    f"GEffectCallback: {owner}.per_example_unlearn must return a 1-D tensor, one share of the unlearn "
                    f"term per forget example, got {getattr(out, 'shape', type(out).__name__)}."
                )
            return out.float()

        def along(tangent: dict[str, Tensor]) -> Tensor:
            return torch.func.jvp(shares, (primals,), (tangent,))[1]

        # vmap over the risks evaluates the primal once and carries one tangent per risk; randomness="same" gives
        # every risk the same dropout draw, so all risks see the same function.
        with self._quiet_forward(trainer, pl_module), torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            values = torch.func.vmap(along, randomness="same")(tangents).detach()  # (risks, N)
        n_local = values.shape[1]
        ids = self._checked_ids(pl_module, window, n_local) if self._provides_ids(pl_module) else None
        # Each rank's shares add up to its own unlearn term and DDP averages the ranks' gradients, so a rank's share
        # of the global unlearn term is its local share divided by the world size.
        world = trainer.world_size
        gathered = trainer.strategy.all_gather(values / world)
        # (world, risks, N) under DDP, (risks, N) otherwise: rank-major per risk.
        gathered = gathered.reshape(world, len(names), n_local).transpose(0, 1).reshape(len(names), -1)
        gathered = gathered.double().cpu()
        if ids is not None and world > 1:
            ids = _all_gather_objects(ids, world)
        return {name: gathered[r] for r, name in enumerate(names)}, ids

    def _checked_ids(self, pl_module: LightningModule, window: Sequence[Any], n: int) -> list[dict[str, Any]]:
        """The forget examples' ids from ``example_ids``, validated, as plain dicts of str/int/float/bool."""
        owner = type(pl_module).__name__
        raw = self.example_ids(pl_module, window)
        if len(raw) != n:
            raise ValueError(
                f"GEffectCallback: {owner}.example_ids returned {len(raw)} ids for the {n} forget examples of "
                "per_example_unlearn; return one mapping per forget example, in the same order."
            )
        out: list[dict[str, Any]] = []
        for i, ids in enumerate(raw):
            if not isinstance(ids, Mapping) or not ids:
                raise TypeError(
                    f"GEffectCallback: {owner}.example_ids must return non-empty mappings such as "
                    f"{{'index': 17, 'question': '...'}}, got {ids!r} for example {i}."
                )
            row: dict[str, Any] = {}
            for key, value in ids.items():
                if isinstance(value, Tensor) and value.numel() == 1:
                    value = value.item()
                if not isinstance(key, str) or key == RANKING_COUNT or key.startswith(RANKING_PREFIX):
                    raise ValueError(
                        f"GEffectCallback: {owner}.example_ids key {key!r} is not allowed: keys are str and must not "
                        f"be {RANKING_COUNT!r} or start with {RANKING_PREFIX!r} (the ranking file's own columns)."
                    )
                if not isinstance(value, (str, int, float, bool)):
                    raise TypeError(
                        f"GEffectCallback: {owner}.example_ids value {key!r}={value!r} of example {i} must be a str, "
                        "int, float or bool (an id that is the same at every step, e.g. the dataset index)."
                    )
                row[key] = value
            if out and list(row) != list(out[0]):
                raise ValueError(
                    f"GEffectCallback: {owner}.example_ids must give every example the same keys, got "
                    f"{list(out[0])} and {list(row)}."
                )
            out.append(row)
        return out

    # ------------------------------------------------------------------ helpers: grouping

    def _group_layout(self, named: list[tuple[str, Tensor]]) -> "_GroupLayout":
        names = tuple(n for n, _ in named)
        if self._layout is None or self._layout.names != names:
            self._layout = _GroupLayout.build(
                names, self.group_by, self.layer_pattern, self.groups, self.coarse_groups, self.coarse_boundaries
            )
        return self._layout

    # ------------------------------------------------------------------ outputs

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.reuse_step_forward:
            # A last measured window that never reached an optimiser step must not keep its graph.
            pl_module.keep_step_risks(False)
        self._write_outputs(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.reuse_step_forward and isinstance(pl_module, SupportsStepRisks):
            pl_module.keep_step_risks(False)
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
        directory = self._directory or self._output_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_csv(self._target(directory, "g_effect.csv"), self.history)
        if self.instance_history:
            _atomic_write_csv(self._target(directory, "g_effect_instances.csv"), self.instance_history)
            objective = [r for r in self.instance_history if r["side"] == "objective"]
            if any(r["example"] is None for r in objective):
                rank_zero_warn(
                    "GEffectCallback: g_effect_ranking.csv not written: objective-side instance rows without example "
                    "ids (the module has no example_ids); the values are in g_effect_instances.csv."
                )
            elif objective:
                ranking = [_ranking_record(row) for row in rank_instances(objective)]
                _atomic_write_csv(self._target(directory, "g_effect_ranking.csv"), ranking)
        if self.save_plot:
            try:
                self._write_plot(self._target(directory, "g_effect.png"))
            except ImportError:
                rank_zero_warn("GEffectCallback: matplotlib is not installed; skipping g_effect.png.")
        # Without output_dir the files land in the logger's version folder, which no config names: say where.
        rank_zero_info(f"GEffectCallback: G-effects written to {directory}")

    def _write_plot(self, path: Path) -> None:
        """Per-group G-effect curves (one row per risk, terms dashed) and cumulative predicted vs realised change."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        history = self.history
        risks = list(dict.fromkeys(r["risk"] for r in history))
        fine = list(dict.fromkeys(r["group"] for r in history if r["level"] == "group"))
        coarse = list(dict.fromkeys(r["group"] for r in history if r["level"] == "coarse"))
        # The coarse depth groups (shallow/middle/deep, plus the non-block groups) when measured: they are what the
        # paper plots, and many fine groups make an unreadable figure. In network order, so that a group keeps its
        # colour from figure to figure.
        outside = [g for g in fine if not g.startswith("layer_")]
        first = [g for g in outside if g == "embedding"]
        shown = [*first, *coarse, *(g for g in outside if g not in first)] if coarse else fine[:12]
        weight = self.plot_smoothing

        def curve(ax: Any, pts: list[tuple[int, float]], **style: Any) -> None:
            if not pts:
                return
            xs, ys = zip(*pts, strict=True)
            if weight is None:
                ax.plot(xs, ys, **style)
                return
            (line,) = ax.plot(xs, _smoothed(list(ys), weight), **style)
            ax.plot(xs, ys, color=line.get_color(), linestyle=line.get_linestyle(), linewidth=0.6, alpha=0.3)

        fig = Figure(figsize=(11, 3.7 * len(risks)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(risks), 2, squeeze=False)
        for row, risk in enumerate(risks):
            ax, ax_cum = axes[row]
            mine = [r for r in history if r["risk"] == risk]
            for group in [*shown, "total"]:
                pts = [(r["step"], r["g_effect"]) for r in mine if r["group"] == group and r["term"] == "total"]
                style = {"color": "black", "linewidth": 2} if group == "total" else {"linewidth": 1}
                curve(ax, pts, label=group, **style)
            for term, linestyle in zip(TERMS, ("--", ":"), strict=True):
                pts = [(r["step"], r["g_effect"]) for r in mine if r["group"] == "total" and r["term"] == term]
                curve(ax, pts, label=f"total, {term} term", color="black", linewidth=1.2, linestyle=linestyle)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            smoothing = f" (EMA {weight} of the plotted series)" if weight is not None else ""
            ax.set_title(f"G-effect on the {risk} risk{smoothing}")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("G-effect e = ∇R·∇L")
            # Legends below the panels: the curves' spikes can reach any corner, and a legend inside covered one.
            ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
            totals = [r for r in mine if r["level"] == "total" and r["term"] == "total"]
            series = {
                key: [(r["step"], r[key]) for r in totals if r[key] is not None]
                for key in ("cumulative_realised_change", "cumulative_update_change", "cumulative_predicted_change")
            }
            measured = [y for key in series if key != "cumulative_predicted_change" for _, y in series[key]]
            ratio = raw_prediction_ratio(measured, [y for _, y in series["cumulative_predicted_change"]])
            beside = ratio is not None
            handles = []
            for key, label, color in [
                ("cumulative_realised_change", "realised", "black"),
                ("cumulative_update_change", "predicted (∇R·Δθ)", "tab:blue"),
                (
                    "cumulative_predicted_change",
                    "predicted (−Σ η e)" + (", right axis" if beside else ""),
                    "tab:orange",
                ),
            ]:
                if series[key]:
                    xs, ys = zip(*series[key], strict=True)
                    if key == "cumulative_predicted_change" and ratio is not None:
                        ys = tuple(y / ratio for y in ys)
                        rescaled_right_axis(ax_cum, ratio, "−Σ η e", "risk units", color)
                    handles += ax_cum.plot(xs, ys, label=label, color=color)
            ax_cum.set_title(f"cumulative change of the {risk} risk")
            ax_cum.set_xlabel("optimiser step")
            ax_cum.set_ylabel("cumulative risk change" if measured else "−Σ η e (risk units)")
            if handles:
                ax_cum.legend(handles=handles, fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain lists, dicts, str, int, float and None: a checkpoint loads with torch.load(weights_only=True), the
        # default of torch >= 2.6 and of Trainer.fit(ckpt_path=...). Copies, because an asynchronous checkpoint writer
        # may serialise them while training appends further rows. The instance rows carry the example ids, so a
        # resumed run's ranking covers the whole run.
        return {
            "history": list(self.history),
            "instance_history": list(self.instance_history),
            "cumulative": dict(self._cumulative),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Rows saved before a key existed get the value such rows meant (term "total", side "risk").
        self.history = [_complete(row, GEffectRow) for row in state_dict.get("history", [])]
        self.instance_history = [_complete(row, GEffectInstanceRow) for row in state_dict.get("instance_history", [])]
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
        boundaries: tuple[int, ...] | None = None,
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
            chunks = _coarse_chunks(sorted(set(layer_of.values())), boundaries)
            for c, (label, chunk) in enumerate(chunks):
                members = {g for g, b in layer_of.items() if b in set(chunk)}
                if boundaries is not None and c == len(chunks) - 1 and "final_norm" in assignment:
                    # The paper's code counts the final norm in its last bucket (it inherits the last block's key).
                    members.add("final_norm")
                    label = f"{label}+final_norm"
                idx = torch.tensor([i for i, g in enumerate(assignment) if g in members], dtype=torch.long)
                if len(idx):
                    entries.append((label, "coarse", idx))
        entries.append(("total", "total", torch.arange(len(names))))
        return cls(names, entries)

    def iter_groups(self) -> Iterator[tuple[str, _Level, Tensor]]:
        """Yield ``(group, level, parameter indices)``, fine groups first, then coarse, then the total."""
        yield from self.entries


def _coarse_chunks(blocks: list[int], boundaries: tuple[int, ...] | None) -> list[tuple[str, list[int]]]:
    """The coarse groups of the sorted block indices ``blocks``: thirds, or the ranges the boundaries start.

    Raises:
        ValueError: If a boundary lies outside the blocks, so that a group would be empty.
    """
    if boundaries is None:
        return list(zip(COARSE_NAMES, _thirds(blocks), strict=True))
    first, last = blocks[0], blocks[-1]
    outside = [b for b in boundaries if not first < b <= last]
    if outside:
        raise ValueError(
            f"GEffectCallback: coarse_boundaries {tuple(boundaries)} must lie inside the model's blocks "
            f"{first}-{last}: each boundary b starts a new group at block b, so {first} < b <= {last}; {outside} "
            "is outside. For a 32-block model the paper's groups are coarse_boundaries=(10, 20)."
        )
    edges = [first, *boundaries, last + 1]
    width = max(2, len(str(last)))
    return [
        (f"blocks_{lo:0{width}d}_{hi - 1:0{width}d}", [b for b in blocks if lo <= b < hi])
        for lo, hi in zip(edges, edges[1:], strict=False)
    ]


def _step_values(pending: _PendingStep, realised: Tensor | None, update: Tensor | None) -> list[_StepValues]:
    """The values of one measured step, one entry per (risk, term, group) in the layout's order.

    Args:
        pending: The step measured at θ_t.
        realised: (risks,) float64 ``R(θ_{t+1}) − R(θ_t)``, or None when not measured.
        update: (risks, params) float64 per-parameter ``∇_pR·Δθ_p``, or None when not measured.

    Returns:
        The rows' step values; the running sums are added by :func:`_with_running_sums`.
    """
    values: list[_StepValues] = []
    for r, name in enumerate(pending.names):
        parts: list[tuple[_Term, Tensor]] = [("total", pending.per_param[r])]
        if pending.term_per_param is not None:
            parts += [(term, pending.term_per_param[k, r]) for k, term in enumerate(pending.term_names)]
        for term, dots in parts:
            predicted = -pending.lrs * dots
            # The realised change and the real update belong to the whole step, not to one term.
            upd = update[r] if update is not None and term == "total" else None
            real = realised[r] if realised is not None and term == "total" else None
            for group, level, index in pending.layout.iter_groups():
                values.append(
                    _StepValues(
                        step=pending.step,
                        risk=name,
                        term=term,
                        group=group,
                        level=level,
                        g_effect=float(dots[index].sum()),
                        risk_value=float(pending.risk_values[r]),
                        predicted_change=float(predicted[index].sum()),
                        realised_change=float(real) if level == "total" and real is not None else None,
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
        totals: The running sums before this step, ``"<risk>/<group>/<change>" -> sum`` for the total term (the keys
            checkpoints held before terms existed) and ``"<risk>/<term>/<group>/<change>"`` for a term; not modified.
        weight: How many optimiser steps one measured step stands for (``every_n_steps``).

    Returns:
        The step's history rows, each with the running sums after this step (None where the step's change is
        None, which leaves that sum as it was), and the new running sums.
    """
    new_totals = dict(totals)
    rows: list[GEffectRow] = []
    for value in values:
        cumulative: dict[str, float | None] = {}
        scope = value["risk"] if value["term"] == "total" else f"{value['risk']}/{value['term']}"
        for change in _CHANGES:
            amount = value[change]
            if amount is None:
                cumulative[change] = None
                continue
            key = f"{scope}/{value['group']}/{change}"
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
    """One row per side, risk and example of the step's per-instance G-effects (none when they were not measured)."""
    rows = []
    for name, values in (pending.risk_instances or {}).items():
        rows += [
            GEffectInstanceRow(step=pending.step, risk=name, side="risk", index=i, g_effect=v, example=None)
            for i, v in enumerate(values.tolist())
        ]
    ids = pending.example_ids
    for name, values in (pending.objective_instances or {}).items():
        rows += [
            GEffectInstanceRow(
                step=pending.step,
                risk=name,
                side="objective",
                index=i,
                g_effect=v,
                example=dict(ids[i]) if ids is not None else None,
            )
            for i, v in enumerate(values.tolist())
        ]
    return rows


def rank_instances(rows: Iterable[GEffectInstanceRow]) -> list[GEffectRankingRow]:
    """Rank forget examples by their cumulative objective-side G-effects, as ``g_effect_ranking.csv`` does.

    Each objective-side row adds its ``∇R·∇ℓ_i`` to the sum of its example (keyed by the example's ids) and risk; the
    sums run over the measured steps the example appeared in (unweighted by ``every_n_steps``). Risk-side rows are
    about other examples (the risk's) and do not enter.

    Args:
        rows: Instance rows, e.g. :attr:`GEffectCallback.instance_history` or :func:`load_instance_history`'s.

    Returns:
        One row per forget example, sorted by the sum on the first risk (ascending, stable: for the forget risk the
        examples whose unlearn share raises the forget risk most come first).

    Raises:
        ValueError: If an objective-side row has no example ids (nothing identifies it across steps).
    """
    table: dict[tuple[tuple[str, Any], ...], GEffectRankingRow] = {}
    counts: dict[tuple[tuple[str, Any], ...], dict[str, int]] = {}
    risks: list[str] = []
    for row in rows:
        if row["side"] != "objective":
            continue
        if row["example"] is None:
            raise ValueError(
                f"rank_instances: the objective-side row of step {row['step']}, position {row['index']} has no example "
                "ids; the module needs example_ids (SupportsExampleIds) for a ranking."
            )
        key = tuple(row["example"].items())
        entry = table.setdefault(key, GEffectRankingRow(example=dict(row["example"]), g_effect={}, measurements=0))
        risk = row["risk"]
        if risk not in risks:
            risks.append(risk)
        entry["g_effect"][risk] = entry["g_effect"].get(risk, 0.0) + row["g_effect"]
        count = counts.setdefault(key, {})
        count[risk] = count.get(risk, 0) + 1
        entry["measurements"] = max(count.values())
    ranked = list(table.values())
    if risks:
        ranked.sort(key=lambda entry: entry["g_effect"].get(risks[0], 0.0))
    return ranked


def _ranking_record(row: GEffectRankingRow) -> dict[str, Any]:
    """A ranking row as a flat CSV record: the id fields, ``g_effect_<risk>`` per risk, then ``measurements``."""
    return {
        **row["example"],
        **{f"{RANKING_PREFIX}{risk}": value for risk, value in row["g_effect"].items()},
        RANKING_COUNT: row["measurements"],
    }


class _BoundCall(nn.Module):
    """Expose ``fn(module, batches)`` as ``forward`` so :func:`torch.func.functional_call` can swap parameters."""

    def __init__(self, module: nn.Module, fn: Callable[[Any, Sequence[Any]], Any]) -> None:
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, batches: Sequence[Any]) -> Any:
        return self._fn(self.module, batches)


def _instance_sides(per_instance: Any) -> tuple[_Side, ...]:
    """The sides ``per_instance`` asks for: ``True`` keeps its original meaning, the risk side."""
    if isinstance(per_instance, bool):
        return ("risk",) if per_instance else ()
    sides: dict[Any, tuple[_Side, ...]] = {
        "risk": ("risk",),
        "objective": ("objective",),
        "both": ("risk", "objective"),
    }
    if per_instance not in sides:
        raise ValueError(
            f"GEffectCallback: per_instance must be 'risk', 'objective', 'both', True (= 'risk') or False, got "
            f"{per_instance!r}."
        )
    return sides[per_instance]


def _thirds(items: list[int]) -> list[list[int]]:
    """Split ``items`` into three contiguous, nearly equal chunks (earlier chunks get the remainder)."""
    n = len(items)
    sizes = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def raw_prediction_ratio(measured: Sequence[float], raw: Sequence[float]) -> float | None:
    """How many times larger the raw-gradient prediction ``−Σ η e`` is than the measured risk changes beside it, when
    it needs an axis of its own; None when it shares theirs.

    It shares their axis unless the scales differ by more than 10x: under Adam it can be orders of magnitude smaller
    than the realised change and would be a flat line at zero there, so it is drawn divided by the ratio and read on a
    right axis in its own units (:func:`rescaled_right_axis`; that makes any two shapes look alike, hence only then).
    Alone (nothing measured), or all zero (a rate-0 run: no scale of its own), it takes the left axis.
    """
    raw_size = max(map(abs, raw), default=0.0)
    if not measured or raw_size == 0:
        return None
    ratio = raw_size / max(max(map(abs, measured)), 1e-30)
    return None if 0.1 <= ratio <= 10.0 else ratio


def rescaled_right_axis(ax: Any, ratio: float, name: str, unit: str, color: str) -> None:
    """A right axis that reads a curve drawn divided by ``ratio`` in its own units, labelled ``name (unit; = left
    axis × <ratio>)``. A pure rescaling of the left axis (not a twin): both zeros sit at one height, and the
    legend's placement sees every curve."""
    # Bound now: matplotlib calls these at draw time, after the caller may have moved on to another ratio.
    right = ax.secondary_yaxis("right", functions=(lambda y, k=ratio: y * k, lambda y, k=ratio: y / k))
    right.set_ylabel(f"{name} ({unit}; = left axis × {ratio:.2g})", color=color)
    right.tick_params(axis="y", colors=color)


def _smoothed(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average of a series, ``s_0 = x_0``, ``s_t = w·s_{t−1} + (1−w)·x_t`` (for plots only)."""
    out: list[float] = []
    for x in values:
        out.append(x if not out else weight * out[-1] + (1.0 - weight) * x)
    return out


def _dot32(a: Tensor, b: Tensor) -> Tensor:
    """Dot product accumulated in float32 (bf16 products summed in bf16 lose most digits)."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def _dots64(grads: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """Per-parameter float64 dots ``grad·param`` (this rank's pieces); float64 keeps ``∇R·θ_{t+1} − ∇R·θ_t`` free of
    cancellation."""
    with torch.no_grad():
        pairs = zip(grads, params, strict=True)
        return torch.stack([torch.dot(g.reshape(-1).double(), _local(p).reshape(-1).double()) for g, p in pairs])


def _local(tensor: Tensor) -> Tensor:
    """This rank's piece of ``tensor``: the local shard of a ``DTensor``, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _distinct_shards(tensor: Tensor) -> int:
    """How many different pieces the ranks hold of ``tensor``: the product of the sizes of the mesh dimensions it is
    sharded over (1 for a plain tensor, whose copies on the ranks are replicas, or a replicated ``DTensor``).

    Raises:
        ValueError: a ``Partial`` placement (a pending reduction), whose local values are not pieces of the tensor.
    """
    if not isinstance(tensor, DTensor):
        return 1
    count = 1
    for dim, placement in enumerate(tensor.placements):
        if placement.is_partial():
            raise ValueError(
                f"GEffectCallback: a parameter or gradient has the placements {tensor.placements}; a Partial "
                "placement holds unreduced values, not a shard. Shard parameters with FSDP2 (fully_shard)."
            )
        if placement.is_shard():
            count *= tensor.device_mesh.size(dim)
    return count


def _check_sharded(params: Sequence[Tensor], per_instance: bool) -> bool:
    """Whether the measured parameters are sharded (``DTensor``); raises where a requested mode cannot be exact.

    Raises:
        NotImplementedError: ``per_instance`` with sharded parameters.
    """
    sharded = any(isinstance(p, DTensor) for p in params)
    if sharded and per_instance:
        raise NotImplementedError(_PER_INSTANCE_SHARDED)
    return sharded


_PER_INSTANCE_SHARDED = (
    "GEffectCallback(per_instance=...) cannot be exact on sharded parameters (FSDP2 / ModelParallelStrategy): the "
    "per-example G-effects are forward-mode JVPs through the model, and FSDP2 all-gathers each block's parameters "
    "inside its own forward hooks, which carry no forward-mode tangents; the reverse-mode alternative, one backward "
    "per example, is a collective that averages the examples of all ranks into one gradient. Turn per_instance off "
    "(the total, per-group and per-term G-effects are exact under FSDP2), or measure per-instance effects with "
    "strategy='ddp' on a model that fits one device."
)


def _param_lrs(optimizer: Any, params: Sequence[Tensor]) -> list[float]:
    """The learning rate each parameter will be stepped with (0 for parameters the optimiser does not own)."""
    lr_of: dict[int, float] = {}
    for group in getattr(optimizer, "param_groups", []):
        lr = group.get("lr", 0.0)
        lr = float(lr.item()) if isinstance(lr, Tensor) else float(lr)
        for p in group["params"]:
            lr_of[id(p)] = lr
    return [lr_of.get(id(p), 0.0) for p in params]


def _all_gather_objects(items: list[Any], world_size: int) -> list[Any]:
    """Every rank's ``items`` concatenated rank-major (Lightning's ``all_gather`` takes tensors only)."""
    gathered: list[list[Any] | None] = [None] * world_size
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def _reentrant_checkpointing(module: nn.Module) -> str | None:
    """The name of a Hugging Face submodule with reentrant gradient checkpointing enabled, else None.

    Neither torch nor transformers has a public way to ask whether a module checkpoints reentrantly, and this file must
    not import transformers, so this reads the attributes transformers sets on each checkpointable submodule: the
    public flag ``gradient_checkpointing`` and the private ``_gradient_checkpointing_func``, a
    ``functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)`` whose keywords say ``use_reentrant``. Finding
    it in ``setup`` turns a failure at the first measured step into an error before training starts. Reentrant
    checkpointing set up any other way is caught when a gradient is taken (:meth:`GEffectCallback._gradient_dots`).
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


def _complete(row: Mapping[str, Any], row_type: type) -> dict[str, Any]:
    """``row`` with the keys of ``row_type`` in declaration order, filling keys added later (:data:`_ADDED_KEYS`)."""
    defaults = _ADDED_KEYS.get(row_type, {})
    return {key: row[key] if key in row else defaults[key] for key in typing.get_type_hints(row_type)}


def _atomic_write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` to ``path`` through a temporary file and ``os.replace``: a crash never leaves half a file.

    Mapping values (the example ids of instance rows) are written as JSON; None as an empty cell.
    """
    fields = list(dict.fromkeys(k for row in rows for k in row))
    # A sibling temporary file (same filesystem, so os.replace is atomic), created with the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(v) for k, v in row.items()})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), ensure_ascii=False)
    return value


def load_history(path: str | os.PathLike) -> list[GEffectRow]:
    """Read a ``g_effect.csv`` written by :class:`GEffectCallback` back into history rows.

    Files written before rows had a ``term`` read as ``term="total"``.

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

    Files written before rows had a ``side`` read as ``side="risk"`` without example ids.

    Args:
        path: The CSV file.

    Returns:
        The rows, typed as in :attr:`GEffectCallback.instance_history` (``example`` parsed from its JSON cell).

    Raises:
        ValueError: If the file's columns are not those of :class:`GEffectInstanceRow`, or a cell cannot be read.
    """
    return _read_rows(Path(path), GEffectInstanceRow)  # type: ignore[return-value]


def load_ranking(path: str | os.PathLike) -> list[GEffectRankingRow]:
    """Read a ``g_effect_ranking.csv`` written by :class:`GEffectCallback`, in its order (first risk ascending).

    Args:
        path: The CSV file: the example id columns, then ``g_effect_<risk>`` per risk, then ``measurements``.

    Returns:
        The rows. A CSV file has no types, so the id values come back as strings (convert them as needed, e.g.
        ``int(row["example"]["index"])``).

    Raises:
        ValueError: If the columns are not id columns, ``g_effect_<risk>`` columns and ``measurements`` in that
            order, or a cell cannot be read.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        risk_columns = [c for c in columns if c.startswith(RANKING_PREFIX)]
        id_columns = columns[: columns.index(risk_columns[0])] if risk_columns else []
        if not id_columns or not risk_columns or columns != [*id_columns, *risk_columns, RANKING_COUNT]:
            raise ValueError(
                f"{path}: the columns {columns} are not those of a G-effect ranking (example id columns, then "
                f"{RANKING_PREFIX}<risk> per risk, then {RANKING_COUNT!r})."
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                g_effect = {c[len(RANKING_PREFIX) :]: float(raw[c]) for c in risk_columns}
                measurements = int(raw[RANKING_COUNT])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}, line {line}: {err}") from err
            example = {c: raw[c] for c in id_columns}
            rows.append(GEffectRankingRow(example=example, g_effect=g_effect, measurements=measurements))
    return rows


def _read_rows(path: Path, row_type: type) -> list[dict[str, Any]]:
    """Read a CSV whose columns are the keys of the TypedDict ``row_type``, converting each cell to its key's type."""
    hints = typing.get_type_hints(row_type)
    added = _ADDED_KEYS.get(row_type, {})
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        if columns not in (list(hints), [k for k in hints if k not in added]):
            raise ValueError(
                f"{path}: the columns {columns} are not those of a {row_type.__name__} ({list(hints)}). Read "
                "g_effect.csv with load_history, g_effect_instances.csv with load_instance_history and "
                "g_effect_ranking.csv with load_ranking."
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for key, hint in hints.items():
                if key not in raw:
                    row[key] = added[key]
                    continue
                try:
                    row[key] = _parse_cell(raw[key], hint)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{path}, line {line}, column {key!r}: {err}") from err
            rows.append(row)
    return rows


def _parse_cell(text: str | None, hint: Any) -> Any:
    """One CSV cell as the type ``hint`` of its row key: int, str (or a Literal of str), float, a JSON dict, or None."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if text is None or text == "":
        if optional:
            return None
        raise ValueError("the cell is empty, but the column holds a value in every row")
    if hint is int:
        return int(text)
    if hint is str or typing.get_origin(hint) is Literal:
        return text
    if typing.get_origin(hint) is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    return float(text)


__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_LAYER_PATTERN",
    "GEffectCallback",
    "GEffectInstanceRow",
    "GEffectRankingRow",
    "GEffectRow",
    "SupportsExampleIds",
    "SupportsObjectiveTerms",
    "SupportsPerExampleObjective",
    "SupportsPerExampleRisks",
    "SupportsRiskLosses",
    "load_history",
    "load_instance_history",
    "load_ranking",
    "rank_instances",
]
