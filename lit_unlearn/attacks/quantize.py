"""The quantization attack: does forgotten knowledge come back when the unlearned model is quantized?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025, arXiv 2410.16454): unlearning
with a utility constraint moves the weights so little that quantization maps the unlearned and the target weights to
the same codes; their 4-bit models kept 83% of the forgotten knowledge on average (21% at full precision). They loaded
the models with bitsandbytes (``load_in_4bit``: FP4 blockwise absmax, block 64; ``load_in_8bit``: LLM.int8(), row-wise
absmax int8 with fp16 outliers above 6.0).

This module approximates that attack in plain torch, on any device: weight-only round-to-nearest (RTN) fake
quantization of every ``nn.Linear`` except the output head, computed in float32, the dequantized weights written back.
For a weight row (or group) ``W`` with ``b`` bits:

* symmetric (default): ``s = max_j |W_j| / (2^(b−1) − 1)``, ``q = clamp(round(W / s), −2^(b−1), 2^(b−1) − 1)``,
  ``Ŵ = q · s``;
* asymmetric (GPTQ's grid): with ``lo = min(min_j W_j, 0)`` and ``hi = max(max_j W_j, 0)`` (GPTQ widens the range to
  hold 0, so zero is exact and a constant group is no special case), ``s = (hi − lo) / (2^b − 1)``,
  ``z = round(−lo / s)``, ``q = clamp(round(W / s) + z, 0, 2^b − 1)``, ``Ŵ = (q − z) · s``.

A group with ``s = 0`` (all zeros) keeps code 0 (``z`` for asymmetric) and ``Ŵ = 0``. Groups run along the input
dimension (the columns of the ``(out, in)`` weight); the last group of a row is shorter when ``group_size`` does not
divide ``in``. The diagnostic of the paper's explanation is :func:`code_changes`: the fraction of integer codes that
differ between Q(target) and Q(unlearned).
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn.attacks.common import (
    AttackMetrics,
    EvalOptions,
    EvalPlan,
    Evaluated,
    check_eval_source,
    check_model_source,
    eval_plan,
    evaluate_model,
    fresh_output_dir,
    load_model,
    recoveries,
    resolve_device,
    write_json,
)
from lit_unlearn.eval.io import load_eval
from lit_unlearn.eval.items import Records
from lit_unlearn.models import DType
from lit_unlearn.report.numbers import fmt_number

REPORT_JSON = "quantize.json"
REPORT_MD = "quantize.md"


@dataclass(frozen=True)
class QuantSpec:
    """A round-to-nearest weight quantization grid.

    Args:
        bits: 4 or 8.
        group_size: Columns (input features) per scale; ``None``: one scale per output channel (row).
        symmetric: Symmetric absmax grid (default) or GPTQ's asymmetric min/max grid with a zero point.

    Raises:
        ValueError: unsupported bits or a group size below 1.
    """

    bits: Literal[4, 8] = 4
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits!r}.")
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(f"group_size must be a positive integer or None (per channel), got {self.group_size!r}.")

    @property
    def label(self) -> str:
        """Short name, e.g. ``int4-g128-sym`` or ``int8-channel-asym``."""
        group = "channel" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}"


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight matrix on a quantization grid.

    Attributes:
        codes: integer codes, shape (out, in); int8 (symmetric) or uint8 (asymmetric).
        scale: one step size per group, shape (out, groups), float32.
        zero: the zero point of each group (asymmetric), shape (out, groups), float32; None when symmetric.
        dequantized: the weights the codes stand for, ``q · s`` or ``(q − z) · s``, shape (out, in), float32.
    """

    codes: Tensor
    scale: Tensor
    zero: Tensor | None
    dequantized: Tensor


def _quantize_groups(groups: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Codes, scales, zero points and dequantized values of (out, n, g) float32 groups; scales (out, n, 1)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = groups.abs().amax(dim=-1, keepdim=True) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: code 0, Ŵ 0
        codes = torch.clamp(torch.round(groups / safe), -qmax - 1, qmax)
        return codes, scale, None, codes * scale
    levels = 2**bits - 1
    lo = groups.amin(dim=-1, keepdim=True).clamp(max=0.0)
    hi = groups.amax(dim=-1, keepdim=True).clamp(min=0.0)
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / safe)
    codes = torch.clamp(torch.round(groups / safe) + zero, 0, levels)
    return codes, scale, zero, (codes - zero) * scale


