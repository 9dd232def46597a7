"""The relearning attack: do a few fine-tuning steps on part of the forget set bring the rest back?

Hu et al., "Jogging the Memory of Unlearned LLMs Through Targeted Relearning Attacks" (arXiv 2406.13356): an attacker
fine-tunes the unlearned model on a small subset of the forget set (or loosely related public data) that does not
itself reveal the evaluated answers. Protocol as implemented here (docs/attacks.md):

1. each forget author's QA pairs are split 50/50, with ``seed``, into a relearn half R and an evaluation half E
   (:func:`split_forget_set`; the split is recorded in the report);
2. **attack**: fine-tune the unlearned model on R; **retain control**: fine-tune it on as many retain rows, drawn
   from the retain split minus the rows the utility evaluation uses (:func:`retain_control_rows`); **retain
   baseline**: fine-tune the retain model, which never saw the forget authors, on R (what R alone teaches);
3. fine-tuning is answer-token NLL (as ``Finetune``), AdamW at a constant learning rate, seeded shuffles and dropout,
   one run per arm evaluated when it reaches each budget (the schedule is constant, so the model after 30 steps of
   a 0/15/30 run is the model of a plain 30-step run);
4. every model is evaluated on E only (probability, ROUGE-L recall, truth ratio, forget quality against the retain
   model on E) plus model utility; the recovery ratio ``(attacked − unlearned) / (target − unlearned)`` is reported
   per budget and forget metric.
"""

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn import losses
from lit_unlearn.attacks.common import (
    FORGET_METRICS,
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
    stored_evaluation,
    write_json,
)
from lit_unlearn.data.datasets import QACollator, QADataset
from lit_unlearn.data.evaluation import pad_token_id_of
from lit_unlearn.data.loaders import seeded_loader
from lit_unlearn.data.subsets import FORGET_AUTHORS, RETAIN_OF_FORGET, forget_authors
from lit_unlearn.data.tofu import ROWS_PER_AUTHOR, load_tofu
from lit_unlearn.eval.items import Records
from lit_unlearn.eval.runner import move_to_device
from lit_unlearn.models import DType
from lit_unlearn.modules.causal_lm import AdamWSettings
from lit_unlearn.report.numbers import fmt_number

REPORT_JSON = "relearn.json"
REPORT_MD = "relearn.md"
UTILITY_RETAIN_FILE = "retain_perturbed"
"""The retain rows model utility is measured on; the retain control never trains on them."""


# ---------------------------------------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class AuthorHalves:
    """One forget author's rows (TOFU row indices of the forget split) in the relearn and the evaluation half."""

    author: int
    relearn_rows: tuple[int, ...]
    eval_rows: tuple[int, ...]


@dataclass(frozen=True)
class ForgetHalves:
    """The seeded 50/50 split of a forget set, per author.

    Attributes:
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        seed: the seed that drew it.
        authors: per forget author (index 0..199 in ``full`` order), its two halves.
    """

    forget_split: str
    seed: int
    authors: tuple[AuthorHalves, ...]

    @property
    def relearn_rows(self) -> tuple[int, ...]:
        """Every relearn row, increasing (TOFU row indices of ``forget_split``)."""
        return tuple(sorted(i for a in self.authors for i in a.relearn_rows))

    @property
    def eval_rows(self) -> tuple[int, ...]:
        """Every evaluation row, increasing."""
        return tuple(sorted(i for a in self.authors for i in a.eval_rows))


