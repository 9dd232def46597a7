"""``lit-unlearn quickstart``: the whole G-effect pipeline on the embedded tiny TOFU model, in minutes on a CPU.

1. check every input (configs, TOFU files, output folder) before any work starts;
2. build, or reuse from the cache, the tiny target model (TOFU authors 0-4 and 20-24, the forget01 authors and
   world-knowledge QA) and the retain model (the same without the forget01 authors), and evaluate both on TOFU's
   forget01 protocol; the two builds run side by side, one process and one torch thread each;
3. unlearn the target (``configs/tofu_tiny/<method>.yaml``) under the ``GEffectCallback``, which measures the raw
   gradient's G-effect, the real update's and the realised risk change at every step;
4. evaluate the unlearned model and write ``report.md``, ``summary.json``, figures and TensorBoard logs.

Every torch computation runs on one pinned thread, so the same command on the same kind of CPU with the same torch
gives the same numbers, whatever the machine's core count or the user's ``OMP_NUM_THREADS``.
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from callbacks import GEffectCallback
from lit_unlearn.attacks import EvalOptions, QuantSpec, RelearnSettings
from lit_unlearn.attacks.suite import AttackSuite, SuiteResult, attack_suite
from lit_unlearn.config_hub import shipped_config, shipped_configs
from lit_unlearn.data import load_tofu, resolve_tofu_file
from lit_unlearn.data.tofu import TOFU_DIR_ENV
from lit_unlearn.eval.runner import evaluate
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.eval.summarize import summarize
from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.model_cache import THREADS, ModelJob, prepare_models, tofu_fingerprint
from lit_unlearn.models import load_causal_lm, load_tokenizer
from lit_unlearn.modules.finetune import TINY_CORPUS_SPLITS
from lit_unlearn.progress import quiet_libraries, say
from lit_unlearn.report import readings_of, write_report
from lit_unlearn.report.robustness import robustness_section
from lit_unlearn.reproducibility import environment, pin_threads

FORGET_SPLIT = "forget01"
DEFAULT_METHOD = "wga"
"""WGA + GD at lr 1e-3: on the embedded tiny recipe it reaches forget quality ≥ 0.05 with model utility ≥ 0.9 × the
target's (checked by the slow end-to-end test); any shipped tiny config works."""
DEFAULT_LR = 1.0e-3
RELEARN_STEPS = 30
"""The relearning attack's one budget: 30 steps of batch 8 are 12 passes over the 20-row relearn half."""
ATTACK_ROWS = 40
"""Rows per split the attacks evaluate: all 40 of forget01 and the first 40 of each utility split; nine evaluations
of every row would double the quickstart's time."""
RELEARN_LR = 3.0e-4
"""The attacker's lr: a tenth of the tiny model's fine-tuning lr (at the full-scale default 1e-5 it barely moves)."""

# Every TOFU file the quickstart reads: fine-tuning data, the tokenizer corpus, the unlearning pool, evaluation.
NEEDED_SPLITS = tuple(
    dict.fromkeys(
        [
            "full",
            FORGET_SPLIT,
            "retain99",
            f"{FORGET_SPLIT}_perturbed",
            "retain_perturbed",
            "real_authors_perturbed",
            "world_facts_perturbed",
            "holdout01",
            *TINY_CORPUS_SPLITS,
        ]
    )
)


class QuickstartError(ValueError):
    """A bad input, reported as one line naming the culprit and the fix."""


def _say(message: str) -> None:
    say(message, "quickstart")


# ------------------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Inputs:
    """Everything the run reads, checked and resolved before any work starts."""

    output_dir: Path
    cache_dir: Path
    data_dir: str
    data_fingerprint: str
    target_config: str
    retain_config: str
    unlearn_config: str
    unlearn_config_name: str
    lr: float
    seed: int
    g_effect_every: int
    max_new_tokens: int
    max_items: int | None
    rebuild: bool
    robustness: bool


