"""GEffectCallback on the project's own unlearning modules (the callback itself never imports lit_unlearn)."""

import copy
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader
from trainers import quiet_trainer
from transformers import AutoTokenizer

from callbacks import GEffectCallback
from lit_unlearn.data import load_tofu
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
    trainer = quiet_trainer(tmp_path, [cb], max_steps=2)
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


# Every unlearning objective, with the options the paper presets use. (name, init args)
PROTOCOL_CASES = [
    ("GradAscent", {}),
    ("GradDiff", {"retain_weight": 0.7}),
    ("GradDiff", {"retain_loss": "kl", "kl_positions": "all"}),
    ("NPO", {"beta": 0.5, "retain_loss": "none"}),
    ("NPO", {"beta": 0.5, "retain_loss": "kl", "retain_weight": 0.5}),
    ("SimNPO", {}),
    ("IdkPO", {"retain_loss": "none"}),
    ("IdkDPO", {}),
    ("RMU", {"layer": 1, "trainable_params": r"layers\.(0|1)\.mlp"}),
    (
        "RMU",
        {
            "layer": 1,
            "layer_index": "hidden_states",
            "control_vector": "uniform",
            "trainable_params": ".*",
            "retain_loss": "none",
        },
    ),
    ("WGA", {"retain_loss": "kl"}),
    ("TNPO", {"eps": 1e-5, "retain_loss": "none"}),
    ("WTNPO", {"eps": 1e-5}),
    ("SatImp", {}),
    ("UNDIAL", {}),
    ("UNDIAL", {"positions": "all", "retain_loss": "nll"}),
    ("CEU", {}),
    ("PDU", {"epsilon": 0.3, "retain_weight": 2.0}),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The modules here are tiny: one thread avoids oversubscription on shared CPUs (the file stays fast)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro_batches(tiny_model_dir: Path) -> list[dict]:
    """Two micro-batches of the data module's own collation: forget rows 0-1 and 2-3 of forget01 (answers of different
    lengths), refusals for them, and retain rows; every part carries its rows' file index and question."""
    from lit_unlearn.data.datasets import PartsCollator, QADataset

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    forget = load_tofu("forget01")[:4]
    retain = load_tofu("retain99")[:4]
    idk = [{"question": r["question"], "answer": "I have no idea about that."} for r in forget]
    encode = {"tokenizer": tok, "prompt_format": "qa", "max_length": 96}
    parts = {
        "forget": QADataset(forget, indices=range(4), **encode),
        "idk": QADataset(idk, indices=range(4), **encode),
        "retain": QADataset(retain, indices=range(4), **encode),
    }
    collate = PartsCollator(tok.pad_token_id)
    return [collate([{n: d[i] for n, d in parts.items()} for i in rows]) for rows in ([0, 1], [2, 3])]


def _trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.model.parameters() if p.requires_grad]


