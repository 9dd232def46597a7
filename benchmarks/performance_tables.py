"""The tables of ``docs/performance.md``, printed as Markdown from the JSON the two benchmarks wrote.

Usage::

    python benchmarks/step_memory.py --json docs/figures/step_memory.json
    python benchmarks/g_effect_overhead.py --json docs/figures/g_effect_overhead.json  # first rename the last run
    python benchmarks/performance_tables.py          # paste its output into docs/performance.md

A new overhead run of the same code goes in :data:`OVERHEAD_RUNS` (the previous ``g_effect_overhead.json`` renamed).
"""

import argparse
import json
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"

TIME_TARGETS = {
    "g_effect every step": 2.1,
    "g_effect every step, graph reuse": 1.7,
    "g_effect every step + terms": 2.6,
    "g_effect every step + per-instance (objective)": 3.5,
    "g_effect every 10 steps": 1.12,
}
"""The issues' targets for ``benchmarks/g_effect_overhead.py``: time per step over the plain step's, at most."""

OVERHEAD_RUNS = ("g_effect_overhead_run5.json", "g_effect_overhead.json")
"""The overhead runs of the current code, oldest first (the last one is the table's)."""


def same_first_loss(ours: float, usual: float) -> bool:
    """Whether two implementations computed the same first loss, up to float32 summation order."""
    return abs(ours - usual) <= 1e-4 * abs(usual) + 1e-5


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def step_memory_tables(record: dict[str, Any]) -> str:
    """Per configuration: CPU s, step and process peak, first loss; then ours / usual."""
    lines = [
        _row(["configuration", "CPU s/step", "step peak GB", "process peak GB", "first loss"]),
        _row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for name, s in record["configurations"].items():
        lines.append(
            _row(
                [
                    name,
                    f"{s['cpu_s']:.1f}",
                    f"{s['step_peak'] / 1e9:.3f}",
                    f"{s['process_peak'] / 1e9:.3f}",
                    f"{s['loss']:.5f}".replace("-", "−"),
                ]
            )
        )
    lines += ["", _row(["ours / usual", "step peak", "process peak", "CPU time", "same first loss"])]
    lines.append(_row(["---", "---:", "---:", "---:", "---"]))
    losses = {name: s["loss"] for name, s in record["configurations"].items()}
    for name, r in record["ratios_to_usual"].items():
        usual = losses[name.split(",")[0] + ", usual"]
        same = "yes" if same_first_loss(losses[name], usual) else "NO"
        lines.append(_row([name, f"{r['step_peak']:.2f}", f"{r['process_peak']:.2f}", f"{r['cpu_s']:.2f}", same]))
    g = record["g_effect_every_step"]
    lines += [
        "",
        f"G-effect callback on the NPO + GD step (ours), every step: {g['time']:.2f}× the CPU time, "
        f"{g['step_peak']:.2f}× the step peak; every 10 steps (derived): {(g['time'] + 9) / 10:.2f}×.",
    ]
    return "\n".join(lines)


def g_effect_overhead_table(record: dict[str, Any]) -> str:
    """Per configuration: amortised ms/step, ratio, extra peak, peak ratio, and the parameter-dominated extra peak."""
    grad = record["model"]["gradient_bytes"]
    small = record.get("small_batch_extra_peak_bytes", {})
    lines = [
        _row(["configuration", "ms/step", "× plain", "extra peak MiB", "peak ratio", "resident MiB", "b=1 extra/grad"]),
        _row(["---", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for name, c in record["configurations"].items():
        extra_small = f"{small[name] / grad:.2f}" if name in small else "–"
        lines.append(
            _row(
                [
                    name,
                    f"{c['ms_per_step']:.1f}",
                    f"{c['ratio']:.2f}",
                    f"{c['extra_peak_bytes'] / 2**20:.2f}",
                    f"{c['peak_ratio']:.2f}",
                    f"{c['resident_bytes'] / 2**20:.2f}",
                    extra_small,
                ]
            )
        )
    return "\n".join(lines)


def overhead_targets_table(records: dict[str, dict[str, Any]]) -> str:
    """Each timed target's ratio to the plain step in every run (one column per JSON file), and how many runs met it."""
    names = list(records)
    lines = [
        _row(["configuration", "target", *[f"`{n}`" for n in names], "met"]),
        _row(["---", "---:", *["---:"] * len(names), "---"]),
    ]
    for config, target in TIME_TARGETS.items():
        ratios = [records[n]["configurations"][config]["ratio"] for n in names]
        met = sum(r <= target for r in ratios)
        lines.append(_row([config, f"≤ {target:g}×", *[f"{r:.2f}×" for r in ratios], f"{met} of {len(ratios)}"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step-memory", type=Path, default=FIGURES / "step_memory.json")
    parser.add_argument("--g-effect-overhead", type=Path, default=FIGURES / "g_effect_overhead.json")
    args = parser.parse_args()
    for title, path, render in (
        ("step_memory", args.step_memory, step_memory_tables),
        ("g_effect_overhead", args.g_effect_overhead, g_effect_overhead_table),
    ):
        record = json.loads(path.read_text())
        print(f"<!-- {title}: {record['command']} (torch {record['torch']}) -->\n")
        print(render(record))
        print()
    runs = {name: json.loads((args.g_effect_overhead.parent / name).read_text()) for name in OVERHEAD_RUNS}
    print("<!-- g_effect_overhead targets, every run of the current code -->\n")
    print(overhead_targets_table(runs))


if __name__ == "__main__":
    main()