def _config_text(path_or_name: str, what: str) -> tuple[str, str]:
    """``(text, label)`` of a config given as a path or a shipped name (``tofu_tiny/wga``), parsed as YAML."""
    path = Path(path_or_name)
    if not path.is_file():
        try:
            path = shipped_config(path_or_name)
        except FileNotFoundError as err:
            raise QuickstartError(
                f"{what}: no file {path_or_name!r} and no shipped config of that name. {err}"
            ) from err
    text = path.read_text(encoding="utf-8")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise QuickstartError(f"{what}: {path} is not valid YAML ({err}).") from err
    if not isinstance(parsed, dict) or "model" not in parsed:
        raise QuickstartError(f"{what}: {path} is not a lit-unlearn config (it has no 'model' section).")
    return text, str(path)


def _writable(folder: Path, flag: str) -> Path:
    folder = folder.expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise QuickstartError(f"{flag} {folder}: cannot write there ({err.strerror}); choose another folder.") from err
    return folder


def _data_dir(given: str | None) -> tuple[str, str]:
    """The TOFU folder (every needed file checked and parsed) and a fingerprint of its contents.

    ``--data-dir``, else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub's cached copy (downloaded once; without network and
    without a cached copy this fails at once, see ``resolve_tofu_file``).
    """
    source = given or os.environ.get(TOFU_DIR_ENV)
    folder = Path(source).expanduser().resolve() if source else None
    if folder is not None and not folder.is_dir():
        flag = "--data-dir" if given else f"${TOFU_DIR_ENV}"
        raise QuickstartError(f"{flag} {folder} is not a folder; point it at the TOFU files (full.json, ...).")
    # Only a --data-dir folder is passed on: resolve_tofu_file reads $LIT_UNLEARN_TOFU_DIR itself, and then its
    # errors name the variable rather than a data_dir argument.
    argument = folder if given else None
    path = None
    for split in NEEDED_SPLITS:
        try:
            path = resolve_tofu_file(split, argument)
            load_tofu(split, argument)  # parses and validates every row: a bad line fails now, not in 5 minutes
        except (FileNotFoundError, ValueError) as err:
            raise QuickstartError(str(err)) from None
    # The Hub's files of one revision share a snapshot folder, which then serves as the data folder.
    data_dir = str(folder or path.parent)
    return data_dir, tofu_fingerprint(data_dir, NEEDED_SPLITS)


def _eval_settings(unlearn_config: str) -> tuple[int, int | None]:
    """``max_new_tokens`` and ``max_items`` of the unlearning config's evaluation: one source of truth for every model
    the quickstart evaluates, the same as ``lit-unlearn fit --config`` would use."""
    evaluation = (yaml.safe_load(unlearn_config).get("model", {}).get("init_args", {}) or {}).get("evaluation") or {}
    return int(evaluation.get("max_new_tokens", EvalSettings.max_new_tokens)), evaluation.get("max_items")


def check_inputs(args: argparse.Namespace) -> Inputs:
    """Validate every input of the run; raises :class:`QuickstartError` with the culprit and the fix."""
    if args.g_effect_every < 1:
        raise QuickstartError(f"--g-effect-every must be ≥ 1, got {args.g_effect_every}.")
    if not args.lr > 0:
        raise QuickstartError(f"--lr must be positive, got {args.lr}.")
    methods = sorted(Path(c).stem for c in shipped_configs() if c.startswith("tofu_tiny/") and "finetune" not in c)
    method = args.method
    if args.unlearn_config is None and method not in methods:
        raise QuickstartError(f"--method {method!r} is not a shipped tiny objective; choose one of {methods}.")
    target_text, _ = _config_text(args.target_config or "tofu_tiny/finetune_target", "--target-config")
    retain_text, _ = _config_text(args.retain_config or "tofu_tiny/finetune_retain", "--retain-config")
    unlearn_text, unlearn_name = _config_text(args.unlearn_config or f"tofu_tiny/{method}", "--unlearn-config")
    data_dir, fingerprint = _data_dir(args.data_dir)
    max_new_tokens, max_items = _eval_settings(unlearn_text)
    return Inputs(
        output_dir=_writable(Path(args.output_dir), "--output-dir"),
        cache_dir=_writable(Path(args.cache_dir), "--cache-dir"),
        data_dir=data_dir,
        data_fingerprint=fingerprint,
        target_config=target_text,
        retain_config=retain_text,
        unlearn_config=unlearn_text,
        unlearn_config_name=unlearn_name,
        lr=args.lr,
        seed=args.seed,
        g_effect_every=args.g_effect_every,
        max_new_tokens=max_new_tokens,
        max_items=max_items,
        rebuild=args.rebuild,
        robustness=not args.no_robustness,
    )


