"""docs/performance.md's tables are the ones benchmarks/performance_tables.py prints from the committed JSON."""

import contextlib
import io
import sys
from pathlib import Path

import benchmark_scripts

REPO = Path(__file__).resolve().parents[1]


def _tables(text: str) -> list[str]:
    """The Markdown tables of ``text``: runs of consecutive lines that start with ``|``."""
    blocks, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def test_every_printed_table_is_on_the_page() -> None:
    tables = benchmark_scripts.load("performance_tables")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        sys_argv, sys.argv = sys.argv, ["performance_tables.py"]
        try:
            tables.main()
        finally:
            sys.argv = sys_argv
    printed = _tables(out.getvalue())
    assert len(printed) == 4  # step memory (two), the overhead run, the overhead targets across runs
    page = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    for table in printed:
        assert table in page, table.splitlines()[0]


def test_targets_table_counts_the_runs_that_met_each_target() -> None:
    tables = benchmark_scripts.load("performance_tables")
    config = "g_effect every step, graph reuse"
    runs = {
        name: {"configurations": {c: {"ratio": 1.0} for c in tables.TIME_TARGETS} | {config: {"ratio": ratio}}}
        for name, ratio in (("a.json", 1.69), ("b.json", 1.71))
    }
    row = next(line for line in tables.overhead_targets_table(runs).splitlines() if line.startswith(f"| {config} |"))
    assert row == f"| {config} | ≤ 1.7× | 1.69× | 1.71× | 1 of 2 |"