def split_forget_set(forget_split: str, seed: int = 0) -> ForgetHalves:
    """Split every forget author's rows 50/50 into a relearn and an evaluation half, with ``seed``.

    Row ``i`` of ``forgetXX`` belongs to the ``i // 20``-th forget author (TOFU lists 20 rows per author, in author
    order). One generator seeded with ``seed`` draws a permutation of each author's rows, in author order; the first
    half (rounded down) is the relearn half.

    Raises:
        ValueError: an unknown forget split.
    """
    authors = forget_authors(forget_split)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k, author in enumerate(authors):
        rows = torch.arange(k * ROWS_PER_AUTHOR, (k + 1) * ROWS_PER_AUTHOR)
        order = rows[torch.randperm(ROWS_PER_AUTHOR, generator=generator)].tolist()
        half = ROWS_PER_AUTHOR // 2
        out.append(AuthorHalves(author, tuple(sorted(order[:half])), tuple(sorted(order[half:]))))
    return ForgetHalves(forget_split, seed, tuple(out))


def retain_control_rows(forget_split: str, count: int, seed: int = 0, data_dir: str | None = None) -> tuple[int, ...]:
    """``count`` rows of the retain split of ``forget_split`` for the retain control, drawn with ``seed``.

    The pool is the retain split (``retain90`` for ``forget10`` ...) minus every row whose question the utility
    evaluation asks (``retain_perturbed``): fine-tuning on evaluated rows would inflate model utility.

    Returns:
        TOFU row indices of the retain split, increasing.

    Raises:
        ValueError: the pool holds fewer than ``count`` rows.
    """
    split = RETAIN_OF_FORGET[forget_split]
    evaluated = {row["question"] for row in load_tofu(UTILITY_RETAIN_FILE, data_dir)}
    pool = [i for i, row in enumerate(load_tofu(split, data_dir)) if row["question"] not in evaluated]
    if len(pool) < count:
        raise ValueError(
            f"The retain control needs {count} rows of {split} outside {UTILITY_RETAIN_FILE}, but only {len(pool)} "
            "exist; use a smaller forget split."
        )
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
    return tuple(sorted(pool[i] for i in pick.tolist()))


# ------------------------------------------------------------------------------------------------------- fine-tuning
@dataclass(frozen=True)
class RelearnSettings:
    """How the attacker fine-tunes (the same for the attack and both controls).

    Defaults are for full-scale models (the spec's protocol: AdamW lr 1e-5, weight decay 0.01, batch 8, budgets of
    0/15/30/60 steps; gradient clipping at 1.0 as Hugging Face's Trainer, which OpenUnlearning trains with). The
    embedded tiny model was fine-tuned at lr 3e-3 and unlearned at 3e-4: at 1e-5 a few dozen steps barely move it,
    so attack it with ``lr=3e-4``.

    Args:
        budgets: Optimiser steps after which the attacked models are evaluated; 0 (the model before any step) is
            always included. Sorted on construction.
        lr: Constant learning rate of AdamW (no warm-up, no decay).
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's betas.
        batch_size: Rows per optimiser step (epochs of the relearn half run back to back, reshuffled each time).
        max_grad_norm: Clip the gradient norm to this before each step; ``None``: no clipping.
        seed: Seed of the 50/50 split, the retain control rows, the training shuffle and dropout.

    Raises:
        ValueError: a value out of range, named in the message.
    """

    budgets: tuple[int, ...] = (0, 15, 30, 60)
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 8
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        budgets = list(self.budgets)
        bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or b < 0]
        if bad or len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets must be distinct integers ≥ 0 (optimiser steps), got {budgets}.")
        steps = tuple(sorted({0, *budgets}))
        if len(steps) < 2:
            raise ValueError(f"budgets {budgets} hold no positive step count; give e.g. 0 15 30 60.")
        object.__setattr__(self, "budgets", steps)
        object.__setattr__(self, "betas", tuple(self.betas))
        AdamWSettings(lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)  # raises on a value out of range
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}.")

    @property
    def adamw(self) -> AdamWSettings:
        """The optimiser settings."""
        return AdamWSettings(lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)


@dataclass(frozen=True)
class BudgetState:
    """A fine-tuning run when it reaches a budget.

    Attributes:
        steps: optimiser steps taken.
        train_loss: mean training loss (answer-token NLL) over the steps since the previous budget.
        examples_fed: rows fed to the optimiser so far (with repetitions across epochs).
        rows_fed: the distinct rows fed so far (the ``row_ids`` given to :func:`relearn_finetune`), increasing.
    """

    steps: int
    train_loss: float
    examples_fed: int
    rows_fed: tuple[int, ...]


