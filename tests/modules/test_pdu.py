"""PDU's dual variable: the worked example P2 through the real update, once per optimiser step, warm-up, checkpoints,
and the same λ on every rank."""

import json
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

import lit_unlearn
from lit_unlearn import losses
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair
from lit_unlearn.modules.base import ForgetTerm
from lit_unlearn.modules.pdu import PDU, dual_ascent

# Worked example P2 (objectives_more.md §4): F = 13, γ = 1, λ₀ = 100, η = 5, ε = 0.3.
P2_RETAIN = [0.25, 0.40, 0.35, 0.10]
P2_LOSS = [8.0, 22.975, 18.0125, -7.1]
P2_DUAL = [99.75, 100.25, 100.5, 99.5]


def _part(tokenizer, rows: list[tuple[str, str]]) -> dict[str, Tensor]:
    encoded = [encode_pair(tokenizer, q, a, "qa", 128) for q, a in rows]
    return pad_sequences(
        [e["input_ids"] for e in encoded], tokenizer.pad_token_id, labels=[e["labels"] for e in encoded]
    )


@pytest.fixture(scope="module")
def batches(tiny_model_dir, tofu_dir) -> list[dict]:
    """Four different forget/retain batches of two rows each (so every micro-batch has its own retain loss)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = {}
    for name in ("forget01", "retain_perturbed"):
        with open(tofu_dir / f"{name}.json") as f:
            rows[name] = [(r["question"], r["answer"]) for r in map(json.loads, f)][:8]
    return [
        {"forget": _part(tok, rows["forget01"][i : i + 2]), "retain": _part(tok, rows["retain_perturbed"][i : i + 2])}
        for i in range(0, 8, 2)
    ]


class Recorder(Callback):
    """λ after every micro-batch (a step's dual update runs before this hook of its last micro-batch)."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.dual: list[float] = []
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.dual.append(pl_module.dual)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.out_dir is not None:  # spawned ranks report through files
            record = {"dual": self.dual, "retain": pl_module.seen_retain}
            Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class SpyPDU(PDU):
    """PDU recording F, R and L of every micro-batch (values only; nothing it computes changes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen_forget: list[float] = []
        self.seen_retain: list[float] = []
        self.seen_loss: list[float] = []

    def forget_term(self, batch, reference) -> ForgetTerm:
        term = super().forget_term(batch, reference)
        self.seen_forget.append(term.value.item())
        return term

    def retain_term(self, retain, reference_logits) -> Tensor:
        value = super().retain_term(retain, reference_logits)
        self.seen_retain.append(value.item())
        return value

    def training_step(self, batch, batch_idx) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.seen_loss.append(loss.item())
        return loss


class ScriptedPDU(SpyPDU):
    """F and R replaced by P2's numbers (kept differentiable, weight 0); training_step and the dual update are PDU's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.script = iter(P2_RETAIN)

    def _zero(self) -> Tensor:
        return 0.0 * next(self.model.parameters()).float().sum()  # float32 even under bf16-true, like the real losses

    def forget_term(self, batch, reference) -> ForgetTerm:
        return ForgetTerm((13.0 + self._zero())[None])

    def retain_term(self, retain, reference_logits) -> Tensor:
        return next(self.script) + self._zero()


def _fit(
    module: PDU, data: list[dict], root: Path, callbacks: list, ckpt_path: Path | None = None, **kwargs
) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    trainer = Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None), ckpt_path=ckpt_path)
    return trainer


def test_dual_ascent_worked_example_p2() -> None:
    dual = 100.0
    for retain, loss, after in zip(P2_RETAIN, P2_LOSS, P2_DUAL, strict=True):
        assert 1.0 * 13.0 + dual * (retain - 0.3) == pytest.approx(loss, abs=1e-9)  # L is formed with the old λ
        dual = dual_ascent(dual, retain, epsilon=0.3, step_size=5.0)
        assert dual == pytest.approx(after, abs=1e-9)
    assert dual_ascent(0.5, 0.0, epsilon=0.3, step_size=5.0) == 0.0  # projected onto λ ≥ 0


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_worked_example_p2_through_training(precision, tiny_model_dir, batches, tmp_path) -> None:
    """bf16-true casts the module's floating buffers to bf16 (100.25 would become 100): λ must not be one."""
    module = ScriptedPDU(str(tiny_model_dir), epsilon=0.3, dual_step_size=5.0, retain_weight=100.0)
    recorder = Recorder()
    trainer = _fit(module, batches, tmp_path, [recorder], max_steps=4, precision=precision)
    assert module.seen_loss == pytest.approx(P2_LOSS, abs=1e-4)  # float32 losses
    assert recorder.dual == pytest.approx(P2_DUAL, abs=1e-5)
    assert float(trainer.callback_metrics["train/dual"]) == pytest.approx(P2_DUAL[2])  # λ that formed the last loss


def test_dual_moves_once_per_optimiser_step_with_accumulation(tiny_model_dir, batches, tmp_path) -> None:
    """accumulate_grad_batches=2: λ is the same for both micro-batches of a step, then moves by the step's mean R."""
    eps, eta = 0.0, 10.0  # R > ε = 0, so λ must grow at every optimiser step
    module = SpyPDU(str(tiny_model_dir), epsilon=eps, dual_step_size=eta, retain_weight=1.0)
    recorder = Recorder()
    _fit(module, batches, tmp_path, [recorder], max_steps=2, accumulate_grad_batches=2)
    r = module.seen_retain
    assert len(r) == 4
    assert len(set(r)) == 4
    first = dual_ascent(1.0, (r[0] + r[1]) / 2, eps, eta)
    second = dual_ascent(first, (r[2] + r[3]) / 2, eps, eta)
    assert recorder.dual == pytest.approx([1.0, first, first, second], rel=1e-6)
    assert first > 1.0
    # Each micro-batch's loss is γ·F + λ·(R − ε) with the λ of the step it belongs to.
    duals = [1.0, 1.0, first, first]
    expected = [f + lam * (ret - eps) for f, lam, ret in zip(module.seen_forget, duals, r, strict=True)]
    assert module.seen_loss == pytest.approx(expected, rel=1e-5)


