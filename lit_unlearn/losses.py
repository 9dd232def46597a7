"""Unlearning objectives as pure tensor functions: log-probs in, a scalar loss out.

Every loss here is MINIMISED. The maths follows Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond" (ICLR 2025, arXiv 2502.19301, "the G-effect paper") and its public code
(tmlr-group/G-effect, ``dataloader.py``), with NPO (Zhang et al. 2024), SimNPO (Fan et al. 2024), DPO (Rafailov et
al. 2023) and RMU (Li et al. 2024) in the form used by TOFU / OpenUnlearning. Notation: ``p_i = p(y_i | x, y_<i; θ)``
is the probability of answer token i, ``ce_i = -log p_i``, ``p_o,i`` the same under the frozen reference model θ_o,
``sg[.]`` stop-gradient.

Inputs are the ``(logps, mask)`` pair returned by :func:`token_logps`: shape ``(B, T-1)``, ``logps`` float32, ``mask``
bool and False on prompt and padding positions. The losses that need whole distributions (``kl_divergence``, and
``undial``, ``ceu``, ``pdu_forget`` from OpenUnlearning's further methods) take ``(B, T, V)`` logits with the unshifted
``(B, T)`` labels and apply the same shift. No function here runs a model or reads a batch dict.

Averaging levels are part of each objective and are kept exactly (β values are only comparable with published ones
that way): token mean over the whole micro-batch for NLL/GA/WGA/TNPO/WTNPO/SatImp (and position mean for
KL/UNDIAL/CE-U/PDU), per-sequence log-prob SUM inside logσ for NPO/DPO, per-sequence MEAN for SimNPO.

Every loss can also return its per-example split (``per_example=True``): a ``(B,)`` tensor whose entry b is sequence
b's exact additive share of the loss, the scalar loss being the sum of the shares (one computation, so the two cannot
drift apart). The share follows the loss's own averaging, which is not always a mean of per-example losses: for a token
(or position) mean over the micro-batch, row b's share is ``Σ_{t ∈ answer(b)} ℓ_t / N`` with N the count over the WHOLE
micro-batch; for a mean over sequences it is ``ℓ(b) / B``. The G-effect callback differentiates these shares to rank
forget examples (``per_example_unlearn``).

A masked position never contributes a value or a gradient. This matters because cross-entropy at an ignored label is 0,
so ``exp(-ce) = 1`` there: an unmasked weighted loss would count every prompt token with the largest possible weight.
"""

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.batch import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "KLPositions",
    "ceu",
    "check_positive",
    "dpo",
    "gradient_ascent",
    "kl_divergence",
    "mean_token_nll",
    "nll",
    "npo",
    "pdu_forget",
    "rmu",
    "satimp",
    "satimp_weights",
    "sequence_logps",
    "simnpo",
    "tnpo",
    "tnpo_weights",
    "token_logps",
    "undial",
    "wga",
    "wga_weights",
    "wtnpo",
    "wtnpo_weights",
]


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _upcast(x: Tensor) -> Tensor:
    """Half-precision tensors to float32; float32 and float64 unchanged (float64 keeps gradcheck exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_pair(logps: Tensor, mask: Tensor, name: str = "logps") -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (as returned by token_logps), got dtype {mask.dtype}.")
    if logps.shape != mask.shape:
        raise ValueError(
            f"{name} has shape {tuple(logps.shape)} but mask has shape {tuple(mask.shape)}; pass the (B, T-1) pair "
            "returned by token_logps for the same batch."
        )


def _clean(logps: Tensor, mask: Tensor) -> Tensor:
    """``logps`` upcast, with masked positions replaced by 0 so that nothing there (even NaN) reaches a weight."""
    return torch.where(mask, _upcast(logps), 0.0)


def _token_shares(values: Tensor, mask: Tensor) -> Tensor:
    """Each row's share of the mean of ``values`` over the True entries of ``mask``: ``(B,)``, summing to that mean.

    Row b's share is ``Σ_{t: mask[b, t]} values[b, t] / N`` with N the number of True entries of the WHOLE batch (a
    token mean over the batch, not a mean of per-row means); masked entries contribute neither value nor gradient.
    """
    count = mask.sum()
    # One host sync per call; it buys a clear error instead of a silent NaN (0/0) loss.
    if not bool(count):
        raise ValueError(
            "mask has no True entry: every label of the batch is -100, so there is no answer token to average over. "
            "Check the label masking (an answer truncated away by max_length?) or drop empty examples."
        )
    # where(), not multiplication: a NaN/inf at a masked position must not leak into the value or the gradient.
    return torch.where(mask, values, 0.0).sum(dim=-1) / count


def _reduce(shares: Tensor, per_example: bool) -> Tensor:
    """The loss from its per-example shares: the shares themselves (``per_example``), else their sum."""
    return shares if per_example else shares.sum()


def _row_shares(values: Tensor, rows: Tensor, batch: int, count: int) -> Tensor:
    """``(batch,)`` shares of a position mean: ``values`` (N,) summed per row (``rows``, (N,)), over ``count``."""
    return values.new_zeros(batch).index_add(0, rows, values) / count


def check_positive(value: float, name: str, allow_zero: bool = False) -> None:
    """The one check of a coefficient's sign (β, α, eps), shared by these losses and the modules that configure them.

    Args:
        value: The coefficient.
        name: How the error names it, e.g. ``"beta"`` or ``"NPO beta"``.
        allow_zero: Accept 0 (a limiting case the loss defines, e.g. WGA's β = 0 is gradient ascent).

    Raises:
        ValueError: ``"{name} must be > 0, got {value}."`` (``>= 0`` with ``allow_zero``); NaN is rejected too.

    Example:
        >>> check_positive(0.0, "WGA beta", allow_zero=True)
        >>> check_positive(0.0, "NPO beta")
        Traceback (most recent call last):
        ...
        ValueError: NPO beta must be > 0, got 0.0.
    """
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}.")


# --------------------------------------------------------------------------------------------------------------------
# log-probabilities


_CHUNK_ELEMENTS = 2**25
"""Logit elements upcast at once by :func:`token_logps` (32M: 128 MiB of float32 temporaries per chunk)."""


class _LabelLogProb(torch.autograd.Function):
    """``log_softmax(x)[r, target_r]`` and ``logsumexp(x)[r]`` for rows ``x`` of shape (R, V), in row chunks.

    Autograd through ``gather - logsumexp`` keeps a float32 copy of the logits alive for the backward and builds
    several more (B, T, V) float32 temporaries there. Here the float32 work happens one chunk of rows at a time in
    every pass, so the only full-size tensor created is the gradient (or tangent), in the logits' own dtype. Measured
    on an H200 (B=4, T=512, V=128256, bf16 logits of 0.49 GiB, forward + backward peak above the logits): 0.86 GiB
    here, 2.93 GiB for ``log_softmax + gather`` or ``F.cross_entropy``, 3.91 GiB for autograd through
    ``gather - logsumexp``; 6.4 ms against 4.3 ms for the fused log-softmax.

    Derivatives, with s = softmax(x_r): ``∂ log p_r / ∂ x_rv = 1[v = target_r] - s_v`` and ``∂ lse_r / ∂ x_rv = s_v``.
    Both reverse mode (training, G-effect gradients) and forward mode (``torch.func.jvp``, the G-effect callback's
    per-instance pass) are implemented; there is no double backward. The forward and the JVP are written with
    out-of-place ops only, so ``torch.func.vmap`` derives their batching rule (``generate_vmap_rule``): the callback
    batches one JVP over several tangents (one per risk). The backward writes the gradient chunk by chunk into one
    buffer, which keeps its memory at one gradient but cannot run under ``vmap``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        # logits (R, V) contiguous; targets (R,) with IGNORE_INDEX where no token is scored
        valid, index = _valid_index(targets)  # (R,), (R,)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        lse_parts, label_parts = [], []
        for rows in _row_chunks(logits):
            chunk = logits[rows].to(dtype)  # (r, V) float32: the log-softmax must not run in bf16
            lse_parts.append(torch.logsumexp(chunk, dim=-1))
            label_parts.append(chunk.gather(-1, index[rows, None]).squeeze(-1))
        lse, label_logit = torch.cat(lse_parts), torch.cat(label_parts)  # (R,) each
        return torch.where(valid, label_logit - lse, 0.0), lse

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
        logits, targets = inputs
        ctx.save_for_backward(logits, targets, output[1])
        ctx.save_for_forward(logits, targets, output[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logps: Tensor | None, grad_lse: Tensor | None
    ) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        valid, index = _valid_index(targets)
        # No gradient through ignored rows, even if the upstream gradient there is non-zero.
        g = torch.zeros_like(lse) if grad_logps is None else torch.where(valid, grad_logps.to(lse.dtype), 0.0)
        coeff = g.neg() if grad_lse is None else grad_lse.to(lse.dtype) - g  # (R,): multiplies the softmax
        grad = torch.empty_like(logits)  # (R, V) in the logits' dtype
        for rows in _row_chunks(logits):
            # softmax from the saved lse, in a fresh float32 buffer (never in place on the saved logits)
            prob = (logits[rows].to(lse.dtype) - lse[rows, None]).exp_()  # (r, V)
            prob.mul_(coeff[rows, None]).scatter_add_(-1, index[rows, None], g[rows, None])
            grad[rows] = prob
        return grad, None

    @staticmethod
    def jvp(ctx: torch.autograd.function.FunctionCtx, logits_dot: Tensor, targets_dot: None) -> tuple[Tensor, Tensor]:
        logits, targets, lse = ctx.saved_tensors
        valid, index = _valid_index(targets)
        expected_parts, label_parts = [], []
        for rows in _row_chunks(logits):
            prob = (logits[rows].to(lse.dtype) - lse[rows, None]).exp()  # (r, V)
            tangent = logits_dot[rows].to(lse.dtype)  # (r, V)
            expected_parts.append((prob * tangent).sum(dim=-1))
            label_parts.append(tangent.gather(-1, index[rows, None]).squeeze(-1))
        expected_dot = torch.cat(expected_parts)  # (R,): Σ_v s_v · dx_v = d lse
        label_dot = torch.cat(label_parts)  # (R,): dx at the label
        return torch.where(valid, label_dot - expected_dot, 0.0), expected_dot


def _valid_index(targets: Tensor) -> tuple[Tensor, Tensor]:
    """Rows that score a token, and a gather index with a dummy 0 (discarded) at the ignored rows."""
    valid = targets != IGNORE_INDEX
    return valid, targets.masked_fill(~valid, 0)


def _row_chunks(logits: Tensor) -> list[slice]:
    """Row slices of ``logits`` (R, V) holding about ``_CHUNK_ELEMENTS`` elements each."""
    step = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[1]))
    return [slice(start, start + step) for start in range(0, logits.shape[0], step)]


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of every label token under the model, with the causal shift and -100 masking applied.

    Naive equivalent: ``log_softmax(logits[:, :-1].float(), -1).gather(-1, labels[:, 1:, None])[..., 0]`` with the
    -100 positions set to 0 (what ``F.cross_entropy(..., reduction="none")`` negates). This version takes the label
    logit minus ``logsumexp``, upcasting one chunk of rows to float32 at a time in the forward and the backward, so
    no full (B, T, V) float32 tensor is ever materialised: the extra memory is the gradient itself (logits' dtype)
    plus a chunk-sized float32 workspace.

    Args:
        logits: ``(B, T, V)`` next-token logits, any float dtype (bf16 is upcast: the log-softmax runs in float32).
        labels: ``(B, T)`` integer token ids aligned with the inputs, ``-100`` on prompt and padding positions.

    Returns:
        ``(logps, mask)``, both ``(B, T-1)``: ``logps[b, t] = log p(labels[b, t+1] | inputs[b, :t+1])`` in float32
        (float64 if the logits are float64), exactly 0.0 where the shifted label is -100; ``mask`` is bool, False there.
        First-order differentiable in reverse and forward mode (training, G-effect gradients, ``torch.func.jvp``);
        no double backward.

    Raises:
        ValueError: if the shapes do not match or the labels are not integers.
    """
    _check_logits_labels(logits, labels)
    batch, steps, vocab = logits.shape
    # The token predicted at each position is the next label; the last position predicts nothing. Scoring all T
    # positions of the (contiguous) logits avoids copying the non-contiguous slice logits[:, :-1].
    targets = torch.cat([labels[:, 1:], labels.new_full((batch, 1), IGNORE_INDEX)], dim=1)  # (B, T)
    flat, _ = _LabelLogProb.apply(logits.reshape(batch * steps, vocab), targets.reshape(-1))  # (B*T,)
    logps = flat.view(batch, steps)[:, :-1]  # (B, T-1)
    return logps, labels[:, 1:] != IGNORE_INDEX


def sequence_logps(logps: Tensor, mask: Tensor) -> Tensor:
    """Log-probability of each answer, ``log p(y | x) = Σ_i log p_i`` over the unmasked tokens.

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.

    Returns:
        ``(B,)`` per-sequence sums; 0.0 for a row without answer tokens (log of an empty product).
    """
    _check_pair(logps, mask)
    return _clean(logps, mask).sum(dim=-1)  # (B,)


# --------------------------------------------------------------------------------------------------------------------
# risk / retain terms


def nll(logps: Tensor, mask: Tensor, per_example: bool = False) -> Tensor:
    """Mean negative log-likelihood over all answer tokens of the batch: the risk ``R`` of the G-effect paper.

    ``R = mean_tokens(ce_i) = -(1/N) Σ_{valid i} log p_i`` with N the number of valid tokens in the whole batch, the
    semantics of HF ``outputs.loss``. Used as the fine-tuning loss, the GD retain term and the PO/IdK forget loss
    (on refusal answers). Limiting case: 0 when every answer token has probability 1.

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        per_example: Return each sequence's share ``-(1/N) Σ_{i ∈ answer(b)} log p_i`` instead (N over the batch).

    Returns:
        Scalar tensor; with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: if ``mask`` has no True entry (no answer token left after masking).
    """
    _check_pair(logps, mask)
    return _reduce(-_token_shares(_clean(logps, mask), mask), per_example)


mean_token_nll = nll
"""Alias of :func:`nll`: the risk ``R(D; θ)`` whose gradient the G-effect dots with the objective's gradient."""


KLPositions = Literal["answer", "all"]
"""Where :func:`kl_divergence` averages: ``"answer"`` (this project's default) or ``"all"`` (the paper's code and
OpenUnlearning: every one of the B·T positions, ``F.kl_div(..., reduction="batchmean")`` on the flattened batch)."""


def kl_divergence(
    logits: Tensor,
    ref_logits: Tensor,
    labels: Tensor,
    positions: KLPositions = "answer",
    per_example: bool = False,
) -> Tensor:
    """KL retain regulariser: forward ``KL(p_θo(·|ctx) ‖ p_θ(·|ctx))`` over the vocabulary, mean over positions.

    G-effect paper (KL regularisation, "a robust retention aid"; code ``*_kl`` losses), TOFU's ``KL`` objective. With
    ``positions="answer"`` (default): ``L_KL = (1/N) Σ_{valid t} Σ_v p_o(v|t) (log p_o(v|t) - log p_θ(v|t))`` with the
    logits shifted like :func:`token_logps` and N the number of positions whose shifted label is not -100; the value is
    then independent of prompt length and padding. With ``positions="all"``: the same sum over ALL B·T positions of the
    batch (prompt, answer, the last position and right padding included) divided by B·T, which is what the paper's code
    and OpenUnlearning's ``compute_kl_divergence`` compute (``F.kl_div(log q, log p_o, reduction="batchmean",
    log_target=True)`` on the flattened ``(B·T, V)`` log-probs); its value depends on the padding width of the batch.
    Limiting case: 0 (with zero gradient) when ``logits == ref_logits`` at every averaged position. Computed in float32
    (float64 inputs stay float64).

    Args:
        logits: ``(B, T, V)`` logits of the model being unlearned.
        ref_logits: ``(B, T, V)`` logits of the frozen reference model on the same inputs (no gradient flows to them).
        labels: ``(B, T)`` labels, -100 on prompt and padding (with ``"all"`` only their shape is used).
        positions: ``"answer"`` or ``"all"`` (see above).
        per_example: Return each sequence's share instead: the sum of its positions' KL over N (``"answer"``) or B·T
            (``"all"``).

    Returns:
        Scalar tensor, ≥ 0; with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: on shape mismatch, an unknown ``positions``, or (``"answer"``) when no position has a label.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape; run both models "
            "on the same batch."
        )
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T), got logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)}."
        )
    if positions not in get_args(KLPositions):
        raise ValueError(f"positions={positions!r}; choose 'answer' (answer positions) or 'all' (every position).")
    batch, steps, vocab = logits.shape
    if positions == "answer":
        mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
        if not bool(mask.any()):
            raise ValueError("labels are -100 everywhere: no answer position to average the KL term over.")
        # The flat (B·T) index of every answer position, the rows the mean is over.
        positions_bt = torch.arange(batch * steps, device=labels.device).view(batch, steps)[:, :-1][mask]  # (N,)
    else:
        positions_bt = torch.arange(batch * steps, device=labels.device)  # (B·T,)
    # Every row is scored (a row slice is a view; gathering the answer rows would copy them), then the rows averaged.
    kl_rows, *_ = _RowKL.apply(logits.reshape(-1, vocab), ref_logits.detach().reshape(-1, vocab))  # (B·T,)
    kl = kl_rows[positions_bt]  # (N,)
    return _reduce(_row_shares(kl, positions_bt // steps, batch, kl.shape[0]), per_example)


class _RowKL(torch.autograd.Function):
    """``KL(softmax(r) ‖ softmax(x))`` of every row ``x`` of ``logits`` (R, V) against row ``r`` of ``reference``.

    Autograd through ``log_softmax`` and the products keeps several float32 (R, V) tensors alive for the backward (the
    upcast rows, both log-softmaxes, the reference probabilities): five to six times the logits of the part. Here
    each pass upcasts one chunk of rows at a time and the backward recomputes the probabilities from the logits, which
    the model's output holds anyway, and three saved numbers per row; the only full-size tensor created is the
    gradient, in the logits' dtype. Per row, with ``Z = logsumexp(x)``, ``Z_r = logsumexp(r)`` and ``p = softmax(r)``::

        KL = Σ_v p_v (r_v − x_v) − (Z_r − Z) · Σ_v p_v

    (``Σ p`` is 1 up to rounding), a reference token ruled out (``r_v = −inf``, ``p_v = 0``) contributing 0. Derivative
    ``∂ KL / ∂ x_v = q_v · Σ_w p_w − p_v`` with ``q = softmax(x)``; none to the reference. Reverse and forward mode
    (``torch.func.jvp``); no double backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        floor = torch.finfo(dtype).min
        kl_parts, lse_parts, ref_lse_parts, mass_parts = [], [], [], []
        for rows in _row_chunks(logits):
            x, r = logits[rows].to(dtype), reference[rows].to(dtype)  # (c, V) views for float32 logits
            lse, ref_lse = torch.logsumexp(x, dim=-1), torch.logsumexp(r, dim=-1)  # (c,)
            p = (r - ref_lse[:, None]).exp()
            mass = p.sum(dim=-1)
            # r − x with −inf clamped: p = 0 there, and 0 · finite = 0 where 0 · (−inf) would be NaN.
            gap = (r - x).clamp(min=floor)
            kl_parts.append(torch.linalg.vecdot(p, gap) - (ref_lse - lse) * mass)
            lse_parts.append(lse)
            ref_lse_parts.append(ref_lse)
            mass_parts.append(mass)
        return torch.cat(kl_parts), torch.cat(lse_parts), torch.cat(ref_lse_parts), torch.cat(mass_parts)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
        logits, reference = inputs
        _, lse, ref_lse, mass = output
        ctx.mark_non_differentiable(lse, ref_lse, mass)
        ctx.save_for_backward(logits, reference, lse, ref_lse, mass)
        ctx.save_for_forward(logits, reference, lse, ref_lse, mass)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_kl: Tensor, *_: Tensor) -> tuple[Tensor, None]:
        logits, reference, lse, ref_lse, mass = ctx.saved_tensors
        g = grad_kl.to(lse.dtype)
        grad = torch.empty_like(logits)
        for rows in _row_chunks(logits):
            grad[rows] = _kl_slope(logits, reference, lse, ref_lse, mass, rows).mul_(g[rows, None])
        return grad, None

    @staticmethod
    def jvp(
        ctx: torch.autograd.function.FunctionCtx, logits_dot: Tensor, reference_dot: None
    ) -> tuple[Tensor, None, None, None]:
        logits, reference, lse, ref_lse, mass = ctx.saved_tensors
        parts = []
        for rows in _row_chunks(logits):
            slope = _kl_slope(logits, reference, lse, ref_lse, mass, rows)
            parts.append(torch.linalg.vecdot(slope, logits_dot[rows].to(slope.dtype)))
        return torch.cat(parts), None, None, None