# ----------------------------------------------------------------------------------------------------- unlearning
@dataclass(frozen=True)
class UnlearningRun:
    """What the unlearning step produced."""

    model_dir: Path
    history: list
    hyperparameters: dict[str, Any]
    steps: int
    epochs: int
    seconds: float


def unlearn(inputs: Inputs, target: Path, retain_eval: Path) -> UnlearningRun:
    """Unlearn ``target`` under the G-effect callback (raw gradient, real update and realised risk change); the
    config it ran with is left in ``unlearn_config.yaml``."""
    out = inputs.output_dir
    config = out / "unlearn_config.yaml"
    config.write_text(inputs.unlearn_config, encoding="utf-8")
    args = [
        "fit",
        "--config",
        str(config),
        f"--seed_everything={inputs.seed}",
        f"--model.model_name_or_path={target}",
        f"--model.lr={inputs.lr}",
        f"--model.output_dir={out / 'unlearned'}",
        "--model.overwrite_output_dir=true",  # the quickstart's folder is its own: a re-run redoes it
        f"--model.evaluation.retain_eval_path={retain_eval}",
        f"--data.data_dir={inputs.data_dir}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_model_summary=false",
        # One line per epoch, as the model builds print: a progress bar redirected to a log is a wall of updates.
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=lit_unlearn.progress.EpochProgress",
        "--trainer.callbacks.prefix=unlearn",
        f"--trainer.logger.init_args.save_dir={out / 'tensorboard'}",
        "--trainer.callbacks+=callbacks.GEffectCallback",
        f"--trainer.callbacks.every_n_steps={inputs.g_effect_every}",
        "--trainer.callbacks.coarse_groups=true",
        "--trainer.callbacks.realised_change=true",
        "--trainer.callbacks.measure_update=true",
        f"--trainer.callbacks.output_dir={out / 'g_effect'}",
    ]
    _say(f"unlearning with {Path(inputs.unlearn_config_name).name} at lr {inputs.lr:g} under the G-effect callback")
    start = time.perf_counter()
    cli = run_lightning_cli(args)
    seconds = time.perf_counter() - start
    # Keep what ran, not the template it started from: Lightning's resolved config (lr, paths, seed, the G-effect
    # callback), which `lit-unlearn fit --config` reruns.
    shutil.copyfile(Path(cli.trainer.log_dir) / "config.yaml", config)
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, GEffectCallback))
    # The objective's own settings (β, α, weights, lr, ...); paths, dtype and jsonargparse's bookkeeping are shown
    # elsewhere or say nothing about the method.
    hparams = {
        k: v
        for k, v in dict(cli.model.hparams).items()
        if isinstance(v, int | float | str | bool)
        and not k.startswith("_")
        and k not in ("model_name_or_path", "output_dir", "dtype", "attn_implementation")
    }
    _say(f"unlearning done in {seconds:.0f} s ({cli.trainer.global_step} optimiser steps)")
    return UnlearningRun(
        model_dir=out / "unlearned",
        history=list(callback.history),
        hyperparameters={"class": type(cli.model).__name__, **hparams},
        steps=cli.trainer.global_step,
        epochs=cli.trainer.current_epoch,
        seconds=seconds,
    )


