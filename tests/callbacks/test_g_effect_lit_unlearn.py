"""GEffectCallback on the project's own unlearning modules (the callback itself never imports lit_unlearn)."""

import copy
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from callbacks import GEffectCallback
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair


def _part(tokenizer, rows: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    encoded = [encode_pair(tokenizer, q, a, "qa", 128) for q, a in rows]
    return pad_sequences(
        [e["input_ids"] for e in encoded], tokenizer.pad_token_id, labels=[e["labels"] for e in encoded]
    )


def _rows(tofu_dir: Path, name: str, n: int) -> list[tuple[str, str]]:
    with open(tofu_dir / f"{name}.json") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(n), strict=False)]
    return [(r["question"], r["answer"]) for r in rows]


@pytest.mark.parametrize("name", ["GradDiff", "NPO"])
def test_unlearning_modules_plug_in(name: str, tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path) -> None:
    import lit_unlearn

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = {"forget": _part(tok, _rows(tofu_dir, "forget01", 3)), "retain": _part(tok, _rows(tofu_dir, "retain90", 3))}
    torch.manual_seed(0)
    module = getattr(lit_unlearn, name)(model_name_or_path=str(tiny_model_dir), lr=1e-3, warmup_epochs=0.0)
    initial = copy.deepcopy(module)
    cb = GEffectCallback(per_instance=True, realised_change=True, measure_update=True, save_plot=False)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    rows = {(r["risk"], r["group"]): r for r in cb.history if r["step"] == 0}
    groups = [g for (risk, g), r in rows.items() if risk == "forget" and r["level"] == "group"]
    assert groups == ["embedding", "layer_00", "layer_01", "final_norm", "lm_head"]
    assert len([r for r in cb.instance_history if r["step"] == 0 and r["risk"] == "forget"]) == 3

    # Naive reference at θ_0: the objective gradient of the module's own training_step (the frozen NPO reference
    # model has no gradient and does not count), dotted with the gradient of each risk.
    params = [p for p in initial.model.parameters() if p.requires_grad]
    g = torch.autograd.grad(initial.training_step(batch, 0), params)
    for risk_name, risk in initial.risk_losses([batch]).items():
        grads = torch.autograd.grad(risk, params)
        expected = sum(float((a * b).sum()) for a, b in zip(grads, g, strict=True))
        assert rows[(risk_name, "total")]["g_effect"] == pytest.approx(expected, rel=1e-4)
    # Gradient ascent on the forget NLL raises it: the unlearning G-effect is negative.
    assert rows[("forget", "total")]["g_effect"] < 0
