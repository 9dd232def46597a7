"""``backward_per_part``: the unlearn term's backward before the retain forward, with the same gradient."""

from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader
from trainers import quiet_trainer

import lit_unlearn
from callbacks import GEffectCallback

# GradDiff and NPO + KL (a reference forward, the KL term) in the default run; three more objectives, each with a
# forget term of its own shape (three parts, hidden states, a dual variable), in `make test-slow`.
CASES = [
    pytest.param("GradDiff", {}, id="GradDiff"),
    pytest.param("NPO", {"retain_loss": "kl"}, id="NPO"),
    pytest.param("IdkDPO", {}, id="IdkDPO", marks=pytest.mark.slow),
    pytest.param(
        "RMU",
        {"layer": 1, "trainable_params": r"layers\.(0|1)\.mlp\.down_proj\.weight"},
        id="RMU",
        marks=pytest.mark.slow,
    ),
    pytest.param("PDU", {"epsilon": 0.3}, id="PDU", marks=pytest.mark.slow),
]


class GradientsBeforeStep(Callback):
    """Copies of the accumulated gradient of every optimiser step, as the optimiser receives it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.steps.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def assert_same_gradient(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal up to float32 summation order: the per-part path adds the two terms' gradients in another order, so an
    element may differ by a few ulps of the tensor's largest entries, not of its own value."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


def _micro_batches(batch: dict) -> list[dict]:
    """Two micro-batches: the fixture's rows, then the same rows in reverse order."""
    flipped = {part: {k: v.flip(0) for k, v in tensors.items()} for part, tensors in batch.items()}
    return [batch, flipped]


def _fit(name: str, kwargs: dict, model_dir: Path, batch: dict, root: Path, **options: Any) -> GradientsBeforeStep:
    torch.manual_seed(0)
    callbacks = options.pop("callbacks", [])
    grads = GradientsBeforeStep()
    module = getattr(lit_unlearn, name)(model_name_or_path=str(model_dir), lr=1e-3, warmup_epochs=0.0, **kwargs)
    module.backward_per_part = options.pop("backward_per_part")
    trainer = quiet_trainer(root, [*callbacks, grads], accumulate_grad_batches=2, **options)
    trainer.fit(module, train_dataloaders=DataLoader(_micro_batches(batch) * 2, batch_size=None))
    return grads


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_same_accumulated_gradient_as_one_backward(
    name: str, kwargs: dict, tiny_model_dir: Path, batch: dict, tmp_path: Path
) -> None:
    # Two optimiser steps of two micro-batches each: the second starts from weights the first moved.
    per_part = _fit(name, kwargs, tiny_model_dir, batch, tmp_path / "a", backward_per_part=True, max_steps=2)
    single = _fit(name, kwargs, tiny_model_dir, batch, tmp_path / "b", backward_per_part=False, max_steps=2)
    assert len(per_part.steps) == len(single.steps) == 2
    for got, expected in zip(per_part.steps, single.steps, strict=True):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert_same_gradient(got[key], value, key)


def test_unlearn_gradient_is_in_grad_before_the_retain_forward(tiny_model_dir: Path, batch: dict) -> None:
    module = lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), backward_per_part=True)
    module.trainer = Mock(accumulate_grad_batches=1, optimizers=[])
    head = module.model.lm_head.weight
    seen: list[bool] = []
    handle = module.model.register_forward_pre_hook(lambda *_: seen.append(head.grad is not None))
    try:
        loss = module.training_step(batch, 0)
    finally:
        handle.remove()
    # Forget forward (nothing in .grad yet), then the retain forward after the unlearn term's backward.
    assert seen == [False, True]
    # The loss still has the full objective's value, and only the regulariser's graph.
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("world_size", "scaler", "culprit"), [(2, None, "2 process"), (1, Mock(), "precision '16-mixed'")]
)
def test_refuses_ddp_and_fp16_scaling(
    world_size: int, scaler: Any, culprit: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    module = lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), backward_per_part=True)
    module.trainer = Mock(world_size=world_size, scaler=scaler, precision="16-mixed" if scaler else "32-true")
    with pytest.raises(ValueError, match=rf"backward_per_part=True.*{culprit}.*Set backward_per_part=False"):
        module.on_fit_start()


def test_steps_the_g_effect_callback_records_keep_one_backward(
    tiny_model_dir: Path, batch: dict, tmp_path: Path
) -> None:
    # Measured steps record the step's terms (one backward), the others take the per-part path: the G-effects and
    # the gradients equal a run without backward_per_part.
    runs = {}
    for per_part in (True, False):
        cb = GEffectCallback(terms=True, every_n_steps=2, group_by="none", save_plot=False)
        grads = _fit(
            "NPO",
            {},
            tiny_model_dir,
            batch,
            tmp_path / str(per_part),
            backward_per_part=per_part,
            max_steps=2,
            callbacks=[cb],
        )
        runs[per_part] = (cb.history, grads.steps)
    (history, steps), (expected_history, expected_steps) = runs[True], runs[False]
    assert [(r["step"], r["risk"], r["term"]) for r in history] == [
        (r["step"], r["risk"], r["term"]) for r in expected_history
    ]
    assert {r["term"] for r in history} == {"total", "unlearn", "regularizer"}
    for row, expected in zip(history, expected_history, strict=True):
        assert row["g_effect"] == pytest.approx(expected["g_effect"], rel=1e-5, abs=1e-9)
    for got, expected in zip(steps, expected_steps, strict=True):
        for key, value in expected.items():
            assert_same_gradient(got[key], value, key)
