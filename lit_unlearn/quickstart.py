"""``lit-unlearn quickstart``: the whole G-effect pipeline on the embedded tiny TOFU model, in minutes on a CPU.

1. build (or reuse from the cache) the tiny target model (first 20 authors + the forget01 authors + world-knowledge
   QA) and the retain model (the same without the forget authors), with ``configs/tofu_tiny/finetune_*.yaml``;
2. evaluate both on TOFU's forget01 protocol (the retain model's per-item truth ratios are forget quality's reference);
3. unlearn the target with WGA + GD (``configs/tofu_tiny/wga.yaml``) under the ``GEffectCallback``;
4. evaluate the unlearned model and write ``report.md``, figures and TensorBoard logs into the output directory.
"""

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_unlearn.config_hub import shipped_config
from lit_unlearn.data import load_tofu
from lit_unlearn.lightning_cli import run_lightning_cli

FORGET_SPLIT = "forget01"


def _say(message: str) -> None:
    print(f"[lit-unlearn quickstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ensure_finetuned(
    config: Path, out_dir: Path, init_dir: Path, runs_dir: Path, data_dir: str | None, rebuild: bool = False
) -> Path:
    """Fine-tune with ``config`` into ``out_dir`` unless an identical recipe already built it there.

    The cache key is the config text plus the TOFU folder, stored as ``recipe.sha256`` next to the weights and
    written last, so an interrupted build is never mistaken for a finished one.
    """
    key = _digest(config.read_text(), str(data_dir))
    stamp = out_dir / "recipe.sha256"
    if not rebuild and stamp.is_file() and stamp.read_text() == key and (out_dir / "config.json").is_file():
        _say(f"reusing {out_dir} (same recipe as {config.name})")
        return out_dir
    _say(f"fine-tuning {out_dir.name} model with {config} (a few minutes on 2 CPU cores)")
    start = time.perf_counter()
    args = [
        "fit",
        "--config",
        str(config),
        f"--model.model_name_or_path={init_dir}",
        f"--model.output_dir={out_dir}",
        "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={runs_dir}",
    ]
    if data_dir:
        args.append(f"--data.data_dir={data_dir}")
    run_lightning_cli(args)
    stamp.write_text(key)
    _say(f"{out_dir.name} model ready in {time.perf_counter() - start:.0f} s")
    return out_dir


def evaluate_dir(
    model_dir: Path, out_dir: Path, data_dir: str | None, retain_eval: Path | None, max_new_tokens: int
) -> dict[str, Any]:
    """Run the TOFU evaluation of the model saved in ``model_dir``; files go to ``out_dir``."""
    from lit_unlearn.eval.runner import evaluate
    from lit_unlearn.eval.settings import EvalSettings
    from lit_unlearn.models import load_causal_lm, load_tokenizer

    settings = EvalSettings(
        max_new_tokens=max_new_tokens,
        output_dir=str(out_dir),
        retain_eval_path=str(retain_eval) if retain_eval is not None else None,
    )
    model, tokenizer = load_causal_lm(str(model_dir)), load_tokenizer(str(model_dir))
    start = time.perf_counter()
    result = evaluate(model, tokenizer, FORGET_SPLIT, data_dir=data_dir, settings=settings, batch_size=32)
    _say(f"evaluated {model_dir.name} in {time.perf_counter() - start:.0f} s → {out_dir}")
    return result["summary"]


