"""Gradient checkpointing (``gradient_checkpointing=True``) under the G-effect callback: the same numbers as without.

Non-reentrant checkpointing recomputes each decoder block in the backward pass; the recomputed activations are the
stored ones, so every gradient, and so every G-effect (total, per group, per term, and both per-instance sides, the
objective side being forward-mode JVPs through the checkpointed blocks), is the run without it up to float rounding.
"""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sharded_runs import TermsCallback
from torch.utils.data import DataLoader
from trainers import quiet_trainer
from transformers import AutoTokenizer

import lit_unlearn
from callbacks import GEffectCallback
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair


def _batch(tiny_model_dir: Path, tofu_dir: Path) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def part(split: str) -> dict[str, torch.Tensor]:
        with open(tofu_dir / f"{split}.json") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(3), strict=False)]
        encoded = [encode_pair(tokenizer, r["question"], r["answer"], "qa", 128) for r in rows]
        return pad_sequences(
            [e["input_ids"] for e in encoded], tokenizer.pad_token_id, labels=[e["labels"] for e in encoded]
        )

    return {"forget": part("forget01"), "retain": part("retain90")}


def _run(name: str, checkpointing: bool, batch: dict[str, Any], model_dir: Path, root: Path) -> GEffectCallback:
    torch.manual_seed(0)
    module = getattr(lit_unlearn, name)(
        model_name_or_path=str(model_dir), lr=1e-3, warmup_epochs=0.0, gradient_checkpointing=checkpointing
    )
    assert module.model.is_activation_checkpointing is checkpointing
    cb = TermsCallback(terms=True, per_instance="risk", measure_update=True, save_plot=False)
    trainer = quiet_trainer(root, [cb], max_steps=2)
    trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    return cb


# NPO: GradDiff's retain term plus a frozen reference model, whose forward must stay outside the checkpointed graph.
@pytest.mark.parametrize("name", ["NPO"])
def test_checkpointing_leaves_every_g_effect_unchanged(
    name: str, tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    batch = _batch(tiny_model_dir, tofu_dir)
    plain = _run(name, False, batch, tiny_model_dir, tmp_path / "plain")
    checkpointed = _run(name, True, batch, tiny_model_dir, tmp_path / "checkpointed")

    rows = {(r["step"], r["risk"], r["term"], r["group"]): r for r in plain.history}
    got = {(r["step"], r["risk"], r["term"], r["group"]): r for r in checkpointed.history}
    assert set(got) == set(rows)
    assert {key[2] for key in rows} == {"total", "unlearn", "regularizer"}
    assert {key[0] for key in rows} == {0, 1}
    for key, row in rows.items():
        assert got[key]["g_effect"] == pytest.approx(row["g_effect"], rel=1e-5, abs=1e-9), key
        if row["update_change"] is not None:
            assert got[key]["update_change"] == pytest.approx(row["update_change"], rel=1e-5, abs=1e-9), key

    def instances(cb: GEffectCallback) -> dict[tuple[int, str, str, int], float]:
        return {(r["step"], r["risk"], r["side"], r["index"]): r["g_effect"] for r in cb.instance_history}

    expected = instances(plain)
    assert len(expected) == 2 * 2 * 3  # steps × risks × the 3 examples of each risk
    assert instances(checkpointed) == pytest.approx(expected, rel=1e-5, abs=1e-9)