def test_dual_rises_from_zero_and_waits_for_the_warmup(tiny_model_dir, batches, tmp_path) -> None:
    """λ₀ = 0 still computes R (the base class would skip a zero-weight retain term, freezing λ at 0 forever), and
    λ stays at λ₀ through the warm-up epoch."""
    module = SpyPDU(str(tiny_model_dir), epsilon=0.0, dual_step_size=1.0, dual_warmup_epochs=1, retain_weight=0.0)
    recorder = Recorder()
    _fit(module, batches[:2], tmp_path, [recorder], max_epochs=2)
    r = module.seen_retain
    assert len(r) == 4
    assert recorder.dual == pytest.approx([0.0, 0.0, r[2], r[2] + r[3]], rel=1e-6)


def test_fixed_dual_makes_epsilon_a_constant_shift(tiny_model_dir, batches) -> None:
    """With η = 0 (OpenUnlearning's primal_dual=False) L = γ·F + α·(R − ε): ε moves the value, not the gradient."""
    grads, values = [], []
    for eps in (0.1, 0.7):
        torch.manual_seed(0)
        module = PDU(str(tiny_model_dir), epsilon=eps, dual_step_size=0.0, forget_weight=0.5, retain_weight=2.0)
        loss = module.training_step(batches[0], 0)
        values.append(float(loss.detach()))
        grads.append(torch.autograd.grad(loss, list(module.model.parameters())))
        with torch.no_grad():
            forget = losses.pdu_forget(
                module.model(**_inputs(batches[0]["forget"])).logits, batches[0]["forget"]["labels"]
            )
            retain = losses.nll(*module.answer_logps(batches[0]["retain"]))
        assert values[-1] == pytest.approx(float(0.5 * forget + 2.0 * (retain - eps)), rel=1e-6)
    assert values[0] - values[1] == pytest.approx(2.0 * 0.6, rel=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def _inputs(part: dict) -> dict:
    return {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"]}


def test_dual_variable_survives_a_checkpoint(tiny_model_dir, batches, tmp_path) -> None:
    module = PDU(str(tiny_model_dir), epsilon=0.0, dual_step_size=3.0, retain_weight=1.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(module, batches, tmp_path, [checkpoint], max_steps=2, enable_checkpointing=True)
    assert module.dual > 1.0
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert saved[PDU.checkpoint_key] == module.dual
    restored = PDU.load_from_checkpoint(path)
    assert restored.dual == module.dual
    assert restored.epsilon == 0.0
    assert restored.dual_step_size == 3.0
    # Resuming the fit continues from the saved λ, not from α.
    resumed = SpyPDU(str(tiny_model_dir), epsilon=0.0, dual_step_size=3.0, retain_weight=1.0)
    recorder = Recorder()
    _fit(resumed, batches, tmp_path, [recorder], ckpt_path=path, max_steps=3)
    assert recorder.dual == pytest.approx([dual_ascent(module.dual, resumed.seen_retain[0], 0.0, 3.0)], rel=1e-6)
    # A checkpoint without λ (another objective's) is refused by name.
    del saved[PDU.checkpoint_key]
    torch.save(saved, tmp_path / "no_dual.ckpt")
    with pytest.raises(KeyError, match="'pdu_dual'"):
        PDU.load_from_checkpoint(tmp_path / "no_dual.ckpt")


def test_epsilon_is_required(tiny_model_dir) -> None:
    with pytest.raises(TypeError, match="epsilon"):
        lit_unlearn.PDU(model_name_or_path=str(tiny_model_dir))


def _ddp_batches(tiny_model_dir: Path, tofu_dir: Path) -> list[dict]:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with open(tofu_dir / "retain_perturbed.json") as f:
        rows = [(r["question"], r["answer"]) for r in map(json.loads, f)][:4]
    # Rank 0 gets item 0, rank 1 item 1 (DistributedSampler, no shuffling): different retain losses per rank.
    return [{"forget": _part(tok, rows[:1]), "retain": _part(tok, rows[i : i + 1])} for i in (0, 3)]


@pytest.mark.slow
def test_every_rank_applies_the_same_dual_update(tiny_model_dir, tofu_dir, tmp_path) -> None:
    """ddp_spawn, 2 CPU processes: λ after one step is the update with R averaged over both ranks, on both."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = SpyPDU(str(tiny_model_dir), epsilon=0.0, dual_step_size=2.0, retain_weight=1.0)
    _fit(
        module,
        _ddp_batches(tiny_model_dir, tofu_dir),
        tmp_path,
        [Recorder(str(tmp_path))],
        max_steps=1,
        devices=2,
        strategy="ddp_spawn",
    )
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    r0, r1 = ranks[0]["retain"][0], ranks[1]["retain"][0]
    assert abs(r0 - r1) > 1e-3  # the ranks did see different data
    expected = dual_ascent(1.0, (r0 + r1) / 2, 0.0, 2.0)
    assert ranks[0]["dual"] == ranks[1]["dual"] == pytest.approx([expected], rel=1e-6)
