"""Fine-tuned models and their TOFU evaluations, built once and reused (the quickstart's and the benchmarks' cache).

A model is built from a fine-tuning config TEXT: the text is written into the cache and that file is trained from,
so the stamp written after the build always describes what was built. The stamp (``recipe.sha256``) covers the
config, the command-line overrides, the TOFU files, the torch version and the pinned thread count, and is written
last: an interrupted build is never taken for a finished one. Evaluations are stamped the same way against the model's
stamp and the evaluation settings. Every build and evaluation runs on one pinned torch thread, so the same job on the
same kind of CPU gives the same bytes, whatever the machine's core count or the environment's thread settings.
"""

import hashlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lit_unlearn.data import resolve_tofu_file
from lit_unlearn.eval.io import FORMAT_VERSION
from lit_unlearn.eval.runner import evaluate
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.models import load_causal_lm, load_tokenizer
from lit_unlearn.progress import quiet_libraries, say
from lit_unlearn.reproducibility import pin_threads

THREADS = 1
"""Torch threads per build or evaluation: one is both the fastest and the reproducible setting for tiny models."""

RECIPE_VERSION = 2
"""Bump when the build or evaluation procedure changes, so that cached models and evaluations are redone."""


def digest(*parts: str) -> str:
    """SHA-256 of the parts, one per line."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def tofu_fingerprint(data_dir: str | Path | None, splits: Sequence[str]) -> str:
    """SHA-256 over the named TOFU files (name and bytes), so a changed data file invalidates the cache."""
    fingerprint = hashlib.sha256()
    for split in splits:
        fingerprint.update(split.encode() + resolve_tofu_file(split, data_dir).read_bytes())
    return fingerprint.hexdigest()


@dataclass(frozen=True)
class ModelJob:
    """One model to build (or reuse) and the forget splits to evaluate it on; picklable, to run in another process.

    Args:
        name: The model's folder in the cache and its label in progress lines (``"target"``, ``"retain01"``).
        config: Text of its fine-tuning config.
        cache_dir: The cache folder.
        data_dir: The TOFU folder.
        data_fingerprint: :func:`tofu_fingerprint` of the files the config reads.
        overrides: Extra LightningCLI arguments (e.g. ``"--data.exclude_split=forget05"``), part of the stamp.
        evaluations: Forget splits to evaluate the model on, each into ``<model>/eval_<split>``.
        max_new_tokens: Greedy-generation budget of the evaluations.
        max_items: Evaluation item cap (``None``: every row).
        rebuild: Ignore the cache.
    """

    name: str
    config: str
    cache_dir: str
    data_dir: str
    data_fingerprint: str
    overrides: tuple[str, ...] = ()
    evaluations: tuple[str, ...] = ("forget01",)
    max_new_tokens: int = 200
    max_items: int | None = None
    rebuild: bool = False


@dataclass(frozen=True)
class PreparedModel:
    """A ready model: its folder, its evaluation folders by forget split, and what preparing them cost (0 if cached)."""

    name: str
    model_dir: str
    eval_dirs: dict[str, str] = field(default_factory=dict)
    fit_seconds: float = 0.0
    eval_seconds: float = 0.0


def _recipe_key(job: ModelJob) -> str:
    return digest(
        job.config, *job.overrides, job.data_fingerprint, torch.__version__, str(THREADS), str(RECIPE_VERSION)
    )


def _model_is_cached(job: ModelJob) -> bool:
    out_dir = Path(job.cache_dir) / job.name
    stamp = out_dir / "recipe.sha256"
    return (
        not job.rebuild
        and stamp.is_file()
        and stamp.read_text() == _recipe_key(job)
        and (out_dir / "config.json").is_file()
    )


def _eval_key(job: ModelJob, model_dir: Path, forget_split: str) -> str:
    return digest(
        (model_dir / "recipe.sha256").read_text(),
        forget_split,
        str(job.max_new_tokens),
        str(job.max_items),
        str(FORMAT_VERSION),
        str(RECIPE_VERSION),
    )


def _eval_is_cached(job: ModelJob, model_dir: Path, forget_split: str) -> bool:
    stamp = model_dir / f"eval_{forget_split}" / "eval.sha256"
    return not job.rebuild and stamp.is_file() and stamp.read_text() == _eval_key(job, model_dir, forget_split)


def ensure_finetuned(job: ModelJob, run: Callable[[list[str]], Any] = run_lightning_cli) -> tuple[Path, float]:
    """Fine-tune the model unless the cache holds one from the same recipe.

    Returns:
        The model folder and the seconds spent (0.0 when reused).
    """
    cache = Path(job.cache_dir)
    out_dir, stamp = cache / job.name, cache / job.name / "recipe.sha256"
    key = _recipe_key(job)
    if _model_is_cached(job):
        say("reusing the cached model (same recipe, data, torch and threads)", job.name)
        return out_dir, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    recipe = cache / f"{job.name}_recipe.yaml"
    recipe.write_text(job.config, encoding="utf-8")
    stamp.unlink(missing_ok=True)
    say("fine-tuning from scratch (one line per epoch)", job.name)
    start = time.perf_counter()
    run(
        [
            "fit",
            "--config",
            str(recipe),
            *job.overrides,
            f"--model.model_name_or_path={cache / f'init_{job.name}'}",
            f"--model.output_dir={out_dir}",
            "--model.overwrite_output_dir=true",  # a stale cache entry is rebuilt in place
            f"--data.data_dir={job.data_dir}",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={cache / 'runs'}",
            "--trainer.callbacks+=lit_unlearn.progress.EpochProgress",
            f"--trainer.callbacks.prefix={job.name}",
        ]
    )
    stamp.write_text(key)
    seconds = time.perf_counter() - start
    say(f"model ready in {seconds:.0f} s", job.name)
    return out_dir, seconds


def ensure_evaluated(job: ModelJob, model_dir: Path, forget_split: str) -> tuple[Path, float]:
    """Evaluate the model on ``forget_split``'s TOFU protocol unless a cached evaluation has the same model and
    settings.

    Returns:
        The evaluation folder and the seconds spent (0.0 when reused).
    """
    eval_dir = model_dir / f"eval_{forget_split}"
    stamp = eval_dir / "eval.sha256"
    key = _eval_key(job, model_dir, forget_split)
    if _eval_is_cached(job, model_dir, forget_split):
        say(f"reusing its cached {forget_split} evaluation", job.name)
        return eval_dir, 0.0
    stamp.unlink(missing_ok=True)
    say(f"evaluating on TOFU {forget_split} (teacher-forced passes and greedy answers)", job.name)
    start = time.perf_counter()
    settings = EvalSettings(max_new_tokens=job.max_new_tokens, max_items=job.max_items, output_dir=str(eval_dir))
    evaluate(
        load_causal_lm(str(model_dir)),
        load_tokenizer(str(model_dir)),
        forget_split,
        data_dir=job.data_dir,
        settings=settings,
        batch_size=32,
        progress=False,
        log=lambda line: say(line, job.name),
    )
    stamp.write_text(key)
    return eval_dir, time.perf_counter() - start


def prepare_model(job: ModelJob) -> PreparedModel:
    """Build and evaluate one model on a pinned thread (the body of each parallel process)."""
    pin_threads(THREADS)
    quiet_libraries()
    model_dir, fit_seconds = ensure_finetuned(job)
    eval_dirs, eval_seconds = {}, 0.0
    for split in job.evaluations:
        eval_dir, seconds = ensure_evaluated(job, model_dir, split)
        eval_dirs[split] = str(eval_dir)
        eval_seconds += seconds
    return PreparedModel(job.name, str(model_dir), eval_dirs, fit_seconds, eval_seconds)


def prepare_models(jobs: Sequence[ModelJob], workers: int = 2) -> dict[str, PreparedModel]:
    """Run the jobs side by side, ``workers`` spawned processes at a time (spawn: never fork a process that already
    runs torch), one pinned thread each. Jobs whose model and evaluations are all cached are answered here, without
    a process: starting one costs seconds of imports, most of a cached run's start-up."""
    ready = [job for job in jobs if _model_is_cached(job)]
    ready = [j for j in ready if all(_eval_is_cached(j, Path(j.cache_dir) / j.name, s) for s in j.evaluations)]
    results = [prepare_model(job) for job in ready]
    todo = [job for job in jobs if job not in ready]
    if todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
            results += list(pool.map(prepare_model, todo))
    return {r.name: r for r in results}
