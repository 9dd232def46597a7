"""Reproduce the G-effect paper's comparison of unlearning objectives at tiny scale (TOFU forget01, CPU).

Wang et al. (ICLR 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond") compare GA, NPO
and their regularised variants with their own WGA, TNPO and WTNPO on TOFU. This benchmark runs the same comparison on
the embedded tiny Llama (3 blocks, hidden 192) fine-tuned on TOFU:

1. build or reuse the tiny target and retain models (``lit_unlearn.quickstart.ensure_finetuned`` with
   ``configs/tofu_tiny/finetune_{target,retain}.yaml``);
2. evaluate the retain model once (the reference of forget quality) and the target;
3. for every method and learning rate, unlearn the target for the SAME number of optimiser steps with its
   ``configs/tofu_tiny/<objective>.yaml`` under ``GEffectCallback(every_n_steps=5, coarse_groups=True,
   realised_change=False)``, recording wall time and peak memory, then evaluate the unlearned model in memory;
4. write ``<out>/figures/tofu_tiny.json`` (every number), ``<out>/figures/tofu_tiny_tables.md`` (the tables
   ``docs/results.md`` quotes), ``<out>/figures/tofu_tiny_fq_mu.png`` (forget quality vs model utility) and
   ``<out>/figures/tofu_tiny_g_effect_layers.png`` (coarse-layer G-effects per method).

Methods: ``GA`` is GradAscent without a retain term; ``GradDiff`` is GA + retain NLL (GD); ``X+KL`` swaps the retain
term for the KL to the target model; NPO, SimNPO, IdkPO, WGA, TNPO and WTNPO use GD as their configs do; RMU uses its
own representation-matching retain term.

Every model (retain, target, each unlearned one) gets the same evaluation, ``lit_unlearn.eval.runner.evaluate`` on
forget01 with ``--max-new-tokens`` greedy tokens and the first ``--max-items`` rows of each split (forget01 has 40 rows,
so forget quality always uses all of them; model utility's retain/real-authors/world-facts sets are capped), without
the holdout split, which only feeds membership inference.

What is measured:

* wall time: ``time.perf_counter`` around the whole ``fit`` (model and data loading and the G-effect measurements
  included; evaluation excluded and reported separately as ``eval_s``);
* peak memory: the process's peak resident set size during ``fit`` (``VmHWM`` of ``/proc/self/status``, reset before
  each run by writing ``5`` to ``/proc/self/clear_refs``), reported both absolute and as the increase over the resident
  size at the start of the run. Where ``clear_refs`` is not writable (non-Linux), the increase of
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is reported instead, which is 0 for a run that stays under an earlier
  peak; ``peak_memory_method`` in the JSON says which one was used.

Finished runs are cached in ``<cache-dir>/benchmark/runs/<method>_lr<lr>_s<steps>_t<tokens>_n<items>/run.json``, so
an interrupted sweep resumes where it stopped (``--force`` reruns everything). The sweep of ``docs/results.md`` (70
runs, the defaults) took about 28 minutes on 2 shared CPU cores with one torch thread, plus 4 minutes for
``--memory-probes``.

Usage::

    python benchmarks/tofu_tiny.py --memory-probes                  # the sweep of docs/results.md
    python benchmarks/tofu_tiny.py --methods WGA NPO --lrs 3e-4     # a subset
    python benchmarks/tofu_tiny.py --time-one                       # time one GA run + its evaluation, then stop
"""

import argparse
import gc
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tofu_tiny"
#: forget01 holds 40 QA pairs; at batch size 4 one epoch is 10 optimiser steps (the configs' schedule unit).
STEPS_PER_EPOCH = 10
#: The G-effect groups summarised per method: the paper's coarse depth thirds plus the embedding and the LM head.
LAYER_GROUPS = ("embedding", "shallow", "middle", "deep", "lm_head")


