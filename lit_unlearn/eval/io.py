"""Evaluation files: this project's per-item JSON, summary JSON and markdown table, and reading back either this
project's output or the original TOFU ``eval_log_aggregated.json``."""

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_unlearn.eval.items import Records

ITEMS_FILE = "eval_items.json"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"
TOFU_AGGREGATED_FILE = "eval_log_aggregated.json"
FORMAT = "lit-unlearn/tofu-eval"
FORMAT_VERSION = 1

TOFU_LEGACY_TASKS: dict[str, str] = {
    "eval_log_forget.json": "forget",
    "eval_log.json": "retain",
    "eval_real_author_wo_options.json": "real_authors",
    "eval_real_world_wo_options.json": "world_facts",
}
"""Original TOFU task files (keys of ``eval_log_aggregated.json``) → evaluation split."""


def _json_safe(value: Any) -> Any:
    """NaN/inf become null: JSON has no such numbers and other tools reject Python's ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The summary as markdown: headline numbers, the model-utility grid and the forget-set metrics."""

    def fmt(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4f}"
        return str(value)

    lines = ["| metric | value |", "|---|---|"]
    for key in ("forget_quality", "model_utility", "privleak", "mia_min_k_auc"):
        lines.append(f"| {key} | {fmt(summary.get(key))} |")
    lines += ["", "| split | probability | ROUGE-L recall | truth ratio |", "|---|---|---|---|"]
    for split in ("retain", "real_authors", "world_facts", "forget"):
        cells = [fmt(summary.get(f"{split}/{m}")) for m in ("probability", "rouge_l_recall", "truth_ratio")]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "| forget-set memorisation | value |", "|---|---|"]
    for key in ("extraction_strength", "exact_memorization"):
        lines.append(f"| {key} | {fmt(summary.get(f'forget/{key}'))} |")
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: str | Path, records: Records, summary: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``eval_items.json`` (per item, readable back as a retain reference), ``summary.json`` and ``summary.md``.

    Args:
        out_dir: the folder (created when missing).
        records: per-item records keyed by split (``TOFUEvaluator.records``), written as they are.
        summary: the flat summary (``TOFUEvaluator.compute``).
        metadata: what was evaluated, how (stored under ``metadata``).

    Returns:
        The written paths, keyed ``items``, ``summary``, ``table``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "metadata": dict(metadata or {}),
        "summary": dict(summary),
        "splits": {split: list(rows) for split, rows in records.items() if rows},
    }
    paths = {"items": out / ITEMS_FILE, "summary": out / SUMMARY_FILE, "table": out / TABLE_FILE}
    paths["items"].write_text(json.dumps(_json_safe(items), indent=1, ensure_ascii=False), encoding="utf-8")
    paths["summary"].write_text(json.dumps(_json_safe(dict(summary)), indent=2), encoding="utf-8")
    paths["table"].write_text(markdown_table(summary), encoding="utf-8")
    return paths


def _from_tofu_legacy(data: Mapping[str, Any], path: Path) -> dict[str, list[dict[str, Any]]]:
    """Records from the original TOFU aggregated log (per task: dicts keyed by item index as a string)."""
    records: dict[str, list[dict[str, Any]]] = {}
    for task, split in TOFU_LEGACY_TASKS.items():
        if task not in data:
            continue
        log = data[task]
        try:
            keys = sorted(log["avg_gt_loss"], key=int)
            rows = []
            for key in keys:
                row: dict[str, Any] = {
                    "index": int(key),
                    "answer_loss": float(log["avg_gt_loss"][key]),
                    "num_answer_tokens": log.get("num_token_gt", {}).get(key),
                    "perturbed_losses": [float(x) for x in log["average_perturb_loss"][key]],
                    "rouge_l_recall": float(log["rougeL_recall"][key]),
                    # On real authors / world facts this is the answer scored again as the truth ratio's base.
                    "paraphrased_loss": float(log["avg_paraphrased_loss"][key]),
                }
                if "generated_text" in log:
                    prompt, generation, truth = log["generated_text"][key]
                    row.update(question=prompt, generation=generation, answer=truth)
                rows.append(row)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path}: task {task!r} is not in the original TOFU eval-log format (missing or malformed "
                f"{err}); expected per-item dicts avg_gt_loss, average_perturb_loss, avg_paraphrased_loss and "
                "rougeL_recall."
            ) from err
        records[split] = rows
    return records


def resolve_eval_file(path: str | Path) -> Path:
    """The evaluation file behind ``path``: the file itself, or ``eval_items.json`` / ``eval_log_aggregated.json``
    inside a folder.

    Raises:
        FileNotFoundError: with the candidates tried.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in (ITEMS_FILE, TOFU_AGGREGATED_FILE):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"{p} holds neither {ITEMS_FILE} (this project's evaluation) nor {TOFU_AGGREGATED_FILE} (original TOFU); "
            "pass the evaluation file itself."
        )
    raise FileNotFoundError(f"Evaluation file {p} does not exist; pass an {ITEMS_FILE} or {TOFU_AGGREGATED_FILE}.")


def load_eval(path: str | Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Read an evaluation: this project's ``eval_items.json`` or an original TOFU ``eval_log_aggregated.json``.

    Returns:
        ``(records, stored_summary)``: per-item records keyed by split, and the summary stored with them (empty for
        TOFU logs).

    Raises:
        ValueError: when the file is in neither format.
    """
    file = resolve_eval_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err.msg}, line {err.lineno}).") from err
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        return {split: list(rows) for split, rows in data["splits"].items()}, dict(data.get("summary", {}))
    if isinstance(data, Mapping) and any(task in data for task in TOFU_LEGACY_TASKS):
        return _from_tofu_legacy(data, file), {}
    raise ValueError(
        f'{file} is neither this project\'s evaluation ({ITEMS_FILE} with "format": "{FORMAT}") nor an original '
        f"TOFU {TOFU_AGGREGATED_FILE} (with keys {list(TOFU_LEGACY_TASKS)})."
    )
