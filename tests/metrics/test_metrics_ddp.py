"""On 2 CPU processes (gloo): every Metric class gathers its states and counts a repeated item once, and the TOFU
evaluation that ``validate``/``test`` run (Lightning's DDP loop over the real evaluation loaders) equals the
single-process one, file for file. Processes are forked: spawned ones would import torch, transformers and Lightning
again, which alone takes longer than the evaluation."""

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from reference_data import PHI_REFERENCE
from trainers import quiet_trainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.data import EVAL_SPLITS, tofu_eval_dataloaders
from lit_unlearn.eval import EvalSettings, TOFUEvalMixin
from lit_unlearn.metrics import (
    AnswerProbability,
    ExactMemorization,
    ExtractionStrength,
    MinKMembershipAUC,
    ROUGELRecall,
    TruthRatio,
    answer_probability,
    exact_memorization,
    extraction_strength,
    membership_auc,
    min_k_scores,
    rouge_l_recall,
    truth_ratio,
    truth_ratios,
)

WORLD = 2
NUM_BATCHES = 4  # batch b goes to rank b % WORLD; rank 1 also repeats batch 0, as DistributedSampler pads its shard
PREDS = ["the cat sat", "a dog ran far away", "blue sky", "red", "Paris is in France", "x y z", "one two", "tea"]
TARGETS = ["the cat sat on the mat", "dogs run", "the sky is blue", "red wine", "France", "x z", "two one", "coffee"]


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (NUM_BATCHES * 2, 6), generator=gen)
    target[:, :2] = -100
    noise = torch.randint(0, 3, target.shape, generator=gen)
    preds = torch.where(torch.rand(target.shape, generator=gen) < 0.7, target, noise)
    return {
        "nll": torch.rand(NUM_BATCHES * 2, generator=gen, dtype=torch.float64) * 3,
        "pert": torch.rand(NUM_BATCHES * 2, 4, generator=gen, dtype=torch.float64) * 3,
        "preds": preds,
        "target": target,
        "logps": -torch.rand(NUM_BATCHES * 2, 6, generator=gen, dtype=torch.float64) * 4,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    data = _data()
    metrics = {
        "probability": AnswerProbability(),
        "normalized": AnswerProbability(normalized=True),
        "forget_tr": TruthRatio("closer_to_1_better"),
        "other_tr": TruthRatio("true_better"),
        "es": ExtractionStrength(),
        "em": ExactMemorization(),
        "auc": MinKMembershipAUC(k=0.5),
        "rouge": ROUGELRecall(),
    }
    batches = list(range(rank, NUM_BATCHES, WORLD)) + ([0] if rank == 1 else [])
    for b in batches:
        rows = slice(2 * b, 2 * b + 2)
        ids = torch.arange(2 * b, 2 * b + 2)
        metrics["probability"].update(data["nll"][rows], indices=ids)
        metrics["normalized"].update(data["nll"][rows], data["pert"][rows], ids)
        metrics["forget_tr"].update(data["nll"][rows], data["pert"][rows], ids)
        metrics["other_tr"].update(data["nll"][rows], data["pert"][rows], ids)
        metrics["es"].update(data["preds"][rows], data["target"][rows], ids)
        metrics["em"].update(data["preds"][rows], data["target"][rows], ids)
        metrics["auc"].update(data["logps"][rows], data["target"][rows] != -100, b % 2 == 0, ids)
        metrics["rouge"].update(PREDS[rows], TARGETS[rows], ids)
    out = {name: metric.compute().item() for name, metric in metrics.items()}
    out["ratios"] = metrics["forget_tr"].ratios().tolist()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_sync_across_two_processes_and_count_repeated_items_once(tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    data = _data()
    mask = data["target"] != -100
    member_rows = torch.cat([torch.arange(2 * b, 2 * b + 2) for b in range(0, NUM_BATCHES, 2)])
    other_rows = torch.cat([torch.arange(2 * b, 2 * b + 2) for b in range(1, NUM_BATCHES, 2)])
    scores = min_k_scores(data["logps"], mask, 0.5)
    expected = {
        "probability": answer_probability(data["nll"]).item(),
        "normalized": answer_probability(data["nll"], data["pert"]).item(),
        "forget_tr": truth_ratio(data["nll"], data["pert"], "closer_to_1_better").item(),
        "other_tr": truth_ratio(data["nll"], data["pert"], "true_better").item(),
        "es": extraction_strength(data["preds"], data["target"]).mean().item(),
        "em": exact_memorization(data["preds"], data["target"]).mean().item(),
        "auc": membership_auc(scores[member_rows], scores[other_rows]),
        "rouge": sum(rouge_l_recall(p, t) for p, t in zip(PREDS, TARGETS, strict=True)) / len(PREDS),
    }
    for rank in range(WORLD):
        for name, value in expected.items():
            assert results[rank][name] == pytest.approx(value, abs=1e-6), (rank, name)
        # Per-item values in row order, row 0 once although both processes saw it.
        assert results[rank]["ratios"] == pytest.approx(truth_ratios(data["nll"], data["pert"]).tolist())


RETAIN_REFERENCE = PHI_REFERENCE / "retain90_eval_log_aggregated.json"
ROWS = 5  # per split: 2 processes get rows 0, 2, 4 and 1, 3, 0 (the sampler repeats row 0)


class TinyEvalModule(TOFUEvalMixin, LightningModule):
    """The tiny model under the evaluation mixin; records the rows each process evaluated."""

    def __init__(self, model_dir: Path, settings: EvalSettings, seen_dir: Path) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.eval_settings = settings
        self.seen_dir = seen_dir
        self.seen: dict[str, list[int]] = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seen.setdefault(batch["split"], []).extend(batch["index"].tolist())
        super().validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_end(self) -> None:
        (self.seen_dir / f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))


def _validate(model_dir: Path, out: Path, **trainer_args: Any) -> tuple[dict, dict, list[dict]]:
    """``Trainer.validate`` over the forget01 evaluation loaders; the summary, per-item records and rows per rank."""
    out.mkdir()
    reference = str(RETAIN_REFERENCE)  # forget quality against Phi-1.5's logs: any retain sample exercises the path
    settings = EvalSettings(max_new_tokens=4, max_items=ROWS, output_dir=str(out), retain_eval_path=reference)
    module = TinyEvalModule(model_dir, settings, out)
    # One row per batch: padding then depends on the row alone, so processes and the reference compute bit-identical
    # per-row numbers (with batches of 2, other neighbours change the float32 rounding in the last digit).
    loaders = tofu_eval_dataloaders(module.tokenizer, "forget01", batch_size=1, max_items=ROWS)
    trainer = quiet_trainer(out, **trainer_args)
    trainer.validate(module, dataloaders=loaders, verbose=False)
    folder = out / "tofu_eval" / "val-epoch=0-step=0"
    summary = json.loads((folder / "summary.json").read_text())
    items = json.loads((folder / "eval_items.json").read_text())["splits"]
    seen = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return summary, items, seen


def test_ddp_validation_equals_single_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        # Lightning gives each of the 2 processes cpu_count // 2 threads: the reference runs with as many, so that
        # every matrix product reduces in the same order and the numbers can be compared exactly.
        torch.set_num_threads(max(1, (torch.multiprocessing.cpu_count() or 2) // 2))
        single = _validate(tiny_model_dir, tmp_path / "single", devices=1)
    finally:
        torch.set_num_threads(threads)
    # Forked processes inherit the imported modules (spawned ones would import torch, transformers and Lightning
    # again, which alone takes longer than the evaluation).
    ddp = _validate(tiny_model_dir, tmp_path / "ddp", devices=2, strategy="ddp_fork")

    # The processes really split the rows, and the sampler really repeated one.
    assert len(ddp[2]) == 2
    for split in EVAL_SPLITS:
        assert sorted(ddp[2][0][split]) == [0, 2, 4]
        assert sorted(ddp[2][1][split]) == [0, 1, 3]
    assert single[2][0] == {split: list(range(ROWS)) for split in EVAL_SPLITS}

    summary, items = ddp[0], ddp[1]
    assert summary == single[0]
    assert items == single[1]
    assert {split: [r["index"] for r in rows] for split, rows in items.items()} == dict.fromkeys(
        EVAL_SPLITS, list(range(ROWS))
    )
    assert summary["num_items/forget"] == ROWS
    for key in ("model_utility", "forget_quality", "ks_statistic", "mia_min_k_auc", "privleak"):
        assert summary[key] is not None, key