@dataclass(frozen=True)
class Method:
    """One unlearning method of the comparison.

    Args:
        name: Label in tables and plots.
        config: Stem of its ``configs/tofu_tiny/<config>.yaml``.
        retain_loss: ``--model.retain_loss`` override; ``None`` keeps the config's value.
        regulariser: Human-readable retain term (``none``, ``GD``, ``KL``, ``RMU``).
        family: The forget objective, which pairs ``X`` with ``X+KL`` in the regulariser comparison.
    """

    name: str
    config: str
    retain_loss: str | None
    regulariser: str
    family: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("GA", "grad_ascent", "none", "none", "GA"),
        Method("GradDiff", "grad_diff", "nll", "GD", "GA"),
        Method("GA+KL", "grad_diff", "kl", "KL", "GA"),
        Method("NPO", "npo", "nll", "GD", "NPO"),
        Method("NPO+KL", "npo", "kl", "KL", "NPO"),
        Method("SimNPO", "simnpo", "nll", "GD", "SimNPO"),
        Method("IdkPO", "idk_po", "nll", "GD", "IdkPO"),
        Method("RMU", "rmu", None, "RMU", "RMU"),
        Method("WGA", "wga", "nll", "GD", "WGA"),
        Method("WGA+KL", "wga", "kl", "KL", "WGA"),
        Method("TNPO", "tnpo", "nll", "GD", "TNPO"),
        Method("TNPO+KL", "tnpo", "kl", "KL", "TNPO"),
        Method("WTNPO", "wtnpo", "nll", "GD", "WTNPO"),
        Method("WTNPO+KL", "wtnpo", "kl", "KL", "WTNPO"),
    )
}