def attack_unlearned(
    inputs: Inputs, target: Path, target_eval: Path, retain: Path, retain_eval: Path, unlearned: Path
) -> SuiteResult:
    """Relearning at one budget (with the retain-data control and the retain-model baseline) and 4-bit quantization
    of the unlearned model, cached by the attacked weights."""
    suite = AttackSuite(
        relearn=RelearnSettings(budgets=(0, RELEARN_STEPS), lr=RELEARN_LR, seed=inputs.seed),
        quantize=QuantSpec(bits=4),
        # Never beyond the cap of the stored target evaluation the relearning attack reads.
        evaluation=EvalOptions(
            max_new_tokens=inputs.max_new_tokens,
            batch_size=32,
            max_items=min(ATTACK_ROWS, inputs.max_items or ATTACK_ROWS),
        ),
        forget_split=FORGET_SPLIT,
    )
    _say(f"robustness: relearning ({RELEARN_STEPS} steps) and {suite.quantize.label} quantization of the model")
    result = attack_suite(
        suite,
        unlearned,
        target,
        target_eval,
        retain,
        retain_eval,
        out_dir=inputs.output_dir / "robustness",
        cache_dir=inputs.cache_dir / "robustness",
        data_dir=inputs.data_dir,
        data_fingerprint=inputs.data_fingerprint,
        log=_say,
    )
    if result.reused:
        _say("robustness: same unlearned weights as a cached run; its attack reports are reused")
    return result