def _kl_slope(logits: Tensor, reference: Tensor, lse: Tensor, ref_lse: Tensor, mass: Tensor, rows: slice) -> Tensor:
    """``∂ KL / ∂ x = q · Σp − p`` on ``rows``, (c, V) in the saved numbers' dtype (in-place after one copy each)."""
    q = (logits[rows].to(lse.dtype) - lse[rows, None]).exp_().mul_(mass[rows, None])
    return q.sub_((reference[rows].to(lse.dtype) - ref_lse[rows, None]).exp_())


def rmu(hidden: Tensor, target: Tensor, mask: Tensor, per_example: bool = False) -> Tensor:
    """RMU representation loss (Li et al. 2024, studied in the G-effect paper): squared distance to a target activation.

    ``L = (1/N) Σ_{valid t} (1/D) Σ_d (h_t,d - target_t,d)^2``. Forget term: ``target = c·u``, a fixed random control
    vector of shape ``(D,)``. Retain term: ``target`` = the frozen reference model's hidden states ``(B, T-1, D)``. The
    caller aligns ``hidden[:, :-1]`` with the shifted mask, as the paper's code pairs ``hidden_states[l][:, :-1]`` with
    ``labels[:, 1:] != -100``. Limiting case: 0 when the hidden states equal the target at every answer position.

    Args:
        hidden: ``(B, T-1, D)`` hidden states of the model being unlearned (any float dtype; math in float32).
        target: broadcastable to ``hidden``: ``(D,)`` control vector or ``(B, T-1, D)`` reference states. Treated as a
            constant (detached): it is a target, never something to move.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        per_example: Return each sequence's share ``(1/N) Σ_{t ∈ answer(b)} (1/D) Σ_d (...)^2`` instead.

    Returns:
        Scalar tensor; with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: on shape mismatch or an all-False mask.
    """
    if hidden.ndim != 3 or hidden.shape[:2] != mask.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be (B, T-1, D) matching mask {tuple(mask.shape)}; pass "
            "hidden_states[layer][:, :-1] together with the mask from token_logps."
        )
    try:
        torch.broadcast_shapes(target.shape, hidden.shape)
    except RuntimeError as err:
        raise ValueError(
            f"target {tuple(target.shape)} does not broadcast to hidden {tuple(hidden.shape)}; use a (D,) control "
            "vector or (B, T-1, D) reference hidden states."
        ) from err
    sq = (_upcast(hidden) - _upcast(target.detach())).pow(2).mean(dim=-1)  # (B, T-1)
    _check_pair(sq, mask, "hidden")
    return _reduce(_token_shares(sq, mask), per_example)


