"""``lit-unlearn summarize EVAL [--retain RETAIN_EVAL]``: TOFU's numbers of a finished evaluation as one JSON object.

Reads this project's ``eval_items.json`` (or its folder) and the original TOFU ``eval_log_aggregated.json``.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lit_unlearn.eval.aggregate import summarize_records
from lit_unlearn.eval.io import load_eval
from lit_unlearn.metrics.functional.aggregates import MODEL_UTILITY_COMPONENTS


def summarize(eval_path: str | Path, retain_path: str | Path | None = None) -> dict[str, Any]:
    """Recompute every TOFU number of an evaluation from its per-item values.

    Args:
        eval_path: this project's ``eval_items.json`` (or its folder) or an original TOFU
            ``eval_log_aggregated.json``.
        retain_path: the retain model's evaluation on the same forget split (forget quality, privleak reference).

    Returns:
        A flat dict with ``model_utility``, ``forget_quality``, the nine ``<split>/<metric>`` utility components and
        whatever else the records allow (see ``summarize_records``). Without ``retain_path``, forget quality and
        privleak fall back to the values stored with the evaluation, if any.
    """
    records, stored = load_eval(eval_path)
    reference = load_eval(retain_path)[0] if retain_path is not None else None
    summary = summarize_records(records, reference)
    if reference is None:
        for key in ("forget_quality", "ks_statistic", "privleak", "privleak_reference_auc"):
            if stored.get(key) is not None:
                summary[key] = stored[key]
    for key in MODEL_UTILITY_COMPONENTS:
        summary.setdefault(key, None)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the summary of ``EVAL`` as one JSON object; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lit-unlearn summarize",
        description="Print model utility, forget quality and the nine utility components of a TOFU evaluation "
        "(this project's eval_items.json or an original TOFU eval_log_aggregated.json) as one JSON object.",
    )
    parser.add_argument("eval_path", metavar="EVAL", help="evaluation file or folder of the evaluated model")
    parser.add_argument("--retain", metavar="RETAIN_EVAL", default=None, help="the retain model's evaluation")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.eval_path, args.retain)
    except (FileNotFoundError, ValueError) as err:
        print(f"lit-unlearn summarize: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
