"""``evaluate``: a TOFU evaluation of an HF causal LM without a Trainer (scripts, the quickstart, benchmarks)."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn.data.evaluation import tofu_eval_dataloaders
from lit_unlearn.data.formatting import PromptFormat
from lit_unlearn.eval.evaluator import TOFUEvaluator, eval_datasets
from lit_unlearn.eval.io import write_outputs
from lit_unlearn.eval.settings import EvalSettings


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (nested in dicts/lists) on ``device``; strings and numbers untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    forget_split: str = "forget10",
    data_dir: str | None = None,
    settings: EvalSettings | None = None,
    prompt_format: PromptFormat = "auto",
    batch_size: int = 16,
    max_length: int = 512,
    splits: Sequence[str] | None = None,
    dataloaders: Mapping[str, DataLoader] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the TOFU evaluation splits.

    Runs the same per-batch code as ``TOFUEvalMixin`` (``TOFUEvaluator``), with a tqdm bar per split. The model is put
    in eval mode and restored afterwards.

    Args:
        model: an HF causal LM.
        tokenizer: its tokenizer.
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        data_dir: folder of the TOFU files (else ``$LIT_UNLEARN_TOFU_DIR``, else the Hub).
        settings: generation budget, item cap, retain reference, output folder.
        prompt_format: see ``lit_unlearn.data.formatting.PromptFormat``.
        batch_size: questions per batch.
        max_length: truncation length of teacher-forced sequences.
        splits: evaluation splits (default: forget, retain, real_authors, world_facts, holdout).
        dataloaders: ready-made loaders keyed by split (e.g. from ``lit_unlearn.data.tofu_eval_dataloaders``), built
            with ``settings.max_items``; overrides the data args.
        progress: show a progress bar per split on a terminal (tqdm's ``disable=None``: none when the output is
            redirected, where the bar's updates would fill the log).
        log: called with one line per finished split (items, seconds), for output shared with other processes,
            where progress bars would overwrite each other.

    Returns:
        ``{"summary": ..., "records": ..., "paths": ..., "seconds": ...}``: the flat summary (see
        ``lit_unlearn.eval.aggregate.summarize_records``), the per-item records by split, the written files (empty
        without ``settings.output_dir``) and the wall time of each split.
    """
    settings = settings or EvalSettings()
    if dataloaders is None:
        dataloaders = tofu_eval_dataloaders(
            tokenizer, forget_split, data_dir, prompt_format, batch_size, max_length, settings.max_items, splits
        )
    evaluator = TOFUEvaluator(tokenizer, settings)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seconds: dict[str, float] = {}
    try:
        for split, loader in dataloaders.items():
            start = time.perf_counter()
            for batch in tqdm(loader, desc=f"TOFU eval [{split}]", disable=None if progress else True, leave=False):
                evaluator.update(model, move_to_device(batch, device))
            seconds[split] = time.perf_counter() - start
            if log is not None:
                log(f"evaluated {split}: {len(loader.dataset)} items in {seconds[split]:.0f} s")
    finally:
        model.train(was_training)
    summary = evaluator.compute()
    records = evaluator.records(eval_datasets(dataloaders))
    paths = {}
    if settings.output_dir is not None and settings.write_outputs:
        metadata = {
            "forget_split": forget_split,
            "model": getattr(model.config, "_name_or_path", None) or type(model).__name__,
            "settings": asdict(settings),
        }
        paths = write_outputs(settings.output_dir, records, summary, metadata)
    return {"summary": summary, "records": records, "paths": paths, "seconds": seconds}
