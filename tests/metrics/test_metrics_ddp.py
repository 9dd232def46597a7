"""Every Metric synchronises across processes: 2 CPU processes (gloo) with interleaved updates give the result of
the functional form on the union of all batches (torchmetrics' DDP test pattern)."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
)
from lit_unlearn.metrics.functional.truth_ratio import truth_ratios

WORLD = 2
NUM_BATCHES = 4  # batch b goes to rank b % WORLD
PREDS = ["the cat sat", "a dog ran far away", "blue sky", "red", "Paris is in France", "x y z", "one two", "tea"]
TARGETS = ["the cat sat on the mat", "dogs run", "the sky is blue", "red wine", "France", "x z", "two one", "coffee"]


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (NUM_BATCHES * 3, 6), generator=gen)
    target[:, :2] = -100
    noise = torch.randint(0, 3, target.shape, generator=gen)
    preds = torch.where(torch.rand(target.shape, generator=gen) < 0.7, target, noise)
    return {
        "nll": torch.rand(NUM_BATCHES * 3, generator=gen, dtype=torch.float64) * 3,
        "pert": torch.rand(NUM_BATCHES * 3, 4, generator=gen, dtype=torch.float64) * 3,
        "preds": preds,
        "target": target,
        "logps": -torch.rand(NUM_BATCHES * 3, 6, generator=gen, dtype=torch.float64) * 4,
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
    for b in range(rank, NUM_BATCHES, WORLD):
        rows = slice(3 * b, 3 * b + 3)
        metrics["probability"].update(data["nll"][rows])
        metrics["normalized"].update(data["nll"][rows], data["pert"][rows])
        metrics["forget_tr"].update(data["nll"][rows], data["pert"][rows])
        metrics["other_tr"].update(data["nll"][rows], data["pert"][rows])
        metrics["es"].update(data["preds"][rows], data["target"][rows])
        metrics["em"].update(data["preds"][rows], data["target"][rows])
        metrics["auc"].update(data["logps"][rows], data["target"][rows] != -100, b % 2 == 0)
        metrics["rouge"].update(PREDS[2 * b : 2 * b + 2], TARGETS[2 * b : 2 * b + 2])
    out = {name: metric.compute().item() for name, metric in metrics.items()}
    out["ratios"] = sorted(metrics["forget_tr"].ratios().tolist())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_sync_across_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    data = _data()
    mask = data["target"] != -100
    member_rows = torch.cat([torch.arange(3 * b, 3 * b + 3) for b in range(0, NUM_BATCHES, 2)])
    other_rows = torch.cat([torch.arange(3 * b, 3 * b + 3) for b in range(1, NUM_BATCHES, 2)])
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
        assert results[rank]["ratios"] == pytest.approx(sorted(truth_ratios(data["nll"], data["pert"]).tolist()))