def quantize_weight(weight: Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight (see the module docstring for the grids), in float32.

    Args:
        weight: shape (out, in), any float dtype and device.
        spec: bits, grouping, symmetry.

    Returns:
        Codes, scales, zero points and the dequantized float32 weight, on ``weight``'s device.

    Raises:
        ValueError: ``weight`` is not 2-D.

    Example:
        >>> q = quantize_weight(torch.tensor([[0.12, -0.5, 0.33, 0.01]]), QuantSpec(bits=4))
        >>> q.codes.tolist(), round(q.scale.item(), 7)
        ([[2, -7, 5, 0]], 0.0714286)
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight needs a 2-D (out, in) weight, got shape {tuple(weight.shape)}.")
    w = weight.detach().float()
    rows, cols = w.shape
    size = cols if spec.group_size is None else min(spec.group_size, cols)
    full = cols // size * size
    parts = [w[:, :full].reshape(rows, full // size, size)]
    if full < cols:  # a shorter last group
        parts.append(w[:, full:].reshape(rows, 1, cols - full))
    results = [_quantize_groups(part, spec.bits, spec.symmetric) for part in parts]
    codes = torch.cat([r[0].reshape(rows, -1) for r in results], dim=1)
    scale = torch.cat([r[1].squeeze(-1) for r in results], dim=1)
    zero = torch.cat([r[2].squeeze(-1) for r in results], dim=1) if not spec.symmetric else None
    dequantized = torch.cat([r[3].reshape(rows, -1) for r in results], dim=1)
    code_dtype = torch.int8 if spec.symmetric else torch.uint8
    return QuantizedWeight(codes.to(code_dtype), scale, zero, dequantized)


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` except the output head (``get_output_embeddings()``, usually ``lm_head``) and
    any layer sharing its weight, by qualified name.

    The head stays in full precision, as in bitsandbytes (``llm_int8_skip_modules`` defaults to the head) and GPTQ.

    Raises:
        ValueError: the model has no such layer (e.g. GPT-2's ``Conv1D`` layers are not ``nn.Linear``).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and module.weight is not head_weight
    ]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer besides its output head; the RTN attack quantizes "
            "nn.Linear weights only."
        )
    return layers


@dataclass(frozen=True)
class QuantizedModel:
    """What :func:`fake_quantize_` did to a model.

    Attributes:
        spec: the grid.
        codes: the integer codes of every quantized layer, by qualified name, on the CPU.
        quantized_parameters: weights put on the grid.
        total_parameters: every parameter of the model (the head, embeddings, norms and biases stay as they are).
    """

    spec: QuantSpec
    codes: dict[str, Tensor]
    quantized_parameters: int
    total_parameters: int


@torch.no_grad()
def fake_quantize_(model: nn.Module, spec: QuantSpec) -> QuantizedModel:
    """Put every quantizable linear weight of ``model`` on the grid, in place (fake quantization).

    Each weight is quantized in float32 and its dequantized values are written back in the weight's own dtype: exact
    for float32 weights; a bfloat16/float16 model rounds each grid value once more, far below a grid step.

    Returns:
        The codes (for :func:`code_changes`) and how many parameters were quantized.
    """
    codes: dict[str, Tensor] = {}
    count = 0
    for name, layer in quantizable_linears(model):
        q = quantize_weight(layer.weight, spec)
        layer.weight.copy_(q.dequantized.to(layer.weight.dtype))
        codes[name] = q.codes.cpu()
        count += layer.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return QuantizedModel(spec, codes, count, total)


@dataclass(frozen=True)
class LayerCodeChange:
    """Codes of one layer that differ between two quantized models."""

    name: str
    codes: int
    changed: int

    @property
    def fraction(self) -> float:
        """``changed / codes``."""
        return self.changed / self.codes


@dataclass(frozen=True)
class CodeChanges:
    """Integer codes that differ between two quantized models, per layer and overall.

    Attributes:
        layers: per layer, in model order.
        codes: codes compared in all.
        changed: codes that differ in all.
        fraction: ``changed / codes`` (overall, weighted by layer size).
    """

    layers: tuple[LayerCodeChange, ...]
    codes: int
    changed: int
    fraction: float


def code_changes(reference: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> CodeChanges:
    """Compare the codes of two models quantized with the same grid, layer by layer.

    Raises:
        ValueError: the two sets of layers or a layer's shapes differ (models of different architectures).
    """
    if list(reference) != list(other):
        raise ValueError(
            "The quantized models have different layers: only in the first "
            f"{sorted(set(reference) - set(other))[:5]}, only in the second {sorted(set(other) - set(reference))[:5]}; "
            "compare models of the same architecture."
        )
    layers = []
    for name, codes in reference.items():
        if codes.shape != other[name].shape:
            raise ValueError(f"Layer {name!r}: codes of shape {tuple(codes.shape)} vs {tuple(other[name].shape)}.")
        layers.append(LayerCodeChange(name, codes.numel(), int((codes != other[name]).sum())))
    total = sum(layer.codes for layer in layers)
    changed = sum(layer.changed for layer in layers)
    return CodeChanges(tuple(layers), total, changed, changed / total)


@dataclass(frozen=True)
class QuantizeReport:
    """Everything the quantization attack measured.

    Attributes:
        spec: the quantization grid.
        forget_split: the forget split evaluated (every row).
        models: the model folders or Hub ids, keyed ``unlearned`` and ``target`` (when given).
        metrics: the evaluated models' numbers, keyed ``unlearned``, ``Q(unlearned)`` and, with a target, ``target``
            and ``Q(target)``.
        recovery: per forget metric, ``(m(Q(unlearned)) − m(unlearned)) / (m(target) − m(unlearned))``; None without
            a target or when unlearning moved the metric by less than ``min_gap``.
        code_changes: the codes that differ between Q(target) and Q(unlearned); None without a target.
        quantized_parameters: weights put on the grid per model (the same for both).
        total_parameters: parameters per model.
        retain_eval: the retain model's evaluation used for forget quality, or None.
        evaluation: the evaluation settings, identical for every model.
        dtype: the dtype the models were loaded in.
        device: where they ran.
        torch_threads: CPU threads torch used.
        min_gap: the smallest |target − unlearned| for which a recovery ratio is reported.
        seconds: wall time of the attack.
    """

    spec: QuantSpec
    forget_split: str
    models: dict[str, str]
    metrics: dict[str, AttackMetrics]
    recovery: dict[str, float | None] | None
    code_changes: CodeChanges | None
    quantized_parameters: int
    total_parameters: int
    retain_eval: str | None
    evaluation: EvalOptions
    dtype: str
    device: str
    torch_threads: int
    min_gap: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Every number, as plain JSON types (per-layer code changes with their fraction)."""
        out = asdict(self)
        out["spec"]["label"] = self.spec.label
        if self.code_changes is not None:
            for layer, record in zip(self.code_changes.layers, out["code_changes"]["layers"], strict=True):
                record["fraction"] = layer.fraction
        return out

    def markdown(self) -> str:
        """The headline numbers as a short markdown report."""
        lines = [
            f"# Quantization attack: {self.spec.label} round-to-nearest, {self.forget_split}",
            "",
            f"Weight-only fake quantization of {self.quantized_parameters:,} of {self.total_parameters:,} parameters "
            f"per model (every nn.Linear except the output head), models loaded as {self.dtype} on {self.device}.",
            "",
            "| model | forget prob. | forget ROUGE-L | forget truth ratio | forget quality | model utility |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in self.metrics.items():
            cells = [m.forget_probability, m.forget_rouge_l_recall, m.forget_truth_ratio, m.forget_quality]
            lines.append(f"| {name} | " + " | ".join(fmt_number(c) for c in [*cells, m.model_utility]) + " |")
        if self.recovery is not None:
            lines += [
                "",
                "Recovery (m(Q(unlearned)) − m(unlearned)) / (m(target) − m(unlearned)): "
                + ", ".join(f"{k} {fmt_number(v)}" for k, v in self.recovery.items())
                + f" (– where |target − unlearned| < {self.min_gap:g}).",
            ]
        if self.code_changes is not None:
            c = self.code_changes
            lines += [
                "",
                f"Integer codes that differ between Q(target) and Q(unlearned): {c.changed:,} of {c.codes:,} "
                f"({100 * c.fraction:.4g} %).",
            ]
        return "\n".join(lines) + "\n"


def quantization_attack(
    model: str,
    output_dir: str | Path,
    spec: QuantSpec,
    target: str | None = None,
    forget_split: str = "forget10",
    retain_eval: str | None = None,
    evaluation: EvalOptions | None = None,
    data_dir: str | None = None,
    dtype: DType = "auto",
    device: str = "auto",
    min_gap: float = 1e-3,
    log: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Evaluate the unlearned model (and the target) at full precision and after RTN fake quantization, identically.

    Writes into ``output_dir`` (new or empty): ``quantize.json`` (every number), ``quantize.md`` and one evaluation
    folder per model (``eval_<name>/eval_items.json`` ...). One model is in memory at a time, plus the codes of the
    target (1 byte per quantized weight).

    Args:
        model: the unlearned model (folder or Hub id).
        output_dir: a new or empty folder.
        spec: the quantization grid.
        target: the model before unlearning; enables the recovery ratio and the code comparison.
        forget_split: ``forget01``, ``forget05`` or ``forget10`` (every row is evaluated).
        retain_eval: the retain model's evaluation on ``forget_split`` (forget quality's reference).
        evaluation: evaluation settings (default ``EvalOptions()``).
        data_dir: TOFU folder (else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub).
        dtype: dtype the models are loaded in (``float32`` keeps the grid values exact).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        min_gap: smallest |target − unlearned| for which a recovery ratio is reported.
        log: progress lines.

    Returns:
        The report (also written to ``output_dir``).

    Raises:
        FileNotFoundError: a model or evaluation that cannot be found (checked before any work).
        FileExistsError: ``output_dir`` holds files.
    """
    start = time.perf_counter()
    evaluation = evaluation or EvalOptions()
    check_model_source(model, "--model")
    if target is not None:
        check_model_source(target, "--target")
    reference = None
    plan = eval_plan(forget_split, evaluation, data_dir)
    if retain_eval is not None:
        check_eval_source(retain_eval, "--retain-eval")
        reference = plan.restrict(load_eval(retain_eval)[0], retain_eval)
    out = fresh_output_dir(output_dir)
    torch_device = resolve_device(device)

    metrics: dict[str, AttackMetrics] = {}
    target_codes: dict[str, Tensor] | None = None
    changes: CodeChanges | None = None
    for name, source in (("target", target), ("unlearned", model)):
        if source is None:
            continue
        lm, tokenizer = load_model(source, dtype, torch_device)
        full = _evaluate(lm, tokenizer, plan, reference, out, name, source, None, log)
        quantized = fake_quantize_(lm, spec)
        if log is not None:
            log(f"quantized {name} ({spec.label}): {quantized.quantized_parameters:,} weights on the grid")
        fake = _evaluate(lm, tokenizer, plan, reference, out, f"Q({name})", source, spec, log)
        metrics[name], metrics[f"Q({name})"] = full.metrics, fake.metrics
        if name == "target":
            target_codes = quantized.codes
        elif target_codes is not None:
            changes = code_changes(target_codes, quantized.codes)
        del lm  # one model in memory at a time

    ordered = {k: metrics[k] for k in ("target", "Q(target)", "unlearned", "Q(unlearned)") if k in metrics}
    recovery = (
        recoveries(metrics["Q(unlearned)"], metrics["unlearned"], metrics["target"], min_gap)
        if target is not None
        else None
    )
    report = QuantizeReport(
        spec=spec,
        forget_split=forget_split,
        models={"unlearned": model, **({"target": target} if target is not None else {})},
        metrics=ordered,
        recovery=recovery,
        code_changes=changes,
        quantized_parameters=quantized.quantized_parameters,
        total_parameters=quantized.total_parameters,
        retain_eval=retain_eval,
        evaluation=evaluation,
        dtype=dtype,
        device=str(torch_device),
        torch_threads=torch.get_num_threads(),
        min_gap=min_gap,
        seconds=time.perf_counter() - start,
    )
    _write(out, report)
    return report


def _evaluate(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plan: EvalPlan,
    reference: Records | None,
    out: Path,
    name: str,
    source: str,
    spec: QuantSpec | None,
    log: Callable[[str], None] | None,
) -> Evaluated:
    """Evaluate one model of the attack into ``out/eval_<name>``."""
    folder = out / f"eval_{name.replace('(', '_').replace(')', '')}"
    metadata = {"model": source, "label": name, "quantization": asdict(spec) if spec is not None else None}
    return evaluate_model(lm, tokenizer, plan, reference, folder, metadata, log)


def _write(out: Path, report: QuantizeReport) -> None:
    write_json(out / REPORT_JSON, report.to_json())
    (out / REPORT_MD).write_text(report.markdown(), encoding="utf-8")