# --------------------------------------------------------------------------------------------------------------------
# forget objectives


def gradient_ascent(logps: Tensor, mask: Tensor, per_example: bool = False) -> Tensor:
    """Gradient ascent (GA): ``L_GA = -R(D_u; θ)``, the G-effect paper's baseline (code: ``loss = -outputs.loss``).

    ``L_GA = -mean_tokens(ce_i) = (1/N) Σ_{valid i} log p_i``. Its gradient ``(1/N) Σ_i ∇p_i / p_i`` carries the
    "inverse confidence" 1/p_i that the paper blames for excessive unlearning. Limiting case: the special case w ≡ 1 of
    every weighted objective below (WGA β=0, TNPO β=0, NPO β→0 up to a constant factor).

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        per_example: Return each sequence's share ``(1/N) Σ_{i ∈ answer(b)} log p_i`` instead (N over the batch).

    Returns:
        Scalar tensor (≤ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: if ``mask`` has no True entry.
    """
    return -nll(logps, mask, per_example)


def wga_weights(logps: Tensor, beta: float) -> Tensor:
    """Per-token WGA weights ``sg[p_i^β] = exp(β log p_i)``, detached.

    Args:
        logps: ``(B, T-1)`` token log-probs.
        beta: exponent β ≥ 0 (paper code default 5, OpenUnlearning 1).

    Returns:
        ``(B, T-1)`` weights in (0, 1]; 1 everywhere when β = 0. Values at masked positions are meaningless (there
        log p = 0, so the weight is 1): always apply the mask.
    """
    check_positive(beta, "beta", allow_zero=True)
    # Detached: WGA reweights GA's gradient, it does not differentiate through the weight (paper's sg[.]).
    # exp(β·log p) rather than p**β: exact in log space, no underflow to 0**β issues, never overflows since log p ≤ 0.
    return torch.exp(beta * _upcast(logps.detach()))