def _say(message: str) -> None:
    print(f"[tofu_tiny {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ peak memory
def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in KiB, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory of this process over a block of code (see the module docstring for the method)."""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.method = "VmHWM after clear_refs"
        try:
            # Writing 5 resets the kernel's high-water mark to the current RSS (Linux ≥ 4.0), so the peak is per run.
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError:
            self.method = "ru_maxrss increase"
        self.start_kib = _status_kib("VmRSS")
        self.start_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "ru_maxrss increase" or self.start_kib is None:
            # ru_maxrss is in KiB on Linux; only its growth is attributable to this block.
            peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start_maxrss_kib
            self.peak_mib = float("nan")
            self.increase_mib = peak_growth / 1024
        else:
            peak = _status_kib("VmHWM") or 0
            self.peak_mib = peak / 1024
            self.increase_mib = (peak - self.start_kib) / 1024


# ------------------------------------------------------------------------------------------------ evaluation
#: Membership inference (the holdout split) is not part of forget quality or model utility; skipping it saves time.
EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts")


@dataclass(frozen=True)
class EvalPlan:
    """How every model of the sweep is evaluated (identical for the references and the unlearned models).

    Args:
        max_new_tokens: Greedy-generation budget per answer (ROUGE-L).
        max_items: First rows evaluated per split; forget01 has 40, so forget quality always sees the whole split,
            while model utility's retain/real-authors/world-facts sets are capped.
    """

    max_new_tokens: int
    max_items: int | None

    @property
    def tag(self) -> str:
        """Short folder suffix naming the plan."""
        return f"t{self.max_new_tokens}_n{self.max_items or 'all'}"


def evaluate_model(
    model: Any, tokenizer: Any, out_dir: Path, data_dir: str | None, retain_eval: Path | None, plan: EvalPlan
) -> dict[str, Any]:
    """TOFU forget01 evaluation with ``lit_unlearn.eval.runner.evaluate``; per-item files go to ``out_dir``."""
    from lit_unlearn.eval.runner import evaluate
    from lit_unlearn.eval.settings import EvalSettings

    settings = EvalSettings(
        max_new_tokens=plan.max_new_tokens,
        max_items=plan.max_items,
        output_dir=str(out_dir),
        retain_eval_path=str(retain_eval) if retain_eval is not None else None,
    )
    result = evaluate(
        model,
        tokenizer,
        "forget01",
        data_dir=data_dir,
        settings=settings,
        batch_size=40,
        splits=EVAL_SPLITS,
        progress=False,
    )
    return result["summary"]


# ------------------------------------------------------------------------------------------------ one run
def _run_name(method: Method, lr: float, steps: int) -> str:
    safe = method.name.replace("+", "_")
    return f"{safe}_lr{lr:g}_s{steps}"


def unlearn_and_evaluate(
    method: Method,
    lr: float,
    steps: int,
    target: Path,
    retain_eval: Path,
    run_dir: Path,
    data_dir: str | None,
    plan: EvalPlan,
    keep_model: bool,
) -> dict[str, Any]:
    """Unlearn ``target`` with ``method`` at ``lr`` for ``steps`` optimiser steps, then evaluate it.

    Returns the run record: timings, memory, the evaluation summary and the G-effect history.
    """
    from lit_unlearn.lightning_cli import run_lightning_cli

    model_dir = run_dir / "model" if keep_model else None
    args = fit_args(method, lr, steps, target, run_dir, data_dir, model_dir)
    with PeakMemory() as memory:
        start = time.perf_counter()
        cli = run_lightning_cli(args)
        wall = time.perf_counter() - start
    callback = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "GEffectCallback")
    history = [dict(row) for row in callback.history]
    steps_done = int(cli.trainer.global_step)

    # Evaluated in memory: the unlearned weights are only written with --keep-models (8 MB each, dozens per sweep).
    start = time.perf_counter()
    summary = evaluate_model(cli.model.model, cli.model.tokenizer, run_dir / "eval", data_dir, retain_eval, plan)
    eval_wall = time.perf_counter() - start
    del cli, callback
    gc.collect()
    return {
        "method": method.name,
        "family": method.family,
        "regulariser": method.regulariser,
        "config": f"configs/tofu_tiny/{method.config}.yaml",
        "retain_loss": method.retain_loss,
        "lr": lr,
        "steps": steps_done,
        "wall_s": wall,
        "eval_s": eval_wall,
        "peak_rss_mib": memory.peak_mib,
        "rss_increase_mib": memory.increase_mib,
        "peak_memory_method": memory.method,
        "summary": summary,
        "g_effect": layer_g_effects(history),
        "g_effect_history": history,
    }


def fit_args(
    method: Method, lr: float, steps: int, target: Path, run_dir: Path, data_dir: str | None, model_dir: Path | None
) -> list[str]:
    """LightningCLI arguments of one unlearning run under the G-effect callback."""
    args = [
        "fit",
        "--config",
        str(CONFIGS / f"{method.config}.yaml"),
        f"--model.model_name_or_path={target}",
        f"--model.lr={lr}",
        f"--model.output_dir={model_dir or 'null'}",
        f"--trainer.max_steps={steps}",
        # The configs schedule warm-up in epochs; keeping max_epochs consistent with max_steps keeps it one epoch.
        f"--trainer.max_epochs={math.ceil(steps / STEPS_PER_EPOCH)}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={run_dir / 'tensorboard'}",
        "--trainer.callbacks+=callbacks.GEffectCallback",
        "--trainer.callbacks.every_n_steps=5",
        "--trainer.callbacks.coarse_groups=true",
        "--trainer.callbacks.realised_change=false",
        "--trainer.callbacks.save_plot=false",
        f"--trainer.callbacks.output_dir={run_dir}",
    ]
    if method.retain_loss is not None:
        args.append(f"--model.retain_loss={method.retain_loss}")
    if data_dir:
        args.append(f"--data.data_dir={data_dir}")
    return args


def probe_memory(method: Method, lr: float, steps: int, target: Path, run_dir: Path, data_dir: str | None) -> None:
    """Print, as one JSON line, the peak RSS increase of one unlearning ``fit`` in THIS (fresh) process.

    In the sweep's long-lived process, later runs reuse memory freed by earlier ones, so their RSS increase
    understates what a run needs; a fresh process, measured after its imports, gives comparable per-method numbers.
    """
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before the baseline: not counted)

    from lit_unlearn.lightning_cli import run_lightning_cli

    with PeakMemory() as memory:
        run_lightning_cli(fit_args(method, lr, steps, target, run_dir, data_dir, None))
    print(json.dumps({"method": method.name, "peak_rss_mib": memory.peak_mib, "increase_mib": memory.increase_mib}))


def fresh_process_memory(
    methods: Sequence[str], lr: float, steps: int, cache: Path, data_dir: str | None, threads: int
) -> dict[str, dict[str, float]]:
    """Run :func:`probe_memory` for each method in its own subprocess and collect the results."""
    import subprocess

    out = {}
    for name in methods:
        command = [sys.executable, __file__, "--probe-memory", name, "--lrs", str(lr), "--steps", str(steps)]
        command += ["--cache-dir", str(cache), "--threads", str(threads)]
        if data_dir:
            command += ["--data-dir", data_dir]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            _say(f"memory probe of {name} failed (exit {done.returncode}): {done.stderr[-500:]}")
            continue
        out[name] = json.loads(lines[-1])
        _say(f"memory probe {name}: peak RSS {out[name]['peak_rss_mib']:.0f} MiB (+{out[name]['increase_mib']:.0f})")
    return out


# ------------------------------------------------------------------------------------------------ analysis
def layer_g_effects(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean G-effect over the measured steps per risk and group (the coarse thirds, embedding, LM head, total)."""
    sums: dict[tuple[str, str], list[float]] = {}
    for row in history:
        if row["group"] in (*LAYER_GROUPS, "total"):
            sums.setdefault((row["risk"], row["group"]), []).append(float(row["g_effect"]))
    out: dict[str, dict[str, float]] = {}
    for (risk, group), values in sums.items():
        out.setdefault(risk, {})[group] = sum(values) / len(values)
    return out


def choose_best(runs: Sequence[Mapping[str, Any]], target_mu: float, keep: float) -> Mapping[str, Any]:
    """The learning rate of one method reported as its result.

    Rule (stated in the tables): the highest forget quality among the runs that keep at least ``keep`` of the
    target's model utility; if none does, the run with the highest model utility (the least destructive one).
    """
    ok = [r for r in runs if (r["summary"].get("model_utility") or 0.0) >= keep * target_mu]
    if ok:
        return max(ok, key=lambda r: (r["summary"].get("forget_quality") or 0.0, r["summary"]["model_utility"]))
    return max(runs, key=lambda r: r["summary"].get("model_utility") or 0.0)


def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Pareto dominance in (forget quality, model utility): ≥ in both and > in at least one."""
    fa, ma = a["forget_quality"], a["model_utility"]
    fb, mb = b["forget_quality"], b["model_utility"]
    return fa >= fb and ma >= mb and (fa > fb or ma > mb)


def pareto_front(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Labels (``method@lr``) of the runs no other run dominates."""
    points = [(f"{r['method']}@{r['lr']:g}", r["summary"]) for r in runs]
    return [name for name, s in points if not any(dominates(t, s) for _, t in points if t is not s)]


# ------------------------------------------------------------------------------------------------ outputs
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.1e}"
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def write_tables(result: Mapping[str, Any], path: Path) -> None:
    """The markdown tables quoted by ``docs/results.md``."""
    ref = result["reference"]
    best = result["best_lr"]
    rows = []
    for name, summary in (("target (before unlearning)", ref["target"]), ("retain model (oracle)", ref["retain"])):
        rows.append(
            [
                name,
                "–",
                summary.get("forget_quality"),
                summary.get("model_utility"),
                summary.get("forget/rouge_l_recall"),
            ]
            + ["–", "–", "–", ""]
        )
    for run in result["runs"]:
        s = run["summary"]
        rows.append(
            [
                run["method"],
                f"{run['lr']:g}",
                s.get("forget_quality"),
                s.get("model_utility"),
                s.get("forget/rouge_l_recall"),
                run["wall_s"],
                run["peak_rss_mib"],
                run["rss_increase_mib"],
                "**best**" if best.get(run["method"]) == run["lr"] else "",
            ]
        )
    lines = ["### All runs", ""]
    lines += _table(
        [
            "method",
            "lr",
            "forget quality ↑",
            "model utility ↑",
            "forget ROUGE-L ↓",
            "unlearning wall time (s)",
            "peak RSS (MiB)",
            "RSS increase (MiB)",
            "",
        ],
        rows,
    )
    lines += ["", "### G-effects per layer group (best lr of each method; mean over the measured steps)", ""]
    g_rows = []
    for run in result["runs"]:
        if best.get(run["method"]) != run["lr"]:
            continue
        for risk, label in (("forget", "unlearning (forget NLL)"), ("retain", "retaining (retain NLL)")):
            values = run["g_effect"].get(risk, {})
            coarse = {g: values[g] for g in ("shallow", "middle", "deep") if g in values}
            top = max(coarse, key=lambda g: abs(coarse[g])) if coarse else "–"
            g_rows.append([run["method"], label, *[values.get(g) for g in LAYER_GROUPS], values.get("total"), top])
    lines += _table(["method", "G-effect", *LAYER_GROUPS, "total", "largest-magnitude third"], g_rows)
    probes = result.get("fresh_process_memory") or {}
    if probes:
        lines += ["", "### Peak memory of one unlearning fit, each in a fresh process", ""]
        lines += _table(
            ["method", "peak RSS (MiB)", "increase over the process after imports (MiB)"],
            [[name, p["peak_rss_mib"], p["increase_mib"]] for name, p in probes.items()],
        )
    for failure in result.get("failures", []):
        lines += ["", f"FAILED: {failure['method']} at lr {failure['lr']:g}: {failure['error']}"]
    lines += [
        "",
        f"Pareto front over all runs (forget quality, model utility): {', '.join(result['pareto_front'])}.",
        "",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _palette(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {name: cmap(i % 20) for i, name in enumerate(names)}


MARKERS = {"none": "X", "GD": "o", "KL": "s", "RMU": "^"}


def plot_scatter(result: Mapping[str, Any], path: Path) -> None:
    """Forget quality (log) vs model utility: every run small, each method's best lr large.

    Left: every run. Right: a zoom on the high-utility corner where the best runs sit, labelled; best runs that land
    on the same point (forget quality takes few distinct values on 40 items) share one label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["method"] for r in result["runs"]))
    colours = _palette(names)
    floor = 1e-12  # a KS p-value can underflow to 0; draw it at the floor of the log axis
    best_runs = [r for r in result["runs"] if result["best_lr"].get(r["method"]) == r["lr"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1, 1.25]})
    for ax in axes:
        for run in result["runs"]:
            s = run["summary"]
            is_best = run in best_runs
            ax.scatter(
                s["model_utility"],
                max(s["forget_quality"], floor),
                s=90 if is_best else 22,
                marker=MARKERS.get(run["regulariser"], "o"),
                color=colours[run["method"]],
                alpha=1.0 if is_best else 0.45,
                edgecolors="black" if is_best else "none",
                linewidths=0.8,
                label=run["method"] if is_best and ax is axes[0] else None,
                zorder=3 if is_best else 2,
            )
        for label, key, marker in (("target", "target", "*"), ("retain (oracle)", "retain", "P")):
            s = result["reference"][key]
            point = (s["model_utility"], max(s["forget_quality"], floor))
            ax.scatter(*point, s=160, marker=marker, color="black", zorder=4)
            ax.annotate(label, point, xytext=(6, -12), textcoords="offset points", fontsize=8, fontweight="bold")
        ax.set_yscale("log")
        ax.set_xlabel("model utility (higher is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("forget quality: KS p-value vs retain model (higher is better)")
    axes[0].set_title("all runs", fontsize=9)
    axes[0].legend(fontsize=7, ncol=2, loc="lower left", framealpha=0.85)

    zoom = axes[1]
    mus = [r["summary"]["model_utility"] for r in best_runs] + [result["reference"]["target"]["model_utility"]]
    fqs = [max(r["summary"]["forget_quality"], floor) for r in best_runs]
    zoom.set_xlim(min(mus) - 0.01, max(mus) + 0.03)
    zoom.set_ylim(min(fqs + [result["reference"]["target"]["forget_quality"]]) / 3, 3.0)
    groups: list[tuple[float, float, list[str]]] = []
    for run in sorted(best_runs, key=lambda r: (-r["summary"]["forget_quality"], -r["summary"]["model_utility"])):
        mu, fq = run["summary"]["model_utility"], max(run["summary"]["forget_quality"], floor)
        label = f"{run['method']} ({run['lr']:g})"
        for gmu, gfq, members in groups:
            if abs(gmu - mu) < 0.004 and abs(math.log10(gfq) - math.log10(fq)) < 0.02:
                members.append(label)
                break
        else:
            groups.append((mu, fq, [label]))
    for index, (mu, fq, members) in enumerate(groups):
        # Alternate sides so neighbouring labels on the same forget-quality rung do not overprint.
        dx = 8 if index % 2 == 0 else -8
        zoom.annotate(
            ", ".join(members),
            (mu, fq),
            xytext=(dx, 5 if index % 4 < 2 else -11),
            textcoords="offset points",
            ha="left" if dx > 0 else "right",
            fontsize=7,
        )
    zoom.set_title("zoom on the best lr of each method", fontsize=9)
    settings = result["settings"]
    fig.suptitle(
        f"Tiny TOFU forget01, {settings['steps']} steps per run, lrs {', '.join(f'{x:g}' for x in settings['lrs'])}; "
        "small: every lr, large: best lr (✕ none, ● GD, ■ KL, ▲ RMU)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_g_effect_layers(result: Mapping[str, Any], path: Path) -> None:
    """Heatmaps of the mean unlearning/retaining G-effect per layer group, one row per method (best lr).

    Colour is the value divided by the row's largest magnitude (so methods with very different scales compare by
    where their G-effect sits); the raw value is printed in each cell.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in result["runs"] if result["best_lr"].get(r["method"]) == r["lr"]]
    if not runs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * len(runs) + 1.8))
    for ax, (risk, title) in zip(
        axes,
        (
            ("forget", "unlearning G-effect (forget NLL; < 0 = removal)"),
            ("retain", "retaining G-effect (retain NLL; < 0 = damage)"),
        ),
        strict=True,
    ):
        values = np.array(
            [[r["g_effect"].get(risk, {}).get(g, np.nan) for g in LAYER_GROUPS] for r in runs], dtype=float
        )
        scale = np.nanmax(np.abs(values), axis=1, keepdims=True)
        scale[~np.isfinite(scale) | (scale == 0)] = 1.0
        ax.imshow(values / scale, cmap="coolwarm_r", vmin=-1, vmax=1, aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, _fmt(float(values[i, j]), 2), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(LAYER_GROUPS)), LAYER_GROUPS, fontsize=8)
        ax.set_yticks(range(len(runs)), [f"{r['method']} ({r['lr']:g})" for r in runs], fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle("Mean G-effect per layer group (colour: value / row max |value|)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main
def write_outputs(result: Mapping[str, Any], figures: Path) -> None:
    """The tables and both figures of a sweep result."""
    write_tables(result, figures / "tofu_tiny_tables.md")
    plot_scatter(result, figures / "tofu_tiny_fq_mu.png")
    plot_g_effect_layers(result, figures / "tofu_tiny_g_effect_layers.png")


def _reference_evals(
    cache: Path,
    data_dir: str | None,
    plan: EvalPlan,
    rebuild: bool,
    target_config: Path,
    retain_config: Path,
) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """Build/reuse the tiny target and retain models and evaluate both (cached by recipe and token budget)."""
    from lit_unlearn.eval.summarize import summarize
    from lit_unlearn.models import load_causal_lm, load_tokenizer
    from lit_unlearn.quickstart import ensure_finetuned

    runs = cache / "tensorboard"
    target = ensure_finetuned(target_config, cache / "target", cache / "init", runs, data_dir, rebuild)
    retain = ensure_finetuned(retain_config, cache / "retain", cache / "init", runs, data_dir, rebuild)
    bench = cache / "benchmark"
    evals = {}
    for name, model_dir in (("retain", retain), ("target", target)):
        out = bench / f"eval_{name}_{plan.tag}"
        key = (model_dir / "recipe.sha256").read_text() + f"\n{plan}"
        stamp = out / "eval.key"
        if rebuild or not stamp.is_file() or stamp.read_text() != key:
            reference = evals.get("retain")
            _say(f"evaluating the {name} model ({plan})")
            model, tokenizer = load_causal_lm(str(model_dir)), load_tokenizer(str(model_dir))
            evaluate_model(model, tokenizer, out, data_dir, reference, plan)
            stamp.write_text(key)
        evals[name] = out
    retain_eval = evals["retain"]
    # Recomputed from the per-item files: the retain model against itself has forget quality 1 by definition.
    return (
        target,
        retain_eval,
        summarize(evals["target"], retain_eval),
        summarize(retain_eval, retain_eval),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and write the JSON, tables and figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="outputs/tofu_tiny", help="tiny models, evaluations and run caches")
    parser.add_argument("--out", default="docs", help="writes <out>/figures/tofu_tiny*.{json,md,png}")
    parser.add_argument("--data-dir", default=None, help="local TOFU folder (default: $LIT_UNLEARN_TOFU_DIR)")
    parser.add_argument("--target-config", default=None, help="fine-tuning config of the target (default: shipped)")
    parser.add_argument("--retain-config", default=None, help="fine-tuning config of the retain (default: shipped)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        metavar="METHOD",
        help=f"subset of: {' '.join(METHODS)}",
    )
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 2e-4, 3e-4, 1e-3, 3e-3], help="lr sweep")
    parser.add_argument("--steps", type=int, default=50, help="optimiser steps per run (10 = one forget01 epoch)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy generation budget of the evaluation")
    parser.add_argument(
        "--max-items", type=int, default=100, help="rows evaluated per split (0: all; forget01 has 40 anyway)"
    )
    parser.add_argument(
        "--keep-utility",
        type=float,
        default=0.8,
        help="best lr = highest forget quality among runs keeping this share of the target's utility",
    )
    parser.add_argument("--keep-models", action="store_true", help="keep the unlearned weights of every run")
    parser.add_argument("--force", action="store_true", help="rerun runs that already have a cached result")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the tiny models and reference evaluations")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on an oversubscribed CPU, OpenMP spin-waiting made 2 threads ~8x slower)",
    )
    parser.add_argument(
        "--memory-probes",
        action="store_true",
        help="also measure each method's peak memory in a fresh process (first lr, --steps steps, no evaluation)",
    )
    parser.add_argument(
        "--replot", action="store_true", help="only rewrite the tables and figures from <out>/figures/tofu_tiny.json"
    )
    parser.add_argument("--probe-memory", default=None, choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--time-one", action="store_true", help="time one GA run and its evaluation, then stop")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    if any(lr <= 0 for lr in args.lrs):
        parser.error(f"--lrs must be positive, got {args.lrs}")
    if args.replot:
        figures = Path(args.out).resolve() / "figures"
        result = json.loads((figures / "tofu_tiny.json").read_text(encoding="utf-8"))
        write_outputs(result, figures)
        return 0
    if args.threads < 1:
        parser.error(f"--threads must be ≥ 1, got {args.threads}")
    data_dir = args.data_dir or os.environ.get("LIT_UNLEARN_TOFU_DIR")
    if data_dir is None:
        parser.error("no TOFU data: pass --data-dir or set LIT_UNLEARN_TOFU_DIR (the benchmark never downloads)")

    import torch

    from lit_unlearn.data import load_tofu

    torch.set_num_threads(args.threads)

    load_tofu("full", data_dir)  # fail in seconds, with the fix, when the TOFU folder is wrong
    cache = Path(args.cache_dir).resolve()
    if args.probe_memory:
        probe_dir = cache / "benchmark" / "memory_probe" / METHODS[args.probe_memory].name.replace("+", "_")
        probe_memory(METHODS[args.probe_memory], args.lrs[0], args.steps, cache / "target", probe_dir, args.data_dir)
        return 0
    figures = Path(args.out).resolve() / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sweep_start = time.perf_counter()
    plan = EvalPlan(args.max_new_tokens, args.max_items or None)
    from lit_unlearn.quickstart import config_path

    target_config = Path(args.target_config) if args.target_config else config_path("finetune_target")
    retain_config = Path(args.retain_config) if args.retain_config else config_path("finetune_retain")
    target, retain_eval, target_summary, retain_summary = _reference_evals(
        cache, args.data_dir, plan, args.rebuild, target_config, retain_config
    )
    _say(f"target: FQ {_fmt(target_summary['forget_quality'])}, MU {_fmt(target_summary['model_utility'])}")

    todo = [(METHODS[m], lr) for m in args.methods for lr in args.lrs]
    if args.time_one:
        todo = [(METHODS["GA"], args.lrs[0])]
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for index, (method, lr) in enumerate(todo, 1):
        run_dir = cache / "benchmark" / "runs" / f"{_run_name(method, lr, args.steps)}_{plan.tag}"
        record_path = run_dir / "run.json"
        key = (cache / "target" / "recipe.sha256").read_text()
        if not args.force and record_path.is_file():
            record = json.loads(record_path.read_text())
            if record.get("target_recipe") == key:
                _say(f"[{index}/{len(todo)}] {method.name} lr {lr:g}: cached")
                runs.append(record)
                continue
        _say(f"[{index}/{len(todo)}] {method.name} lr {lr:g}: unlearning {args.steps} steps")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        try:
            record = unlearn_and_evaluate(
                method, lr, args.steps, target, retain_eval, run_dir, args.data_dir, plan, args.keep_models
            )
        except Exception as err:  # one broken method must not cost the rest of a 30-minute sweep; it is reported
            _say(f"[{index}/{len(todo)}] {method.name} lr {lr:g}: FAILED: {type(err).__name__}: {err}")
            failures.append({"method": method.name, "lr": lr, "error": f"{type(err).__name__}: {err}"})
            continue
        record["target_recipe"] = key
        record_path.write_text(json.dumps(record, indent=1, default=float))
        s = record["summary"]
        _say(
            f"[{index}/{len(todo)}] {method.name} lr {lr:g}: FQ {_fmt(s['forget_quality'])}, "
            f"MU {_fmt(s['model_utility'])}, forget ROUGE-L {_fmt(s.get('forget/rouge_l_recall'))}; "
            f"fit {record['wall_s']:.0f} s, eval {record['eval_s']:.0f} s, peak RSS {record['peak_rss_mib']:.0f} MiB "
            f"(+{record['rss_increase_mib']:.0f})"
        )
        runs.append(record)
    if args.time_one:
        _say(f"timing done in {time.perf_counter() - sweep_start:.0f} s")
        return 0

    probes = {}
    if args.memory_probes:
        probes = fresh_process_memory(args.methods, args.lrs[0], args.steps, cache, args.data_dir, args.threads)
    best = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        chosen = choose_best(
            [r for r in runs if r["method"] == name], target_summary["model_utility"], args.keep_utility
        )
        best[name] = chosen["lr"]
    result = {
        "settings": {
            "forget_split": "forget01",
            "target_config": str(target_config),
            "retain_config": str(retain_config),
            "steps": args.steps,
            "lrs": args.lrs,
            "methods": args.methods,
            "max_new_tokens": args.max_new_tokens,
            "max_items": plan.max_items,
            "eval_splits": list(EVAL_SPLITS),
            "keep_utility": args.keep_utility,
            "g_effect": {"every_n_steps": 5, "coarse_groups": True, "realised_change": False},
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "reference": {"target": target_summary, "retain": retain_summary},
        "best_lr": best,
        "pareto_front": pareto_front(runs),
        "failures": failures,
        "fresh_process_memory": probes,
        "runs": [{k: v for k, v in r.items() if k != "g_effect_history"} for r in runs],
        "sweep_wall_s": time.perf_counter() - sweep_start,
    }
    (figures / "tofu_tiny.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    write_outputs(result, figures)
    _say(f"sweep done in {result['sweep_wall_s']:.0f} s; wrote {figures}/tofu_tiny.json, tables and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
