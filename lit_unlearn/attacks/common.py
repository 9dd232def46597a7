"""What the robustness attacks share: one evaluation plan applied identically to every model, typed metrics, the
recovery ratio, loading models, and output folders that are never overwritten.

An attack compares several models (target, unlearned, attacked, controls) on the same rows with the same settings, so
the rows and settings are fixed once (:class:`EvalPlan`) and every model goes through :func:`evaluate_model`: the
plain TOFU runner (``lit_unlearn.eval.runner.evaluate``) on the plan's loaders, then ``summarize_records`` against the
retain model's per-item records on the same rows (forget quality).
"""

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn.data.evaluation import eval_dataloader, tofu_file_of
from lit_unlearn.data.formatting import PromptFormat
from lit_unlearn.data.tofu import load_tofu
from lit_unlearn.eval.aggregate import summarize_records
from lit_unlearn.eval.io import _json_safe, load_eval, resolve_eval_file, write_outputs
from lit_unlearn.eval.items import Records
from lit_unlearn.eval.runner import evaluate
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.metrics.functional import MODEL_UTILITY_COMPONENTS
from lit_unlearn.models import DType, load_causal_lm, load_tokenizer

ATTACK_SPLITS: tuple[str, ...] = ("forget", "retain", "real_authors", "world_facts")
"""Evaluation splits of an attack: the forget set and the three model-utility splits (no holdout: no privleak)."""

FORGET_METRICS: tuple[str, ...] = ("probability", "rouge_l_recall", "truth_ratio")
"""Forget-set metrics whose recovery ratio an attack reports."""


@dataclass(frozen=True)
class EvalOptions:
    """How every model of an attack is evaluated (the same for all of them, so differences come from the models).

    Args:
        max_new_tokens: Greedy-generation budget per answer for ROUGE-L (OpenUnlearning: 200).
        batch_size: Questions per evaluation batch.
        max_length: Truncation length of teacher-forced sequences.
        prompt_format: See ``lit_unlearn.data.formatting.PromptFormat``.
        max_items: Evaluate only the first N rows of every split (original TOFU: 300, which caps forget10 and
            retain); ``None``: every row. An attack that evaluates a subset of the forget set (the relearning attack's
            held-out half) keeps the subset's rows among the first N.

    Raises:
        ValueError: a value out of range, named in the message.
    """

    max_new_tokens: int = 200
    batch_size: int = 16
    max_length: int = 512
    prompt_format: PromptFormat = "auto"
    max_items: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalOptions.{name} must be a positive integer, got {value!r}.")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"EvalOptions.max_items must be ≥ 1 or None, got {self.max_items}.")


@dataclass(frozen=True)
class EvalPlan:
    """The TOFU rows every model of an attack is evaluated on, and how.

    Attributes:
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        options: the evaluation settings.
        rows: the rows of each split's TOFU file (``forget`` → ``forgetXX_perturbed`` ...), indexed by TOFU row.
        indices: the evaluated TOFU row indices of each split, increasing.
    """

    forget_split: str
    options: EvalOptions
    rows: Mapping[str, Sequence[Mapping[str, Any]]]
    indices: Mapping[str, tuple[int, ...]]

    def loaders(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, DataLoader]:
        """Sequential evaluation loaders over the plan's rows; items keep their TOFU row index."""
        o = self.options
        return {
            split: eval_dataloader(
                self.rows[split],
                split,
                tokenizer,
                o.prompt_format,
                o.batch_size,
                o.max_length,
                row_indices=self.indices[split],
            )
            for split in ATTACK_SPLITS
        }

    def restrict(self, records: Records, source: str) -> dict[str, list[dict[str, Any]]]:
        """A stored evaluation cut down to the plan's rows, so that it compares with the live ones.

        Args:
            records: per-item records keyed by split (``lit_unlearn.eval.load_eval``).
            source: what the records are (the file), for error messages.

        Raises:
            ValueError: a split or row of the plan is missing, or a record's question is not the plan's row's (an
                evaluation of another forget split).
        """
        out: dict[str, list[dict[str, Any]]] = {}
        for split in ATTACK_SPLITS:
            if split not in records:
                raise ValueError(
                    f"{source} has no {split!r} split; an attack needs {list(ATTACK_SPLITS)}. Pass the model "
                    "directory instead, to evaluate it here."
                )
            by_index = {int(r["index"]): r for r in records[split]}
            missing = [i for i in self.indices[split] if i not in by_index]
            if missing:
                raise ValueError(
                    f"{source} lacks rows {missing[:10]} ({len(missing)} in all) of split {split!r} that the attack "
                    "evaluates (an item cap?); evaluate that model without `max_items` or pass its directory."
                )
            kept = [dict(by_index[i]) for i in self.indices[split]]
            for record in kept:
                question = record.get("question")
                expected = self.rows[split][record["index"]]["question"]
                # Original TOFU logs store the whole prompt: the row's question must appear in it.
                if question is not None and expected not in question:
                    raise ValueError(
                        f"{source}: row {record['index']} of split {split!r} asks {question[:60]!r}, but that row of "
                        f"{tofu_file_of(split, self.forget_split)} asks {expected[:60]!r}; is it an evaluation of "
                        f"{self.forget_split}?"
                    )
            out[split] = kept
        return out