def unlearn(
    config: Path, target: Path, out_dir: Path, data_dir: str | None, every_n_steps: int
) -> tuple[Path, list[dict[str, Any]], Path]:
    """Unlearn ``target`` with ``config`` under the G-effect callback; returns the model dir, history and log dir."""
    from callbacks import GEffectCallback

    model_dir = out_dir / "unlearned"
    args = [
        "fit",
        "--config",
        str(config),
        f"--model.model_name_or_path={target}",
        f"--model.output_dir={model_dir}",
        "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={out_dir / 'tensorboard'}",
        "--trainer.callbacks+=callbacks.GEffectCallback",
        f"--trainer.callbacks.every_n_steps={every_n_steps}",
        "--trainer.callbacks.coarse_groups=true",
        "--trainer.callbacks.realised_change=true",
        f"--trainer.callbacks.output_dir={out_dir / 'g_effect'}",
    ]
    if data_dir:
        args.append(f"--data.data_dir={data_dir}")
    _say(f"unlearning with {config.name} under the G-effect callback (every {every_n_steps} step(s))")
    start = time.perf_counter()
    cli = run_lightning_cli(args)
    _say(f"unlearning done in {time.perf_counter() - start:.0f} s")
    g_effect = next(cb for cb in cli.trainer.callbacks if isinstance(cb, GEffectCallback))
    return model_dir, g_effect.history, Path(cli.trainer.log_dir or out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit-unlearn quickstart``."""
    parser = argparse.ArgumentParser(
        prog="lit-unlearn quickstart",
        description="Build the tiny TOFU models, unlearn with WGA under the G-effect callback, write a report.",
    )
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where the report, figures and logs go")
    parser.add_argument("--cache-dir", default="outputs/tofu_tiny", help="tiny target/retain models and their evals")
    parser.add_argument("--data-dir", default=None, help="local TOFU folder (default: $LIT_UNLEARN_TOFU_DIR, else Hub)")
    parser.add_argument("--target-config", default=None, help="fine-tuning config of the target model")
    parser.add_argument("--retain-config", default=None, help="fine-tuning config of the retain model")
    parser.add_argument("--unlearn-config", default=None, help="unlearning config (default: tofu_tiny/wga.yaml)")
    parser.add_argument("--g-effect-every", type=int, default=1, help="measure the G-effect every N steps")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="greedy generation budget for ROUGE")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny models")
    args = parser.parse_args(argv)

    from lit_unlearn.eval.summarize import summarize
    from lit_unlearn.report import write_report

    start = time.perf_counter()
    out = Path(args.output_dir).resolve()
    cache = Path(args.cache_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_tofu("full", args.data_dir)  # fail in seconds, with the fix, when TOFU cannot be found
    target_cfg = Path(args.target_config) if args.target_config else shipped_config("tofu_tiny/finetune_target")
    retain_cfg = Path(args.retain_config) if args.retain_config else shipped_config("tofu_tiny/finetune_retain")
    unlearn_cfg = Path(args.unlearn_config) if args.unlearn_config else shipped_config("tofu_tiny/wga")
    runs = out / "tensorboard"

    target = ensure_finetuned(target_cfg, cache / "target", cache / "init", runs, args.data_dir, args.rebuild)
    retain = ensure_finetuned(retain_cfg, cache / "retain", cache / "init", runs, args.data_dir, args.rebuild)
    retain_eval_dir = cache / "retain" / "eval"
    eval_key = _digest((retain / "recipe.sha256").read_text(), str(args.max_new_tokens))
    if (
        args.rebuild
        or not (retain_eval_dir / "eval.sha256").is_file()
        or ((retain_eval_dir / "eval.sha256").read_text() != eval_key)
    ):
        evaluate_dir(retain, retain_eval_dir, args.data_dir, None, args.max_new_tokens)
        (retain_eval_dir / "eval.sha256").write_text(eval_key)
    # Against itself the retain model's forget quality is 1 by definition; recomputed from its files, not re-run.
    retain_summary = summarize(retain_eval_dir, retain_eval_dir)
    before = evaluate_dir(target, out / "eval_target", args.data_dir, retain_eval_dir, args.max_new_tokens)
    unlearned, history, log_dir = unlearn(unlearn_cfg, target, out, args.data_dir, args.g_effect_every)
    after = evaluate_dir(unlearned, out / "eval_unlearned", args.data_dir, retain_eval_dir, args.max_new_tokens)

    report = write_report(
        out,
        summaries={"target (before)": before, "retain (oracle)": retain_summary, "unlearned (WGA)": after},
        history=history,
        g_effect_plot=out / "g_effect" / "g_effect.png",
        details={
            "unlearning config": str(unlearn_cfg),
            "target model": str(target),
            "retain model": str(retain),
            "unlearned model": str(unlearned),
            "TensorBoard logs": str(log_dir),
            "forget split": FORGET_SPLIT,
            "total time": f"{time.perf_counter() - start:.0f} s",
        },
    )
    _say(f"report: {report}")
    print(json.dumps({k: after.get(k) for k in ("forget_quality", "model_utility")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