# --------------------------------------------------------------------------------------------------------- outputs
def archive_previous(out: Path) -> Path | None:
    """Move a previous run's results out of the way (into ``out/previous/<time>``) instead of overwriting them."""
    if not (out / "summary.json").is_file():
        return None
    stamp = datetime.fromtimestamp((out / "summary.json").stat().st_mtime, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = out / "previous" / stamp
    dest.mkdir(parents=True, exist_ok=True)
    for entry in out.iterdir():
        if entry.name != "previous":
            shutil.move(str(entry), dest / entry.name)
    return dest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn quickstart",
        description="Build the tiny TOFU models, unlearn under the G-effect callback, write a report.",
    )
    parser.add_argument(
        "--output-dir", default="outputs/quickstart", help="report, figures, logs (default: %(default)s)"
    )
    parser.add_argument(
        "--cache-dir", default="outputs/tofu_tiny", help="tiny target/retain models and their evaluations"
    )
    parser.add_argument("--data-dir", default=None, help="local TOFU folder (default: $LIT_UNLEARN_TOFU_DIR)")
    parser.add_argument("--method", default=DEFAULT_METHOD, help="shipped tiny objective (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="unlearning learning rate (default: %(default)g)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unlearning run (default: %(default)s)")
    parser.add_argument("--unlearn-config", default=None, help="unlearning config (overrides --method)")
    parser.add_argument("--target-config", default=None, help="fine-tuning config of the target model")
    parser.add_argument("--retain-config", default=None, help="fine-tuning config of the retain model")
    parser.add_argument("--g-effect-every", type=int, default=1, help="measure the G-effect every N steps")
    parser.add_argument(
        "--no-robustness", action="store_true", help="skip the relearning and 4-bit quantization attacks"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild and re-evaluate the cached tiny models")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit-unlearn quickstart``; returns the exit status."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        inputs = check_inputs(args)
    except QuickstartError as err:
        print(f"lit-unlearn quickstart: error: {err}", file=sys.stderr)
        return 2
    pin_threads(THREADS)
    quiet_libraries()
    out = inputs.output_dir
    previous = archive_previous(out)
    if previous is not None:
        _say(f"the previous run's results were moved to {previous}")

    jobs = [
        ModelJob(
            name,
            config,
            str(inputs.cache_dir),
            inputs.data_dir,
            inputs.data_fingerprint,
            evaluations=(FORGET_SPLIT,),
            max_new_tokens=inputs.max_new_tokens,
            max_items=inputs.max_items,
            rebuild=inputs.rebuild,
        )
        for name, config in (("target", inputs.target_config), ("retain", inputs.retain_config))
    ]
    _say("preparing the tiny target and retain models side by side (one process and one thread each)")
    prepared = prepare_models(jobs)
    target, retain = Path(prepared["target"].model_dir), Path(prepared["retain"].model_dir)
    retain_eval = Path(prepared["retain"].eval_dirs[FORGET_SPLIT])
    target_eval = Path(prepared["target"].eval_dirs[FORGET_SPLIT])
    retain_summary = summarize(retain_eval, retain_eval)
    target_summary = summarize(target_eval, retain_eval)
    prepared_s = time.perf_counter() - start

    run = unlearn(inputs, target, retain_eval)
    eval_start = time.perf_counter()
    _say(f"evaluating the unlearned model on TOFU {FORGET_SPLIT}")
    settings = EvalSettings(
        max_new_tokens=inputs.max_new_tokens,
        max_items=inputs.max_items,
        output_dir=str(out / "eval_unlearned"),
        retain_eval_path=str(retain_eval),
    )
    after = evaluate(
        load_causal_lm(str(run.model_dir)),
        load_tokenizer(str(run.model_dir)),
        FORGET_SPLIT,
        data_dir=inputs.data_dir,
        settings=settings,
        batch_size=32,
        log=_say,
    )["summary"]
    eval_s = time.perf_counter() - eval_start
    attack_start = time.perf_counter()
    attacks = (
        attack_unlearned(inputs, target, target_eval, retain, retain_eval, run.model_dir) if inputs.robustness else None
    )
    attack_s = time.perf_counter() - attack_start

    method = run.hyperparameters["class"]
    summaries = {"target (before)": target_summary, "retain (oracle)": retain_summary, f"unlearned ({method})": after}
    readings = readings_of(
        run.history,
        {"forget": (target_summary.get("forget/answer_loss"), after.get("forget/answer_loss"))},
    )
    total = time.perf_counter() - start
    env = environment()
    what_ran = {
        "method": method,
        "config": inputs.unlearn_config_name,
        **{k: v for k, v in run.hyperparameters.items() if k != "class"},
        "optimiser steps": run.steps,
        "seed": inputs.seed,
        "forget split": f"{FORGET_SPLIT} (40 QA pairs, 2 authors)",
        "evaluation": f"greedy, {inputs.max_new_tokens} new tokens, first {inputs.max_items} rows per split",
        "target model": str(target),
        "retain model": str(retain),
        "unlearned model": str(run.model_dir),
        "TensorBoard logs": str(out / "tensorboard"),
        "robustness attacks": (
            "skipped (--no-robustness)"
            if attacks is None
            else f"relearning {RELEARN_STEPS} steps at lr {RELEARN_LR:g} with a retain-data control and a retain-model "
            f"baseline; int4 per-channel RTN; {ATTACK_ROWS} rows per split"
            + (" (reused from the cache: same unlearned weights)" if attacks.reused else "")
        ),
        **env,
        "total time": f"{total:.0f} s",
    }
    report = write_report(
        out,
        summaries,
        run.history,
        what_ran,
        readings,
        unlearned=f"unlearned ({method})",
        target="target (before)",
        notes=[
            "The forget risk of the G-effect is measured on each step's forget batch and the evaluation-set change on "
            f"all {FORGET_SPLIT} questions; the retain risk on each step's batch of the regulariser's pool (authors "
            "20-24), which the evaluated retain rows (authors 0-4) never enter."
        ],
        extra_sections=[]
        if attacks is None
        else [
            robustness_section(
                attacks.relearn,
                attacks.quantize,
                notes=["Reused from the cache: the same unlearned weights were attacked by an earlier run."]
                if attacks.reused
                else (),
            )
        ],
    )
    summary = {
        "target": target_summary,
        "retain": retain_summary,
        "unlearned": after,
        "method": method,
        "what_ran": what_ran,
        "g_effect": {risk: reading.as_dict() for risk, reading in readings.items()},
        "robustness": None
        if attacks is None
        else {"relearn": attacks.relearn, "quantize": attacks.quantize, "reused": attacks.reused},
        "seconds": {
            "total": total,
            "prepare target and retain (parallel)": prepared_s,
            **{f"{p.name} fine-tuning": p.fit_seconds for p in prepared.values()},
            **{f"{p.name} evaluation": p.eval_seconds for p in prepared.values()},
            "unlearning": run.seconds,
            "unlearned evaluation": eval_s,
            "robustness attacks": attack_s,
        },
        "environment": env,
        "models": {k: asdict(v) for k, v in prepared.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    _say(f"report: {report}")
    _say(f"summary: {out / 'summary.json'} ({total:.0f} s in all)")
    # The last line, for scripts: the headline numbers, named for the model they describe.
    print(json.dumps({"unlearned": {k: after.get(k) for k in ("forget_quality", "model_utility")}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