def eval_plan(
    forget_split: str,
    options: EvalOptions,
    data_dir: str | None = None,
    forget_rows: Sequence[int] | None = None,
) -> EvalPlan:
    """The evaluation plan of an attack: the first ``options.max_items`` rows of every split, and of the forget split
    only those among ``forget_rows``.

    Args:
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        options: evaluation settings.
        data_dir: TOFU folder (else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub).
        forget_rows: TOFU row indices of the forget split to evaluate (e.g. the relearning attack's held-out half);
            ``None``: every row.

    Raises:
        ValueError: a forget row outside the split, or fewer than 2 rows of a split left under the cap.
    """
    rows = {split: load_tofu(tofu_file_of(split, forget_split), data_dir) for split in ATTACK_SPLITS}
    indices: dict[str, tuple[int, ...]] = {}
    for split in ATTACK_SPLITS:
        n = len(rows[split])
        cap = n if options.max_items is None else min(n, options.max_items)
        chosen = list(range(cap))
        if split == "forget" and forget_rows is not None:
            outside = [i for i in forget_rows if not 0 <= i < n]
            if outside:
                raise ValueError(
                    f"Forget rows {outside[:10]} are not rows of {tofu_file_of(split, forget_split)} ({n})."
                )
            chosen = sorted(i for i in set(forget_rows) if i < cap)
        # Forget quality's KS test compares two distributions of per-item values; the evaluator's per-item records also
        # need more than one item (torchmetrics squeezes one-element states).
        if len(chosen) < 2:
            raise ValueError(
                f"The attack would evaluate {len(chosen)} row(s) of split {split!r} (max_items={options.max_items}); "
                "it needs at least 2 per split: raise max_items."
            )
        indices[split] = tuple(chosen)
    return EvalPlan(forget_split, options, rows, indices)


@dataclass(frozen=True)
class AttackMetrics:
    """The numbers an attack reports for one model.

    Attributes:
        forget_probability: mean answer probability on the evaluated forget rows.
        forget_rouge_l_recall: mean ROUGE-L recall of the greedy answers on those rows.
        forget_truth_ratio: TOFU's forget truth ratio, mean ``min(R, 1/R)``.
        forget_quality: KS-test p-value of the per-item truth ratios against the retain model's on the same rows;
            None without a retain reference.
        model_utility: harmonic mean of the nine utility components.
        num_forget_items: how many forget rows the numbers are over.
        utility: the nine components, keyed ``<split>/<metric>`` (``MODEL_UTILITY_COMPONENTS``).
    """

    forget_probability: float
    forget_rouge_l_recall: float | None
    forget_truth_ratio: float | None
    forget_quality: float | None
    model_utility: float | None
    num_forget_items: int
    utility: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> "AttackMetrics":
        """Pick the attack's numbers from a flat TOFU summary (``summarize_records``)."""
        return cls(
            forget_probability=summary["forget/probability"],
            forget_rouge_l_recall=summary.get("forget/rouge_l_recall"),
            forget_truth_ratio=summary.get("forget/truth_ratio"),
            forget_quality=summary.get("forget_quality"),
            model_utility=summary.get("model_utility"),
            num_forget_items=int(summary["num_items/forget"]),
            utility={k: summary[k] for k in MODEL_UTILITY_COMPONENTS if summary.get(k) is not None},
        )

    def forget_metric(self, name: str) -> float | None:
        """One of :data:`FORGET_METRICS` by name."""
        if name not in FORGET_METRICS:
            raise ValueError(f"Unknown forget metric {name!r}; choose from {list(FORGET_METRICS)}.")
        return getattr(self, f"forget_{name}")