def _dot(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    """Σ over parameters of the flattened dot product; a parameter a term does not reach has no gradient (0)."""
    return sum(float((x * y).sum()) for x, y in zip(a, b, strict=True) if x is not None and y is not None)


@pytest.mark.parametrize(("name", "kwargs"), PROTOCOL_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_every_objective_splits_its_loss_into_terms_and_forget_examples(
    name: str, kwargs: dict, tiny_model_dir: Path, micro_batches: list[dict], tmp_path: Path
) -> None:
    """The three G-effect protocols of every objective, through the real callback, against float64 autograd."""
    import lit_unlearn

    torch.manual_seed(0)
    module = getattr(lit_unlearn, name)(model_name_or_path=str(tiny_model_dir), lr=1e-3, warmup_epochs=0.0, **kwargs)
    with torch.no_grad():  # move the model off its reference so that NPO/TNPO/KL/RMU terms are not at a fixed point
        for param in module.model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    m64 = copy.deepcopy(module).double()

    # 1. The terms are the loss training_step optimises (the mean over micro-batches), to float64 precision; the
    # shares sum to the unlearn term and come with the forget rows' file index and question.
    terms = m64.objective_terms(micro_batches)
    assert set(terms) == ({"unlearn", "regularizer"} if m64.has_regularizer else {"unlearn"})
    with torch.no_grad():
        losses64 = [m64.training_step(b, 0) for b in micro_batches]
    assert float(sum(terms.values())) == pytest.approx(float(sum(losses64) / 2), rel=1e-12, abs=1e-12)
    shares = m64.per_example_unlearn(micro_batches)
    assert shares.shape == (4,)
    assert float(shares.sum()) == pytest.approx(float(terms["unlearn"]), rel=1e-12, abs=1e-12)
    assert m64.example_ids(micro_batches) == [
        {"index": i, "question": q["question"]} for i, q in enumerate(load_tofu("forget01")[:4])
    ]

    # 2. Float64 reference at θ_0: each forget example's share differentiated on its own (one backward each), dotted
    # with each risk gradient; and each term's gradient.
    params = _trainable(m64)
    risks = m64.risk_losses(micro_batches)
    risk_grads = {r: torch.autograd.grad(v, params, retain_graph=True, allow_unused=True) for r, v in risks.items()}
    expected = {r: [] for r in risk_grads}
    for i in range(4):
        grads = torch.autograd.grad(shares[i], params, retain_graph=True, allow_unused=True)
        for r, risk_grad in risk_grads.items():
            expected[r].append(_dot(risk_grad, grads))
    term_grads = {t: torch.autograd.grad(v, params, retain_graph=True, allow_unused=True) for t, v in terms.items()}

    # 3. The callback on the real training step (2 micro-batches accumulated), float32.
    cb = GEffectCallback(terms=True, per_instance="objective", group_by="none", save_plot=False)
    trainer = quiet_trainer(tmp_path, [cb], max_steps=1, accumulate_grad_batches=2)
    trainer.fit(module, train_dataloaders=DataLoader(micro_batches, batch_size=None))
    rows = {(r["risk"], r["term"]): r["g_effect"] for r in cb.history if r["step"] == 0}
    instances = [r for r in cb.instance_history if r["side"] == "objective"]
    for risk in risk_grads:
        scale = max(abs(v) for v in expected[risk]) + 1e-12
        got = [r for r in instances if r["risk"] == risk]
        assert [r["example"]["index"] for r in got] == [0, 1, 2, 3]
        for row, value in zip(got, expected[risk], strict=True):
            assert row["g_effect"] == pytest.approx(value, rel=2e-3, abs=2e-4 * scale), (risk, row["index"])
        # The shares sum to the unlearn term's G-effect, and the terms to the total (linearity).
        unlearn = rows[(risk, "unlearn")]
        assert sum(r["g_effect"] for r in got) == pytest.approx(unlearn, rel=1e-4, abs=1e-6 * scale)
        assert unlearn == pytest.approx(_dot(risk_grads[risk], term_grads["unlearn"]), rel=2e-3, abs=2e-4 * scale)
        if "regularizer" in term_grads:
            regularizer = rows[(risk, "regularizer")]
            # The regulariser's G-effect is the total's minus the unlearn term's (SupportsLossTerms): its float32
            # error is the unlearn term's, in absolute terms.
            reference = _dot(risk_grads[risk], term_grads["regularizer"])
            assert regularizer == pytest.approx(reference, rel=2e-3, abs=2e-4 * scale)
            total = unlearn + regularizer
        else:
            assert (risk, "regularizer") not in rows
            total = unlearn
        assert total == pytest.approx(rows[(risk, "total")], rel=1e-4, abs=1e-7)


def test_objective_side_refuses_batches_without_example_ids(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    """Hand-built batches carry no file index/question: the objective side cannot key its rows and says so, naming the
    data module that provides them, instead of ranking examples by their position in a step."""
    import lit_unlearn

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = {"forget": _part(tok, _rows(tofu_dir, "forget01", 2)), "retain": _part(tok, _rows(tofu_dir, "retain90", 2))}
    module = lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), lr=1e-3, warmup_epochs=0.0)
    with pytest.raises(KeyError, match="no 'index'/'question'.*TOFUUnlearnDataModule"):
        module.example_ids([batch])
    cb = GEffectCallback(per_instance="objective", save_plot=False)
    trainer = quiet_trainer(tmp_path, [cb], max_steps=1)
    with pytest.raises(KeyError, match="TOFUUnlearnDataModule"):
        trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))


class _AppliedGradients(Callback):
    """Keeps a copy of the gradient the optimiser applies at every step."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.steps.append([p.grad.clone() for p in _trainable(pl_module)])


@pytest.mark.parametrize(("name", "kwargs"), [("GradDiff", {}), ("NPO", {"retain_loss": "kl"}), ("WGA", {})])
def test_terms_leave_the_applied_gradient_bit_identical(
    name: str, kwargs: dict, tiny_model_dir: Path, micro_batches: list[dict], tmp_path: Path
) -> None:
    """With terms=True the callback differentiates the unlearn term and the module's backward the regulariser alone
    (SupportsSkipUnlearnBackward): the gradient the optimiser applies is the whole loss's, bit for bit (the tiny
    model's head is untied: a parameter used twice in a forward would sum its contributions in another order)."""
    import lit_unlearn

    applied, handoffs = [], []
    for run, callbacks in enumerate([[], [GEffectCallback(terms=True, group_by="none", save_plot=False)]]):
        torch.manual_seed(0)
        module = getattr(lit_unlearn, name)(
            model_name_or_path=str(tiny_model_dir), lr=1e-3, warmup_epochs=0.0, **kwargs
        )
        skip = module.skip_unlearn_backward
        module.skip_unlearn_backward = lambda skip=skip, run=run: handoffs.append(run) or skip()
        record = _AppliedGradients()
        trainer = quiet_trainer(
            tmp_path / str(len(callbacks)), [*callbacks, record], max_steps=2, accumulate_grad_batches=2
        )
        trainer.fit(module, train_dataloaders=DataLoader(micro_batches * 2, batch_size=None))
        applied.append(record.steps)
    assert {r["term"] for r in callbacks[0].history} >= {"unlearn", "total"}
    # The handoff ran for each micro-batch of the measured run (2 steps x 2), and only there.
    assert handoffs == [1] * 4
    plain, measured = applied
    assert len(plain) == len(measured) == 2
    for got, expected in zip(measured, plain, strict=True):
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e)
