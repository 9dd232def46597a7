"""GEffectCallback(reuse_step_forward=True): the risks from training_step's own forward, no extra forward pass.

Against the default mode (a forward of the risks' own), on the tiny Llama without dropout: every G-effect equal within
1e-5 relative, with gradient accumulation, unmeasured steps in between, and the retain KL term's reference.
"""

import json
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from g_effect_modules import MLPUnlearner
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from trainers import quiet_trainer
from transformers import AutoTokenizer

import lit_unlearn
from callbacks import GEffectCallback, SupportsStepRisks
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair


def _batches(tiny_model_dir: Path, tofu_dir: Path, n: int) -> list[dict[str, Any]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def part(split: str, start: int) -> dict[str, torch.Tensor]:
        with open(tofu_dir / f"{split}.json") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(start + 2), strict=False)][start:]
        encoded = [encode_pair(tokenizer, r["question"], r["answer"], "qa", 128) for r in rows]
        return pad_sequences(
            [e["input_ids"] for e in encoded], tokenizer.pad_token_id, labels=[e["labels"] for e in encoded]
        )

    return [{"forget": part("forget01", 2 * i), "retain": part("retain90", 2 * i)} for i in range(n)]


def _run(reuse: bool, retain_loss: str, batches: list[dict[str, Any]], model_dir: Path, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    module = lit_unlearn.NPO(model_name_or_path=str(model_dir), lr=1e-3, warmup_epochs=0.0, retain_loss=retain_loss)
    forwards: list[int] = []
    module.model.register_forward_hook(lambda *_: forwards.append(module.global_step))
    # terms=True: the unlearn term's backward (SupportsSkipUnlearnBackward) must keep the graph the risks reuse.
    cb = GEffectCallback(every_n_steps=2, measure_update=True, terms=True, save_plot=False, reuse_step_forward=reuse)
    trainer = quiet_trainer(root, [cb], max_steps=3, accumulate_grad_batches=2)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert module.step_risks() == [], "no graph is left behind"
    return {"history": cb.history, "forwards": forwards}


# KL: the retain risk comes from the retain forward whose logits also feed the KL term (and NPO's reference runs).
@pytest.mark.parametrize("retain_loss", ["kl", pytest.param("nll", marks=pytest.mark.slow)])
def test_reused_forward_gives_the_default_g_effects(
    retain_loss: str, tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    assert issubclass(lit_unlearn.NPO, SupportsStepRisks)
    batches = _batches(tiny_model_dir, tofu_dir, 6)
    default = _run(False, retain_loss, batches, tiny_model_dir, tmp_path / "default")
    reused = _run(True, retain_loss, batches, tiny_model_dir, tmp_path / "reused")

    rows = {(r["step"], r["risk"], r["term"], r["group"]): r for r in default["history"]}
    got = {(r["step"], r["risk"], r["term"], r["group"]): r for r in reused["history"]}
    assert {key[0] for key in rows} == {0, 2}
    assert {key[2] for key in rows} == {"unlearn", "regularizer", "total"}
    assert set(got) == set(rows)
    for key, row in rows.items():
        assert got[key]["risk_value"] == pytest.approx(row["risk_value"], rel=1e-6), key
        assert got[key]["g_effect"] == pytest.approx(row["g_effect"], rel=1e-5, abs=1e-9), key
        if key[2] == "total":  # the realised update is measured on the total
            assert got[key]["update_change"] == pytest.approx(row["update_change"], rel=1e-5, abs=1e-9), key

    # Training forwards: 2 parts × 2 micro-batches per step. The default mode adds one forward per risk and
    # micro-batch on the measured steps 0 and 2; the reused mode adds none.
    def per_step(forwards: list[int]) -> list[int]:
        return [forwards.count(step) for step in range(3)]

    assert per_step(reused["forwards"]) == [4, 4, 4]
    assert per_step(default["forwards"]) == [8, 4, 8]


def test_reuse_refusals() -> None:
    cb = GEffectCallback(reuse_step_forward=True)
    with pytest.raises(TypeError, match="SupportsStepRisks.*MLPUnlearner.*keep_step_risks"):
        cb.setup(Mock(spec=Trainer, strategy=Mock(), world_size=1), MLPUnlearner(), "fit")
    with pytest.raises(NotImplementedError, match="single process only.*reuse_step_forward=False"):
        cb.setup(Mock(spec=Trainer, strategy=Mock(), world_size=2), MLPUnlearner(), "fit")