def recovery_ratio(
    attacked: float | None, unlearned: float | None, target: float | None, min_gap: float
) -> float | None:
    """How much of what unlearning removed an attack brings back: ``(attacked − unlearned) / (target − unlearned)``.

    0 means the attack changed nothing, 1 that the metric is back at the target model's value (it can exceed 1 or be
    negative). Undefined, hence None, when unlearning moved the metric by less than ``min_gap`` or not at all (the
    ratio would divide noise by noise) or a value is missing or not finite.

    Raises:
        ValueError: a negative ``min_gap``.

    Example:
        >>> recovery_ratio(attacked=0.5, unlearned=0.25, target=0.75, min_gap=1e-3)
        0.5
        >>> recovery_ratio(attacked=0.5, unlearned=0.2, target=0.2005, min_gap=1e-3) is None
        True
    """
    if not min_gap >= 0:
        raise ValueError(f"min_gap must be ≥ 0, got {min_gap}.")
    values = (attacked, unlearned, target)
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    gap = target - unlearned
    if gap == 0 or abs(gap) < min_gap:
        return None
    return (attacked - unlearned) / gap


def recoveries(
    attacked: AttackMetrics, unlearned: AttackMetrics, target: AttackMetrics, min_gap: float
) -> dict[str, float | None]:
    """:func:`recovery_ratio` of every forget metric (:data:`FORGET_METRICS`), keyed by metric."""
    return {
        name: recovery_ratio(
            attacked.forget_metric(name), unlearned.forget_metric(name), target.forget_metric(name), min_gap
        )
        for name in FORGET_METRICS
    }


def check_model_source(value: str, flag: str) -> None:
    """Fail at once, naming ``flag``, when a model argument is neither a model directory nor a resolvable Hub id.

    Attacks take minutes to hours: a typo in the last model loaded must not surface after the first ones were
    evaluated.

    Raises:
        FileNotFoundError: the path does not exist or holds no ``config.json``, or the Hub id cannot be resolved.
    """
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{flag}: {value!r} is not a model directory (no config.json in it); pass the folder written by "
                "save_pretrained (config.json, weights and tokenizer files)."
            )
        return
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped folder.
    if path.is_absolute() or value.startswith((".", "~")) or value.count("/") > 1:
        raise FileNotFoundError(
            f"{flag}: model directory {value!r} does not exist; pass the folder written by save_pretrained "
            "(config.json, weights, tokenizer) or a Hugging Face Hub id."
        )
    try:
        load_tokenizer(value)  # a Hub id resolves from the cache (or the Hub when online), in seconds
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{flag}: {err}") from err


def check_eval_source(value: str, flag: str) -> None:
    """Fail at once, naming ``flag``, when no evaluation file is at ``value``.

    Raises:
        FileNotFoundError: neither the file nor a folder holding ``eval_items.json`` / ``eval_log_aggregated.json``.
    """
    try:
        resolve_eval_file(value)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag}: {err}") from err


def fresh_output_dir(path: str | Path) -> Path:
    """Create ``path`` for an attack's results; an existing folder must be empty (results are never overwritten).

    Raises:
        FileExistsError: ``path`` is a file or a folder that holds anything.
    """
    out = Path(path).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"Output folder {str(out)!r} already exists and is not empty; an attack never overwrites results: pass a "
            "new --output-dir (or remove the old one)."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write a report as JSON; NaN and infinities become null, as in the evaluation files."""
    path.write_text(json.dumps(_json_safe(dict(data)), indent=2) + "\n", encoding="utf-8")


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else as ``torch.device`` reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    name_or_path: str, dtype: DType, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model (on ``device``) and its tokenizer, through ``lit_unlearn.models``."""
    model = load_causal_lm(name_or_path, dtype=dtype).to(device)
    return model, load_tokenizer(name_or_path)