def wga(logps: Tensor, mask: Tensor, beta: float, per_example: bool = False) -> Tensor:
    """Weighted gradient ascent (WGA), proposed in the G-effect paper (code: ``wga`` in ``dataloader.py``).

    ``L_WGA = -mean_tokens(sg[p_i^β] · ce_i) = (1/N) Σ_{valid i} sg[p_i^β] log p_i``; the weight is the per-token
    probability (not the sequence probability). Gradient ``(1/N) Σ_i p_i^(β-1) ∇p_i``: β = 1 cancels GA's inverse
    confidence. Limiting case: β = 0 is exactly :func:`gradient_ascent`.

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta: confidence exponent β ≥ 0 (paper code default 5, OpenUnlearning 1).
        per_example: Return each sequence's share ``(1/N) Σ_{i ∈ answer(b)} sg[p_i^β] log p_i`` instead.

    Returns:
        Scalar tensor (≤ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: if ``beta < 0`` or ``mask`` has no True entry.
    """
    _check_pair(logps, mask)
    logps = _clean(logps, mask)
    return _reduce(_token_shares(wga_weights(logps, beta) * logps, mask), per_example)


def npo(logps: Tensor, ref_logps: Tensor, mask: Tensor, beta: float, per_example: bool = False) -> Tensor:
    """Negative preference optimisation (Zhang et al. 2024), analysed in the G-effect paper as a weighted GA.

    ``L_NPO = -(2/β) · mean_seq logσ(-β · (log π(y|x) - log π_o(y|x)))`` with per-sequence log-prob SUMS, i.e.
    ``-(2/β) mean_seq logσ(-β (Σ_i ce_o,i - Σ_i ce_i))`` since ``Σ ce_o - Σ ce = log π - log π_o``.
    Its gradient is GA's with a per-sequence weight ``w = 2 p^β / (p^β + p_o^β)``, p = π(y|x):
    ``∂L/∂log p_i = w_b / B`` for every valid token i of sequence b. Limiting case: β → 0 gives ``w → 1``, i.e. the GA
    direction (with per-sequence instead of per-token normalisation).

    Args:
        logps: ``(B, T-1)`` token log-probs of the model being unlearned.
        ref_logps: ``(B, T-1)`` token log-probs of the frozen reference model (detached here).
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta: inverse temperature β > 0 (OpenUnlearning 0.1, paper code 0.5).
        per_example: Return each sequence's share ``-(2/β) logσ(-β log(π(y_b|x_b)/π_o(y_b|x_b))) / B`` instead.

    Returns:
        Scalar tensor (> 0); with ``per_example``, ``(B,)`` shares summing to it.
    """
    _check_pair(logps, mask)
    _check_pair(ref_logps, mask, "ref_logps")
    check_positive(beta, "beta")
    # The reference model is frozen: no gradient may reach it even if the caller forgot no_grad.
    log_ratio = sequence_logps(logps, mask) - sequence_logps(ref_logps.detach(), mask)  # (B,)
    return _reduce(-(2.0 / beta) * F.logsigmoid(-beta * log_ratio) / log_ratio.shape[0], per_example)