class _TrackingCollator:
    """Collates dataset positions into a ``QACollator`` batch and keeps the positions, so every fed row is known."""

    def __init__(self, examples: QADataset, pad_token_id: int) -> None:
        self.examples = examples
        self.collate = QACollator(pad_token_id)

    def __call__(self, positions: Sequence[int]) -> tuple[list[int], dict[str, Tensor]]:
        return list(positions), self.collate([self.examples[p] for p in positions])


def _endless(loader: DataLoader) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Epoch after epoch; the seeded sampler draws a new permutation each epoch."""
    while True:
        yield from loader


def relearn_finetune(
    model: PreTrainedModel,
    examples: QADataset,
    row_ids: Sequence[int],
    settings: RelearnSettings,
    pad_token_id: int,
    on_budget: Callable[[BudgetState], None] | None = None,
) -> list[BudgetState]:
    """Fine-tune ``model`` in place on ``examples`` up to each positive budget, calling ``on_budget`` at each.

    The loss is the token-mean NLL of the answer tokens (``losses.token_logps`` + ``losses.nll``, as ``Finetune``);
    AdamW runs at the constant ``settings.lr``. The shuffle depends only on ``settings.seed`` (a seeded sampler) and
    dropout draws from a generator forked and seeded with it, so the run is reproducible on a fixed device and
    thread count and leaves the caller's RNG untouched. ``on_budget`` may evaluate the model: ``evaluate`` restores
    train mode.

    Args:
        model: the model to fine-tune (its trainable parameters are optimised; it stays on its device).
        examples: the encoded rows.
        row_ids: a name for each example (its TOFU row index), recorded as fed.
        settings: budgets, optimiser, batch size, seed.
        pad_token_id: padding id of the collator.
        on_budget: called with the state when the run reaches each positive budget.

    Returns:
        The states at the positive budgets.

    Raises:
        ValueError: ``row_ids`` and ``examples`` differ in length, or no trainable parameter.
        FloatingPointError: a non-finite loss.
    """
    if len(row_ids) != len(examples):
        raise ValueError(f"relearn_finetune got {len(row_ids)} row ids for {len(examples)} examples.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameter.")
    adamw = settings.adamw
    optimizer = torch.optim.AdamW(params, lr=adamw.lr, betas=adamw.betas, weight_decay=adamw.weight_decay)
    loader = seeded_loader(
        range(len(examples)), settings.batch_size, _TrackingCollator(examples, pad_token_id), True, settings.seed
    )
    device = next(model.parameters()).device
    batches = _endless(loader)
    states: list[BudgetState] = []
    fed: list[int] = []
    step = 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        model.train()
        for budget in settings.budgets[1:]:
            window: list[float] = []
            while step < budget:
                positions, batch = next(batches)
                batch = move_to_device(batch, device)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logps, mask = losses.token_logps(logits, batch["labels"])  # (B, T-1) each
                loss = losses.nll(logps, mask)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"relearning: non-finite loss at step {step}; lower lr (now {adamw.lr:g}) or load the model in "
                        "float32."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                step += 1
                window.append(float(loss.detach()))
                fed.extend(row_ids[p] for p in positions)
            state = BudgetState(budget, sum(window) / len(window), len(fed), tuple(sorted(set(fed))))
            states.append(state)
            if on_budget is not None:
                on_budget(state)
    return states


# ------------------------------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class ArmPoint:
    """One arm at one budget.

    Attributes:
        steps: optimiser steps taken (0: the arm's starting model).
        metrics: the evaluation on the held-out half and the utility splits.
        recovery: per forget metric, ``(m − m(unlearned)) / (m(target) − m(unlearned))``; None where
            |target − unlearned| < ``min_gap``.
        train_loss: mean training loss since the previous budget (None at 0).
        eval_dir: the per-item evaluation files.
    """

    steps: int
    metrics: AttackMetrics
    recovery: dict[str, float | None]
    train_loss: float | None
    eval_dir: str | None


@dataclass(frozen=True)
class ArmResult:
    """One fine-tuning arm: a starting model fine-tuned on some rows, evaluated at every budget.

    Attributes:
        name: ``attack`` (unlearned model on the relearn half), ``retain_control`` (unlearned model on retain rows)
            or ``retain_baseline`` (retain model on the relearn half).
        start_model: the model it starts from (folder or Hub id).
        train_split: the TOFU file its rows come from.
        train_rows: the TOFU row indices of that file it is fine-tuned on.
        points: one per budget, 0 first.
        examples_fed: rows fed to the optimiser in all (with repetitions).
        rows_fed: the distinct rows fed, increasing (equal to ``train_rows`` once an epoch has run).
    """

    name: str
    start_model: str
    train_split: str
    train_rows: tuple[int, ...]
    points: tuple[ArmPoint, ...]
    examples_fed: int
    rows_fed: tuple[int, ...]


@dataclass(frozen=True)
class RelearnReport:
    """Everything the relearning attack measured, and how.

    Attributes:
        forget_split: the forget split attacked.
        seed: the seed of the split, the control rows, the shuffles and dropout.
        budgets: the optimiser-step budgets, 0 first.
        settings: the fine-tuning settings.
        evaluation: the evaluation settings, identical for every model.
        halves: the 50/50 split of the forget set (relearn and evaluation rows per author).
        control_split: the TOFU file of the retain control rows.
        control_rows: the retain control rows.
        models: the model folders and evaluation files used, by role.
        target: the target model on the held-out half.
        unlearned: the unlearned model on the held-out half (budget 0 of the attack and the retain control).
        retain: the retain model on the held-out half (budget 0 of the retain baseline; forget quality's reference).
        arms: the attack, the retain control and (with a retain model folder) the retain baseline.
        notes: what was not run, and why.
        min_gap: the smallest |target − unlearned| for which a recovery ratio is reported.
        dtype: the dtype the models were loaded in.
        device: where they ran.
        torch_threads: CPU threads torch used.
        seconds: wall time of the attack.
    """

    forget_split: str
    seed: int
    budgets: tuple[int, ...]
    settings: RelearnSettings
    evaluation: EvalOptions
    halves: ForgetHalves
    control_split: str
    control_rows: tuple[int, ...]
    models: dict[str, str]
    target: AttackMetrics
    unlearned: AttackMetrics
    retain: AttackMetrics
    arms: tuple[ArmResult, ...]
    notes: tuple[str, ...]
    min_gap: float
    dtype: str
    device: str
    torch_threads: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Every number as plain JSON types, with the split's flat row lists added."""
        out = asdict(self)
        out["halves"]["relearn_rows"] = list(self.halves.relearn_rows)
        out["halves"]["eval_rows"] = list(self.halves.eval_rows)
        return out

    def markdown(self) -> str:
        """A short report: the setting, then one table row per arm and budget."""
        s = self.settings
        n_rel, n_eval = len(self.halves.relearn_rows), len(self.halves.eval_rows)
        k = self.unlearned.num_forget_items  # fewer than the half under an evaluation item cap
        evaluated = f"the {n_eval} rows" if k == n_eval else f"{k} of the {n_eval} rows"
        lines = [
            f"# Relearning attack on {self.forget_split}",
            "",
            f"Seed {self.seed}; budgets {', '.join(map(str, self.budgets))} optimiser steps; AdamW lr {s.lr:g} "
            f"(constant), weight decay {s.weight_decay:g}, batch {s.batch_size}, gradient clip {s.max_grad_norm}. "
            f"Relearn half: {n_rel} rows; every model is evaluated on {evaluated} of the other half "
            "(forget quality against the retain model on the same rows) and on the utility splits. Retain control: "
            f"{len(self.control_rows)} rows of {self.control_split}.",
            "",
            "| arm | steps | forget prob. | forget ROUGE-L | forget truth ratio | forget quality | model utility | "
            + " | ".join(f"recovery {m}" for m in FORGET_METRICS)
            + " |",
            "|---" * (7 + len(FORGET_METRICS)) + "|",
        ]
        rows: list[tuple[str, int | str, AttackMetrics, Mapping[str, float | None] | None]] = [
            ("target", "–", self.target, None),
            ("retain", "–", self.retain, None),
        ]
        rows += [(arm.name, p.steps, p.metrics, p.recovery) for arm in self.arms for p in arm.points]
        for name, steps, m, recovery in rows:
            cells = [m.forget_probability, m.forget_rouge_l_recall, m.forget_truth_ratio, m.forget_quality]
            cells.append(m.model_utility)
            cells += [recovery.get(k) if recovery is not None else None for k in FORGET_METRICS]
            lines.append(f"| {name} | {steps} | " + " | ".join(fmt_number(c) for c in cells) + " |")
        lines += [
            "",
            "Recovery = (m − m(unlearned)) / (m(target) − m(unlearned)) on the held-out half: 0 nothing came back, 1 "
            f"back at the target's value; – where |target − unlearned| < {self.min_gap:g}.",
        ]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ attack
def _encode(
    rows: Sequence[Mapping[str, Any]],
    ids: Sequence[int],
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    plan: EvalPlan,
) -> QADataset:
    """The training rows encoded like the evaluation's (same prompt format and truncation)."""
    o = plan.options
    return QADataset(
        [rows[i] for i in ids], tokenizer, o.prompt_format, o.max_length, row_names=[f"{split}[{i}]" for i in ids]
    )


def relearn_attack(
    model: str,
    output_dir: str | Path,
    target: str | None = None,
    target_eval: str | None = None,
    retain: str | None = None,
    retain_eval: str | None = None,
    forget_split: str = "forget10",
    settings: RelearnSettings | None = None,
    evaluation: EvalOptions | None = None,
    data_dir: str | None = None,
    dtype: DType = "auto",
    device: str = "auto",
    min_gap: float = 1e-3,
    log: Callable[[str], None] | None = None,
) -> RelearnReport:
    """Run the relearning attack and its two controls, evaluate every model on the held-out half, write the report.

    Writes into ``output_dir`` (new or empty): ``relearn.json`` (every number, the split, the rows), ``relearn.md``
    and ``evals/<model>/`` (per-item evaluation files of every evaluated model). One model is in memory at a time.

    Args:
        model: the unlearned model (folder or Hub id).
        output_dir: a new or empty folder.
        target: the model before unlearning; or give ``target_eval``.
        target_eval: its evaluation (``eval_items.json``) on ``forget_split`` with the same generation budget,
            covering the held-out rows and the utility rows; cut to those rows here.
        retain: the retain model; forget quality's reference and the start of the retain baseline. Or give
            ``retain_eval`` (then the retain baseline is not run, and the report says so).
        retain_eval: the retain model's evaluation on ``forget_split``.
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        settings: fine-tuning settings (default ``RelearnSettings()``).
        evaluation: evaluation settings (default ``EvalOptions()``); training encodes rows with the same prompt format
            and ``max_length``.
        data_dir: TOFU folder (else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub).
        dtype: dtype the models are loaded and fine-tuned in.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` ...
        min_gap: smallest |target − unlearned| for which a recovery ratio is reported.
        log: progress lines.

    Returns:
        The report (also written to ``output_dir``).

    Raises:
        ValueError: both or neither of ``target``/``target_eval`` (``retain``/``retain_eval``) given; an unknown
            forget split; data that does not match TOFU's layout.
        FileNotFoundError: a model or evaluation that cannot be found (checked before any work).
        FileExistsError: ``output_dir`` holds files.
    """
    start = time.perf_counter()
    settings = settings or RelearnSettings()
    evaluation = evaluation or EvalOptions()
    if (target is None) == (target_eval is None):
        raise ValueError("Give the target model as exactly one of --target DIR or --target-eval EVAL.")
    if (retain is None) == (retain_eval is None):
        raise ValueError("Give the retain model as exactly one of --retain DIR or --retain-eval EVAL.")
    if forget_split not in FORGET_AUTHORS:
        raise ValueError(f"Unknown forget split {forget_split!r}; choose one of {list(FORGET_AUTHORS)}.")
    check_model_source(model, "--model")
    for value, flag in ((target, "--target"), (retain, "--retain")):
        if value is not None:
            check_model_source(value, flag)
    for value, flag in ((target_eval, "--target-eval"), (retain_eval, "--retain-eval")):
        if value is not None:
            check_eval_source(value, flag)

    halves = split_forget_set(forget_split, settings.seed)
    plan = eval_plan(forget_split, evaluation, data_dir, halves.eval_rows)
    forget_rows = load_tofu(forget_split, data_dir)
    expected = FORGET_AUTHORS[forget_split] * ROWS_PER_AUTHOR
    if len(forget_rows) != expected or len(plan.rows["forget"]) != expected:
        raise ValueError(
            f"{forget_split} should hold {expected} rows ({FORGET_AUTHORS[forget_split]} authors × {ROWS_PER_AUTHOR}); "
            f"got {len(forget_rows)} and {len(plan.rows['forget'])} in its perturbed file. Use matching TOFU files."
        )
    for i, (row, perturbed) in enumerate(zip(forget_rows, plan.rows["forget"], strict=True)):
        if row["question"] != perturbed["question"]:
            raise ValueError(
                f"Row {i} of {forget_split} and of {forget_split}_perturbed ask different questions; the relearn and "
                "evaluation halves would not be disjoint. Use matching TOFU files."
            )
    control_split = RETAIN_OF_FORGET[forget_split]
    control_ids = retain_control_rows(forget_split, len(halves.relearn_rows), settings.seed, data_dir)
    control_rows = load_tofu(control_split, data_dir)
    out = fresh_output_dir(output_dir)
    torch_device = resolve_device(device)
    evals = out / "evals"

    def say(message: str) -> None:
        if log is not None:
            log(message)

    def run_arm(
        name: str, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: QADataset, ids: Sequence[int]
    ) -> list[tuple[BudgetState, Evaluated]]:
        """Fine-tune ``lm`` on ``examples``, evaluating it at every positive budget."""
        done: list[tuple[BudgetState, Evaluated]] = []

        def at_budget(state: BudgetState) -> None:
            say(f"{name}: {state.steps} steps (train loss {state.train_loss:.4f})")
            metadata = {"model": f"{name}@{state.steps}", "arm": name, "steps": state.steps}
            folder = evals / f"{name}_{state.steps}"
            done.append((state, evaluate_model(lm, tokenizer, plan, reference, folder, metadata)))

        relearn_finetune(lm, examples, ids, settings, pad_token_id_of(tokenizer), at_budget)
        return done

    notes: list[str] = []
    trained: dict[str, list[tuple[BudgetState, Evaluated]]] = {}
    # 1. The retain model first: its records on the held-out half are every other model's forget-quality reference
    # (against itself its forget quality is 1 by definition).
    if retain is not None:
        lm, tokenizer = load_model(retain, dtype, torch_device)
        say(f"evaluating the retain model {retain} on the held-out half")
        base = evaluate_model(
            lm, tokenizer, plan, None, evals / "retain", {"model": retain, "role": "retain"}, self_reference=True
        )
        reference: Records = base.records
        say("retain baseline: fine-tuning the retain model on the relearn half")
        relearn_set = _encode(forget_rows, halves.relearn_rows, forget_split, tokenizer, plan)
        trained["retain_baseline"] = run_arm("retain_baseline", lm, tokenizer, relearn_set, halves.relearn_rows)
        del lm
    else:
        base = stored_evaluation(retain_eval, plan, None, self_reference=True)
        reference = base.records
        notes.append(
            "retain baseline not run: the retain model was given as an evaluation (--retain-eval), not a folder."
        )
    retain_metrics = base.metrics

    # 2. The target model (or its stored evaluation, cut to the same rows).
    if target is not None:
        lm, tokenizer = load_model(target, dtype, torch_device)
        say(f"evaluating the target model {target}")
        target_metrics = evaluate_model(
            lm, tokenizer, plan, reference, evals / "target", {"model": target, "role": "target"}
        ).metrics
        del lm
    else:
        target_metrics = stored_evaluation(target_eval, plan, reference).metrics

    # 3. The unlearned model, then the attack on it; 4. a fresh copy for the retain control.
    lm, tokenizer = load_model(model, dtype, torch_device)
    say(f"evaluating the unlearned model {model}")
    unlearned_metrics = evaluate_model(
        lm, tokenizer, plan, reference, evals / "unlearned", {"model": model, "role": "unlearned"}
    ).metrics
    say("attack: fine-tuning the unlearned model on the relearn half")
    relearn_set = _encode(forget_rows, halves.relearn_rows, forget_split, tokenizer, plan)
    trained["attack"] = run_arm("attack", lm, tokenizer, relearn_set, halves.relearn_rows)
    del lm
    lm, tokenizer = load_model(model, dtype, torch_device)
    say(f"retain control: fine-tuning the unlearned model on {len(control_ids)} rows of {control_split}")
    control_set = _encode(control_rows, control_ids, control_split, tokenizer, plan)
    trained["retain_control"] = run_arm("retain_control", lm, tokenizer, control_set, control_ids)
    del lm

    def point(steps: int, metrics: AttackMetrics, state: BudgetState | None, eval_dir: Path | None) -> ArmPoint:
        recovery = recoveries(metrics, unlearned_metrics, target_metrics, min_gap)
        loss = state.train_loss if state is not None else None
        return ArmPoint(steps, metrics, recovery, loss, str(eval_dir) if eval_dir is not None else None)

    starts = {
        "attack": (model, forget_split, halves.relearn_rows, unlearned_metrics, evals / "unlearned"),
        "retain_control": (model, control_split, control_ids, unlearned_metrics, evals / "unlearned"),
        "retain_baseline": (retain, forget_split, halves.relearn_rows, retain_metrics, evals / "retain"),
    }
    arms = []
    for name in ("attack", "retain_control", "retain_baseline"):
        if name not in trained:
            continue
        source, split, ids, start_metrics, start_dir = starts[name]
        done = trained[name]
        points = [point(0, start_metrics, None, start_dir)]
        points += [point(state.steps, ev.metrics, state, ev.path) for state, ev in done]
        last = done[-1][0]
        arms.append(ArmResult(name, source, split, tuple(ids), tuple(points), last.examples_fed, last.rows_fed))

    models = {"unlearned": model}
    for role, value in (
        ("target", target),
        ("target_eval", target_eval),
        ("retain", retain),
        ("retain_eval", retain_eval),
    ):
        if value is not None:
            models[role] = value
    report = RelearnReport(
        forget_split=forget_split,
        seed=settings.seed,
        budgets=settings.budgets,
        settings=settings,
        evaluation=evaluation,
        halves=halves,
        control_split=control_split,
        control_rows=control_ids,
        models=models,
        target=target_metrics,
        unlearned=unlearned_metrics,
        retain=retain_metrics,
        arms=tuple(arms),
        notes=tuple(notes),
        min_gap=min_gap,
        dtype=dtype,
        device=str(torch_device),
        torch_threads=torch.get_num_threads(),
        seconds=time.perf_counter() - start,
    )
    write_json(out / REPORT_JSON, report.to_json())
    (out / REPORT_MD).write_text(report.markdown(), encoding="utf-8")
    return report