@dataclass(frozen=True)
class Evaluated:
    """One model's evaluation: its metrics, its per-item records and where they were written."""

    metrics: AttackMetrics
    records: dict[str, list[dict[str, Any]]]
    path: Path | None


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plan: EvalPlan,
    reference: Records | None,
    out_dir: Path | None,
    metadata: Mapping[str, Any],
    log: Callable[[str], None] | None = None,
    self_reference: bool = False,
) -> Evaluated:
    """Evaluate ``model`` on the plan's rows and score forget quality against ``reference``.

    Args:
        model: the model, on its device.
        tokenizer: its tokenizer.
        plan: the rows and settings (the same for every model of the attack).
        reference: the retain model's records on the same rows (``None``: forget quality is None).
        out_dir: where ``eval_items.json``, ``summary.json`` and ``summary.md`` go (None: nowhere).
        metadata: stored with the per-item file (what was evaluated and how).
        log: progress lines.
        self_reference: score forget quality against the model's own records (the retain model: 1 by definition).

    Returns:
        The metrics, the per-item records and the folder written.
    """
    settings = EvalSettings(max_new_tokens=plan.options.max_new_tokens, write_outputs=False)
    result = evaluate(
        model, tokenizer, plan.forget_split, settings=settings, dataloaders=plan.loaders(tokenizer), progress=False
    )
    records = {split: [dict(r) for r in rows] for split, rows in result["records"].items()}
    summary = summarize_records(records, records if self_reference else reference)
    if out_dir is not None:
        meta = {
            "forget_split": plan.forget_split,
            "rows": {split: list(indices) for split, indices in plan.indices.items()},
            "settings": {"max_new_tokens": plan.options.max_new_tokens, "max_length": plan.options.max_length},
            **metadata,
        }
        write_outputs(out_dir, records, summary, meta)
    if log is not None:
        # The label names the evaluated variant (e.g. Q(target), a quantised copy of `model`, which is its source).
        model = metadata.get("model", "model")
        name = f"{metadata['label']} ({model})" if metadata.get("label") else model
        log(f"evaluated {name}: forget probability {summary['forget/probability']:.4f}")
    return Evaluated(AttackMetrics.from_summary(summary), records, out_dir)


def stored_evaluation(path: str, plan: EvalPlan, reference: Records | None, self_reference: bool = False) -> Evaluated:
    """A finished evaluation (``eval_items.json`` or an original TOFU log) cut to the plan's rows and re-scored
    against ``reference`` (or, with ``self_reference``, against itself).

    Raises:
        FileNotFoundError: no evaluation at ``path``.
        ValueError: the evaluation lacks rows of the plan or is of another forget split.
    """
    budget = stored_generation_budget(path)
    if budget is not None and budget != plan.options.max_new_tokens:
        raise ValueError(
            f"{path} was generated with max_new_tokens={budget}, the attack evaluates with "
            f"{plan.options.max_new_tokens}: ROUGE-L would not compare. Pass --max-new-tokens {budget} or the model "
            "directory instead."
        )
    records = plan.restrict(load_eval(path)[0], path)
    summary = summarize_records(records, records if self_reference else reference)
    return Evaluated(AttackMetrics.from_summary(summary), records, None)


def stored_generation_budget(path: str | Path) -> int | None:
    """``max_new_tokens`` recorded in this project's evaluation file, None when it records none (original TOFU logs).

    Raises:
        FileNotFoundError: no evaluation at ``path``.
    """
    file = resolve_eval_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # load_eval reports the broken file with its line
    metadata = data.get("metadata") if isinstance(data, Mapping) else None
    settings = metadata.get("settings") if isinstance(metadata, Mapping) else None
    budget = settings.get("max_new_tokens") if isinstance(settings, Mapping) else None
    return int(budget) if isinstance(budget, int) else None