def simnpo(logps: Tensor, mask: Tensor, beta: float, delta: float = 0.0, per_example: bool = False) -> Tensor:
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, in OpenUnlearning's form.

    ``L_SimNPO = -(2/β) · mean_seq logσ(β · (mean_i ce_i - δ))`` where ``mean_i ce_i = -(1/|y|) log π(y|x)`` is the
    per-sequence MEAN token NLL. Minimising it raises every answer's mean NLL. Limiting case: as β → 0 the loss is
    ``(2/β) log 2 - mean_seq(mean_i ce_i - δ) + O(β)``, i.e. sequence-averaged gradient ascent.

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta: inverse temperature β > 0 (OpenUnlearning default 4.5).
        delta: reward margin δ (default 0).
        per_example: Return each sequence's share ``-(2/β) logσ(β (mean_i ce_i - δ)) / B`` instead.

    Returns:
        Scalar tensor (> 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: if ``beta <= 0`` or a sequence has no answer token (its mean NLL is undefined).
    """
    _check_pair(logps, mask)
    check_positive(beta, "beta")
    lengths = mask.sum(dim=-1)  # (B,)
    if not bool((lengths > 0).all()):
        empty = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(
            f"SimNPO averages the NLL per sequence, but rows {empty} have no answer token (all labels -100); "
            "drop those examples or raise max_length."
        )
    mean_ce = -sequence_logps(logps, mask) / lengths  # (B,)
    return _reduce(-(2.0 / beta) * F.logsigmoid(beta * (mean_ce - delta)) / mean_ce.shape[0], per_example)


def tnpo_weights(logps: Tensor, ref_logps: Tensor, beta: float, eps: float = 0.0) -> Tensor:
    """Per-token TNPO weights ``w_i = 2 p_i^β / (p_i^β + p_o,i^β + eps)``, detached.

    Computed in log space, ``w_i = 2 exp(β log p_i - logsumexp(β log p_i, β log p_o,i, log eps))``, which for eps = 0
    is ``2 σ(β (log p_i - log p_o,i))``: finite for any log-probs, including -1e4.

    Args:
        logps: ``(B, T-1)`` token log-probs of the model being unlearned.
        ref_logps: ``(B, T-1)`` token log-probs of the frozen reference model.
        beta: β ≥ 0 (paper code default 4); β = 0 gives w ≡ 1 when eps = 0.
        eps: extra denominator term; the paper's code uses 1e-5, which matters when ``p^β`` is that small. Default 0
            (the exact token-wise NPO gradient).

    Returns:
        ``(B, T-1)`` weights in (0, 2).
    """
    return _tnpo_log_weights(logps, ref_logps, beta, 0.0, eps).exp()


def _tnpo_log_weights(logps: Tensor, ref_logps: Tensor, beta: float, alpha: float, eps: float) -> Tensor:
    """``log(2 p^(β+α) / (p^β + p_o^β + eps))``, detached; shared by TNPO (α = 0) and WTNPO."""
    check_positive(beta, "beta", allow_zero=True)
    check_positive(alpha, "alpha", allow_zero=True)
    check_positive(eps, "eps", allow_zero=True)
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} differ in shape.")
    # Detached: the weight only rescales each token's GA gradient (paper's sg[.]); the reference is frozen anyway.
    lp = _upcast(logps.detach())
    lq = _upcast(ref_logps.detach())
    log_denom = torch.logaddexp(beta * lp, beta * lq)  # log(p^β + p_o^β)
    if eps > 0:
        log_denom = torch.logaddexp(log_denom, torch.full_like(log_denom, math.log(eps)))
    return math.log(2.0) + (beta + alpha) * lp - log_denom


def tnpo(
    logps: Tensor, ref_logps: Tensor, mask: Tensor, beta: float, eps: float = 0.0, per_example: bool = False
) -> Tensor:
    """Token-wise NPO (TNPO), proposed in the G-effect paper (code: ``tnpo`` / ``ins_npo``).

    ``L_TNPO = -mean_tokens(sg[w_i] · ce_i)``, ``w_i = 2 p_i^β / (p_i^β + p_o,i^β)``: NPO's weight applied per token.
    With eps = 0 its gradient equals that of token-wise NPO ``-(2/β) mean_tokens logσ(-β (log p_i - log p_o,i))``
    exactly (both are ``w_i / N`` per valid token); the loss VALUES differ. Limiting case: β = 0 (eps = 0) is
    :func:`gradient_ascent`.

    Args:
        logps: ``(B, T-1)`` token log-probs of the model being unlearned.
        ref_logps: ``(B, T-1)`` token log-probs of the frozen reference model.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta: β ≥ 0 (paper code default 4).
        eps: denominator term (paper code 1e-5; default 0).
        per_example: Return each sequence's share ``(1/N) Σ_{i ∈ answer(b)} sg[w_i] log p_i`` instead.

    Returns:
        Scalar tensor (≤ 0); with ``per_example``, ``(B,)`` shares summing to it.
    """
    _check_pair(logps, mask)
    _check_pair(ref_logps, mask, "ref_logps")
    logps, ref_logps = _clean(logps, mask), _clean(ref_logps, mask)
    return _reduce(_token_shares(tnpo_weights(logps, ref_logps, beta, eps) * logps, mask), per_example)


def wtnpo_weights(logps: Tensor, ref_logps: Tensor, beta: float, alpha: float, eps: float = 0.0) -> Tensor:
    """Per-token WTNPO weights ``w_i = 2 p_i^(β+α) / (p_i^β + p_o,i^β + eps)`` = TNPO weight · ``p_i^α``, detached.

    Args:
        logps: ``(B, T-1)`` token log-probs of the model being unlearned.
        ref_logps: ``(B, T-1)`` token log-probs of the frozen reference model.
        beta: β ≥ 0 (paper code default 4).
        alpha: confidence exponent α ≥ 0 (paper code default 1.5); α = 0 gives the TNPO weights.
        eps: denominator term (paper code 1e-5; default 0).

    Returns:
        ``(B, T-1)`` weights in (0, 2).
    """
    return _tnpo_log_weights(logps, ref_logps, beta, alpha, eps).exp()


def wtnpo(
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    beta: float,
    alpha: float,
    eps: float = 0.0,
    per_example: bool = False,
) -> Tensor:
    """Weighted token-wise NPO (WTNPO), proposed in the G-effect paper: TNPO times WGA's confidence weight.

    ``L_WTNPO = -mean_tokens(sg[w_i] · ce_i)``, ``w_i = 2 p_i^(β+α) / (p_i^β + p_o,i^β)``. Limiting cases: α = 0 is
    :func:`tnpo`; β = 0 (eps = 0) is :func:`wga` with exponent α.

    Args:
        logps: ``(B, T-1)`` token log-probs of the model being unlearned.
        ref_logps: ``(B, T-1)`` token log-probs of the frozen reference model.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta: β ≥ 0 (paper code default 4).
        alpha: α ≥ 0 (paper code default 1.5).
        eps: denominator term (paper code 1e-5; default 0).
        per_example: Return each sequence's share ``(1/N) Σ_{i ∈ answer(b)} sg[w_i] log p_i`` instead.

    Returns:
        Scalar tensor (≤ 0); with ``per_example``, ``(B,)`` shares summing to it.
    """
    _check_pair(logps, mask)
    _check_pair(ref_logps, mask, "ref_logps")
    logps, ref_logps = _clean(logps, mask), _clean(ref_logps, mask)
    return _reduce(_token_shares(wtnpo_weights(logps, ref_logps, beta, alpha, eps) * logps, mask), per_example)


def dpo(
    chosen_logps: Tensor,
    chosen_ref_logps: Tensor,
    chosen_mask: Tensor,
    rejected_logps: Tensor,
    rejected_ref_logps: Tensor,
    rejected_mask: Tensor,
    beta: float,
    per_example: bool = False,
) -> Tensor:
    """DPO (Rafailov et al. 2023) as used for unlearning (IdkDPO): prefer a refusal over the forget answer.

    ``L = -(2/β) · mean logσ(β · [(log π - log π_o)(y_w) - (log π - log π_o)(y_l)])`` with per-sequence log-prob SUMS;
    the 2/β scaling is OpenUnlearning's (``compute_dpo_loss``), which makes NPO the ``y_w``-free special case. For
    IdkDPO, chosen ``y_w`` = the refusal answer, rejected ``y_l`` = the forget answer, same question. Limiting case: at
    θ = θ_o the loss is ``(2/β) log 2``.

    Args:
        chosen_logps: ``(B, T_w-1)`` token log-probs of the preferred answers under the model.
        chosen_ref_logps: same under the frozen reference model (detached here).
        chosen_mask: ``(B, T_w-1)`` bool mask of the preferred answers.
        rejected_logps: ``(B, T_l-1)`` token log-probs of the answers to forget.
        rejected_ref_logps: same under the reference model (detached here).
        rejected_mask: ``(B, T_l-1)`` bool mask of the answers to forget.
        beta: β > 0 (OpenUnlearning default 0.1).
        per_example: Return each pair's share ``-(2/β) logσ(β · [...]_b) / B`` instead.

    Returns:
        Scalar tensor (> 0); with ``per_example``, ``(B,)`` shares summing to it.
    """
    _check_pair(chosen_logps, chosen_mask, "chosen_logps")
    _check_pair(chosen_ref_logps, chosen_mask, "chosen_ref_logps")
    _check_pair(rejected_logps, rejected_mask, "rejected_logps")
    _check_pair(rejected_ref_logps, rejected_mask, "rejected_ref_logps")
    check_positive(beta, "beta")
    if chosen_mask.shape[0] != rejected_mask.shape[0]:
        raise ValueError(
            f"chosen batch has {chosen_mask.shape[0]} rows but rejected has {rejected_mask.shape[0]}; DPO pairs row b "
            "of one with row b of the other."
        )
    chosen = sequence_logps(chosen_logps, chosen_mask) - sequence_logps(chosen_ref_logps.detach(), chosen_mask)
    rejected = sequence_logps(rejected_logps, rejected_mask) - sequence_logps(
        rejected_ref_logps.detach(), rejected_mask
    )  # (B,)
    return _reduce(-(2.0 / beta) * F.logsigmoid(beta * (chosen - rejected)) / chosen.shape[0], per_example)


# --------------------------------------------------------------------------------------------------------------------
# further objectives (OpenUnlearning's SatImp, UNDIAL, CE-U, PDU)


def satimp_weights(logps: Tensor, beta1: float, beta2: float) -> Tensor:
    """Per-token SatImp weights ``sg[p_i^β1 · (1 - p_i)^β2]``, detached.

    Args:
        logps: ``(B, T-1)`` token log-probs.
        beta1: saturation exponent β1 ≥ 0 (the authors: 5).
        beta2: importance exponent β2 ≥ 0 (the authors' README: 0.1; OpenUnlearning: 1).

    Returns:
        ``(B, T-1)`` weights in [0, 1]; 1 everywhere when β1 = β2 = 0. Values at masked positions are meaningless
        (there log p = 0): always apply the mask.
    """
    check_positive(beta1, "beta1", allow_zero=True)
    check_positive(beta2, "beta2", allow_zero=True)
    lp = _upcast(logps.detach())
    # 1 - p as -expm1(log p): exact near p = 1, where 1 - exp(log p) cancels. pow keeps 0^0 = 1, so β2 = 0 is exactly
    # the WGA weight even for a certain token; a log-space form would give 0 · log 0 = NaN there.
    return torch.exp(beta1 * lp) * (-torch.expm1(lp)).pow(beta2)


def satimp(logps: Tensor, mask: Tensor, beta1: float, beta2: float, per_example: bool = False) -> Tensor:
    """SatImp (Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025).

    ``F = (1/N) Σ_{valid i} w_i log p_i`` with ``w_i = sg[p_i^β1 · (1 - p_i)^β2]``: gradient ascent reweighted per
    token by saturation (``p^β1``, like WGA: tokens already forgotten stop being pushed) and importance (``(1-p)^β2``:
    tokens the model is certain of, often trivial ones, are pushed less). Token mean over the micro-batch, as in the
    authors' code (``satimp`` in ``dataloader/dataloader_sat.py``; the formula is taken from there). The weights are
    constants, so ``∂F/∂log p_i = w_i / N``. Limiting cases: β1 = β2 = 0 is :func:`gradient_ascent`; β2 = 0 is
    :func:`wga` with β = β1.

    The authors recommend β1 = 5, β2 = 0.1 (README) and pair it with ``forget 1 · F + 0.1 · NLL_retain``
    (``satimp_gd``). OpenUnlearning's SatImp config differs: β2 = 1, and forget/retain weights 0.1/1 (swapped
    relative to its own class defaults and to the authors').

    Args:
        logps: ``(B, T-1)`` token log-probs from :func:`token_logps`.
        mask: ``(B, T-1)`` bool, False on prompt and padding.
        beta1: saturation exponent β1 ≥ 0 (the authors: 5).
        beta2: importance exponent β2 ≥ 0 (the authors' README: 0.1; OpenUnlearning: 1).
        per_example: Return each sequence's share ``(1/N) Σ_{i ∈ answer(b)} w_i log p_i`` instead.

    Returns:
        Scalar tensor (≤ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: if ``beta1`` or ``beta2`` is negative or ``mask`` has no True entry.
    """
    _check_pair(logps, mask)
    logps = _clean(logps, mask)
    return _reduce(_token_shares(satimp_weights(logps, beta1, beta2) * logps, mask), per_example)


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T) with the same B and T, got logits {tuple(logits.shape)} "
            f"and labels {tuple(labels.shape)}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got dtype {labels.dtype}.")


def _check_label_ids(targets: Tensor, vocab: int) -> None:
    """Token ids (-100 aside) must index the vocabulary: an out-of-range id would be a cryptic scatter error."""
    scored = targets[targets != IGNORE_INDEX]
    if scored.numel() and not bool(((scored >= 0) & (scored < vocab)).all()):
        raise ValueError(
            f"labels hold ids outside [0, {vocab}) other than -100 (min {int(scored.min())}, max {int(scored.max())}); "
            "the labels and the logits come from different tokenizers or models."
        )


def _answer_rows(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shifted answer positions only: logits ``(N, V)`` upcast to float32, their labels and batch rows, each ``(N,)``.

    Selecting before upcasting keeps the float32 temporaries (N, V) instead of (B, T-1, V).
    """
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    if not bool(mask.any()):
        raise ValueError(
            "labels are -100 everywhere: no answer position to average over. Check the label masking (an answer "
            "truncated away by max_length?) or drop empty examples."
        )
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]  # (N,)
    return _upcast(logits[:, :-1][mask]), labels[:, 1:][mask], rows


def undial(
    logits: Tensor,
    ref_logits: Tensor,
    labels: Tensor,
    beta: float,
    positions: Literal["answer", "all"] = "answer",
    per_example: bool = False,
) -> Tensor:
    """UNDIAL (Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in LLMs", NAACL 2025).

    Self-distillation towards the frozen initial model with the label's logit lowered by β:
    ``q_t = softmax(z^T_t - β e_{y_t})`` (detached), ``ℓ_t = -Σ_v q_t,v log softmax(z^S_t)_v`` (KL(q_t ‖ p_S) plus the
    constant entropy of q_t), ``F = mean_t ℓ_t`` over the answer positions (logits shifted like :func:`token_logps`).
    The target keeps the teacher's distribution over the other tokens; only the label's probability drops, to
    ``q_y = p^T_y e^-β / (1 - p^T_y + p^T_y e^-β)``. ``∇_{z^S_t} ℓ_t = softmax(z^S_t) - q_t`` (over N).
    Limiting cases: β = 0 with student = teacher gives the mean teacher entropy and zero gradient; β → ∞ gives
    :func:`ceu`'s target (the label removed from the teacher's distribution).

    OpenUnlearning (``compute_undial_loss``) averages over ALL B·(T-1) positions, prompt and padding included
    (``positions="all"`` reproduces that: a masked position contributes plain distillation towards the teacher), and
    subtracts β at vocabulary entry -100 there, i.e. at token V-100 by index wrap-around (an IndexError for V < 100).
    That wrap-around is never reproduced. Computed in float32 (float64 inputs stay float64).

    Args:
        logits: ``(B, T, V)`` logits of the model being unlearned (the student).
        ref_logits: ``(B, T, V)`` logits of the frozen initial model on the same inputs (the teacher; detached here).
        labels: ``(B, T)`` labels, -100 on prompt and padding.
        beta: β ≥ 0, how far the label's logit is lowered (OpenUnlearning's config: 10; the paper: 3, 10 or 30).
        positions: ``"answer"`` (default): mean over answer positions; ``"all"``: OpenUnlearning's mean over every
            position (its value then depends on prompt length and padding).
        per_example: Return each sequence's share instead: the sum of ``ℓ_t`` over its averaged positions, divided by
            the number of averaged positions of the whole batch (N answer positions, or B·(T-1) with ``"all"``).

    Returns:
        Scalar tensor (≥ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: on shape mismatch, a negative β, an unknown ``positions``, a label id outside the vocabulary, or
            no answer position.
    """
    _check_logits_labels(logits, labels)
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape; run both models "
            "on the same batch."
        )
    check_positive(beta, "beta", allow_zero=True)
    batch, steps, vocab = logits.shape
    if positions == "answer":
        student, _, rows = _answer_rows(logits, labels)  # (N, V), (N,)
        teacher, targets, _ = _answer_rows(ref_logits.detach(), labels)  # (N, V), (N,)
    elif positions == "all":
        if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            raise ValueError("labels are -100 everywhere: UNDIAL has no answer token to lower.")
        student = _upcast(logits[:, :-1].reshape(-1, vocab))  # (N, V), N = B*(T-1)
        teacher = _upcast(ref_logits[:, :-1].detach().reshape(-1, vocab))
        targets = labels[:, 1:].reshape(-1)  # (N,), -100 at prompt and padding
        rows = torch.arange(batch, device=labels.device).repeat_interleave(steps - 1)  # (N,)
    else:
        raise ValueError(f"positions={positions!r}; choose 'answer' (the paper's) or 'all' (OpenUnlearning's).")
    _check_label_ids(targets, vocab)
    lowered = targets != IGNORE_INDEX  # (N,), all True for "answer"
    # Lower the label's logit only where there is a label; where(), not β·lowered, so that β = inf stays NaN-free.
    shift = torch.where(lowered, -beta, 0.0).to(teacher.dtype)  # (N,)
    teacher = teacher.scatter_add(-1, targets.masked_fill(~lowered, 0)[:, None], shift[:, None])
    target_probs = torch.softmax(teacher, dim=-1)  # (N, V), a constant
    per_position = F.cross_entropy(student, target_probs, reduction="none")  # (N,)
    return _reduce(_row_shares(per_position, rows, batch, per_position.shape[0]), per_example)


def ceu(logits: Tensor, labels: Tensor, ignore_first_n: int = 1, per_example: bool = False) -> Tensor:
    """CE-U, cross-entropy unlearning (Bo Yang, "CE-U: Cross Entropy Unlearning", arXiv 2503.01224).

    Cross-entropy to the model's OWN detached distribution with the label removed:
    ``q_t = softmax(sg[z_t] with z_t,y_t := -inf)`` (so ``q_t,y = 0``), ``ℓ_t = -Σ_{v≠y_t} q_t,v log p_t,v``,
    ``F = mean_t ℓ_t`` over answer positions (shifted like :func:`token_logps`). Identity:
    ``ℓ_t = H(q_t) - log(1 - p_t,y_t)``, and its gradient ``∇_{z_t} ℓ_t = p_t - q_t`` equals that of the unlikelihood
    loss ``-log(1 - p_t,y_t)``: bounded, unlike gradient ascent's, as ``p_y → 0``. No reference model, no retain term in
    the paper. Limiting case: :func:`undial` with student = teacher and β → ∞.

    The first ``ignore_first_n`` answer tokens of each sequence are relabelled -100 BEFORE the shift (the paper's
    footnote, per OpenUnlearning's ``compute_batch_ceu``), so their positions neither count nor get a gradient.
    Computed in float32 (float64 inputs stay float64).

    Args:
        logits: ``(B, T, V)`` logits of the model being unlearned, V ≥ 2.
        labels: ``(B, T)`` labels, -100 on prompt and padding.
        ignore_first_n: answer tokens skipped at the start of every answer, ≥ 0 (OpenUnlearning's config: 1).
        per_example: Return each sequence's share ``(1/N) Σ_{t ∈ answer(b)} ℓ_t`` instead (N counted after skipping,
            over the whole batch).

    Returns:
        Scalar tensor (≥ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: on shape mismatch, a negative ``ignore_first_n``, V < 2, a label id outside the vocabulary, or no
            answer position left after skipping.
    """
    _check_logits_labels(logits, labels)
    if isinstance(ignore_first_n, bool) or not isinstance(ignore_first_n, int) or ignore_first_n < 0:
        raise ValueError(f"ignore_first_n must be an integer >= 0, got {ignore_first_n!r}.")
    if logits.shape[-1] < 2:
        raise ValueError(f"CE-U needs a vocabulary of at least 2 tokens (one removed), got V={logits.shape[-1]}.")
    answer = labels != IGNORE_INDEX  # (B, T)
    skipped = answer & (answer.cumsum(dim=-1) <= ignore_first_n)
    labels = labels.masked_fill(skipped, IGNORE_INDEX)
    if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
        raise ValueError(
            f"no answer token left after skipping the first ignore_first_n={ignore_first_n} of each answer; lower "
            "ignore_first_n or check the label masking."
        )
    z, targets, rows = _answer_rows(logits, labels)  # (N, V), (N,), (N,)
    _check_label_ids(targets, z.shape[-1])
    target_logits = z.detach().scatter(-1, targets[:, None], float("-inf"))  # (N, V)
    # q_y = 0 exactly, so the label's log-prob never enters: the loss is the cross-entropy over the other tokens.
    per_position = F.cross_entropy(z, torch.softmax(target_logits, dim=-1), reduction="none")  # (N,)
    return _reduce(_row_shares(per_position, rows, labels.shape[0], per_position.shape[0]), per_example)


def pdu_forget(logits: Tensor, labels: Tensor, per_example: bool = False) -> Tensor:
    """PDU's forget loss (Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for LLMs", 2025).

    Logit-margin flattening: ``F = (1/N) Σ_{valid t} (max_v z_t,v - mean_v z_t,v)^2`` over the answer positions,
    logits shifted like :func:`token_logps` (position t predicts label t+1). F pushes every answer position's output
    towards the uniform distribution without naming the label. It is 0 exactly when the logits are constant at every
    answer position and invariant to adding a constant to a position's logits. PDU minimises it subject to
    ``R_retain ≤ ε`` (see :class:`lit_unlearn.modules.PDU`).

    OpenUnlearning (``PDU.compute_loss``) masks the UNSHIFTED positions (``labels != -100`` on ``logits``): it scores
    the logits after each final answer token and drops the last prompt position, which predicts the first answer
    token. Here the mask is shifted like every other loss of this module; OpenUnlearning's value is this function's
    on labels moved one position later.

    Args:
        logits: ``(B, T, V)`` logits of the model being unlearned (any float dtype; math in float32).
        labels: ``(B, T)`` labels, -100 on prompt and padding; only their mask is used, not the ids.
        per_example: Return each sequence's share ``(1/N) Σ_{t ∈ answer(b)} (max_v z_t,v - mean_v z_t,v)^2`` instead.

    Returns:
        Scalar tensor (≥ 0); with ``per_example``, ``(B,)`` shares summing to it.

    Raises:
        ValueError: on shape mismatch or when no position has a label.
    """
    _check_logits_labels(logits, labels)
    z, _, rows = _answer_rows(logits, labels)  # (N, V), (N,), (N,)
    # amax spreads the gradient evenly over tied maxima, so the derivative is symmetric in the tied entries.
    gap = (z.amax(dim=-1) - z.mean(dim=-1)).pow(2)  # (N,)
    return _reduce(_row_shares(gap, rows, labels.shape[0], gap.shape[0]), per_example)
