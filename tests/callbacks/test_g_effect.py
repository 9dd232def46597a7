"""GEffectCallback against independent references: naive float64 dots, finite steps, per-example autograd."""

import copy
import doctest
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from g_effect_modules import (
    LlamaUnlearner,
    ManualMLPUnlearner,
    MLPUnlearner,
    NoRiskMLP,
    PairDataset,
    ReentrantCheckpointMLP,
)
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor

from callbacks import (
    GEffectCallback,
    GEffectRow,
    SupportsPerExampleRisks,
    SupportsRiskLosses,
    load_history,
    load_instance_history,
)
from callbacks import g_effect as g_effect_module
from callbacks.g_effect import _StepValues, _with_running_sums

MLP_LAYERS = r"net\.(\d+)\."


def fit(
    module: Any, callbacks: list, root: Path, max_steps: int = 2, ckpt_path: Path | None = None, **kwargs: Any
) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    trainer = Trainer(
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def to64(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def reference_dots(module: Any, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
    """Naive float64 G-effects: full flattened gradients of the objective (mean over micro-batches) and each risk."""
    m = copy.deepcopy(module).double()
    names, params = zip(*m.named_parameters(), strict=True)
    b64 = [to64(b) for b in batches]
    objective = sum(m.training_step(b, 0) for b in b64) / len(b64)
    g = torch.autograd.grad(objective, params)
    out = {}
    for risk_name, risk in m.risk_losses(b64).items():
        grads = torch.autograd.grad(risk, params, allow_unused=True)
        out[risk_name] = {
            n: 0.0 if gr is None else float(torch.dot(gr.flatten(), gi.flatten()))
            for n, gr, gi in zip(names, grads, g, strict=True)
        }
    return out


def step_rows(cb: GEffectCallback, step: int) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["risk"], r["group"]): r for r in cb.history if r["step"] == step}


def mlp_batches(n: int, batch_size: int, count: int) -> list[dict[str, Tensor]]:
    data = PairDataset(n)
    return [
        {k: torch.stack([data[i][k] for i in range(j * batch_size, (j + 1) * batch_size)]) for k in data[0]}
        for j in range(count)
    ]


@pytest.mark.parametrize("streaming", [True, False])
def test_equals_naive_float64_dot_per_group(tmp_path: Path, streaming: bool) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner()
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, streaming=streaming, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1)
    ref = reference_dots(initial, mlp_batches(16, 4, 1))
    rows = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        per = ref[risk]
        expected = {
            "layer_00": per["net.0.weight"] + per["net.0.bias"],
            "layer_03": per["net.3.weight"] + per["net.3.bias"],
            "total": sum(per.values()),
        }
        for group, value in expected.items():
            assert rows[(risk, group)]["g_effect"] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert cb.last_g_effect["forget/total"] == rows[("forget", "total")]["g_effect"]


def test_parameter_and_none_grouping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner()
    ref = reference_dots(copy.deepcopy(module), mlp_batches(16, 4, 1))
    by_param = GEffectCallback(group_by="parameter", save_plot=False)
    fit(module, [by_param], tmp_path, max_steps=1)
    rows = step_rows(by_param, 0)
    for name, value in ref["retain"].items():
        assert rows[("retain", name)]["g_effect"] == pytest.approx(value, rel=1e-5, abs=1e-7)
    torch.manual_seed(0)
    only_total = GEffectCallback(group_by="none", save_plot=False)
    fit(MLPUnlearner(), [only_total], tmp_path, max_steps=1)
    assert {r["group"] for r in only_total.history} == {"total"}


def test_first_order_sgd_prediction_matches_realised_change(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, realised_change=True, measure_update=True, save_plot=False)
    fit(MLPUnlearner(lr=1e-3), [cb], tmp_path, max_steps=4)
    totals = [r for r in cb.history if r["group"] == "total"]
    assert len(totals) == 8
    for row in totals:
        eta = 1e-3
        assert row["predicted_change"] == pytest.approx(-eta * row["g_effect"], rel=1e-9)
        # Realised risk change on the same batch ≈ −η e (first order), within 2 %.
        assert row["realised_change"] == pytest.approx(row["predicted_change"], rel=0.02)
        # For plain SGD the real update is −η g, so ∇R·Δθ is the same first-order prediction.
        assert row["update_change"] == pytest.approx(row["predicted_change"], rel=1e-3)
    forget = [r for r in totals if r["risk"] == "forget"]
    assert forget[-1]["cumulative_predicted_change"] == pytest.approx(sum(r["predicted_change"] for r in forget))
    assert forget[-1]["cumulative_realised_change"] == pytest.approx(sum(r["realised_change"] for r in forget))


def test_update_mode_with_adamw_differs_from_sgd_prediction(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, measure_update=True, realised_change=True, save_plot=False)
    fit(MLPUnlearner(lr=1e-4, optimizer="adamw"), [cb], tmp_path, max_steps=3)
    for row in (r for r in cb.history if r["group"] == "total"):
        # The first-order prediction along the actual AdamW update tracks the realised change ...
        assert row["update_change"] == pytest.approx(row["realised_change"], rel=0.02)
        # ... while −η·e (the SGD view) does not describe an Adam step.
        assert abs(row["update_change"] - row["predicted_change"]) > 0.1 * abs(row["update_change"])
    groups = [r for r in cb.history if r["step"] == 0 and r["risk"] == "forget" and r["level"] == "group"]
    total = step_rows(cb, 0)[("forget", "total")]
    assert sum(r["update_change"] for r in groups) == pytest.approx(total["update_change"], rel=1e-6)


def test_training_is_bit_identical_with_and_without_callback(tmp_path: Path) -> None:
    # Dropout makes the risk forward consume random numbers: isolate_rng must keep the training draws unchanged.
    def run(callbacks: list) -> dict[str, Tensor]:
        torch.manual_seed(0)
        module = MLPUnlearner(dropout=0.3, optimizer="adamw")
        fit(module, callbacks, tmp_path, max_steps=6, accumulate_grad_batches=2)
        return {k: v.clone() for k, v in module.state_dict().items()}

    plain = run([])
    cb = GEffectCallback(
        layer_pattern=MLP_LAYERS, realised_change=True, measure_update=True, per_instance=True, save_plot=False
    )
    measured = run([cb])
    assert cb.history
    for key, value in plain.items():
        assert torch.equal(value, measured[key]), key


def test_accumulation_uses_the_accumulated_gradient(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner(batch_size=2)
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1, accumulate_grad_batches=2)
    ref = reference_dots(initial, mlp_batches(16, 2, 2))
    rows = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        assert rows[(risk, "total")]["g_effect"] == pytest.approx(sum(ref[risk].values()), rel=1e-5)
    # The last micro-batch alone gives a different (cheaper) estimate.
    torch.manual_seed(0)
    last = GEffectCallback(layer_pattern=MLP_LAYERS, micro_batches="last", save_plot=False)
    fit(MLPUnlearner(batch_size=2), [last], tmp_path, max_steps=1, accumulate_grad_batches=2)
    m = copy.deepcopy(initial).double()
    params = list(m.parameters())
    b64 = [to64(b) for b in mlp_batches(16, 2, 2)]
    g = torch.autograd.grad(sum(m.training_step(b, 0) for b in b64) / 2, params)
    risk = m.risk_losses(b64[1:])["forget"]
    expected = sum(float((a * b).sum()) for a, b in zip(torch.autograd.grad(risk, params), g, strict=True))
    assert last.last_g_effect["forget/total"] == pytest.approx(expected, rel=1e-5)


def test_manual_optimisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ManualMLPUnlearner()
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=3)
    assert sorted({r["step"] for r in cb.history}) == [0, 1, 2]
    automatic = MLPUnlearner()
    automatic.load_state_dict(initial.state_dict())
    ref = reference_dots(automatic, mlp_batches(16, 4, 1))
    assert step_rows(cb, 0)[("forget", "total")]["g_effect"] == pytest.approx(sum(ref["forget"].values()), rel=1e-5)


def fp16_amp() -> MixedPrecision:
    """fp16 autocast with a GradScaler on the CPU (Lightning's "16-mixed" on CPU has no scaler)."""
    return MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))


def test_fp16_amp_measures_the_unscaled_gradient(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner(optimizer="adamw")
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1, plugins=[fp16_amp()])
    ref = reference_dots(initial, mlp_batches(16, 4, 1))
    rows = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        # A still-scaled gradient would be 1024 times too large.
        assert rows[(risk, "total")]["g_effect"] == pytest.approx(sum(ref[risk].values()), rel=0.02)


def test_fused_optimiser_under_a_grad_scaler_fails_early(tmp_path: Path) -> None:
    # A fused optimiser unscales inside its own step, after the hook: the callback would see scaled gradients.
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    with pytest.raises(ValueError, match="fused=False"):
        fit(MLPUnlearner(optimizer="adamw_fused"), [cb], tmp_path, plugins=[fp16_amp()])
    assert cb.history == []
    # Without a scaler the fused optimiser sees unscaled gradients and is fine.
    fit(MLPUnlearner(optimizer="adamw_fused"), [cb], tmp_path, precision="bf16-mixed")
    assert sorted({r["step"] for r in cb.history}) == [0, 1]


def test_bf16_mixed_runs_and_is_close(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner()
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, per_instance=True, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=2, precision="bf16-mixed")
    ref = reference_dots(initial, mlp_batches(16, 4, 1))
    rows = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        value = rows[(risk, "total")]["g_effect"]
        assert torch.isfinite(torch.tensor(value))
        assert value == pytest.approx(sum(ref[risk].values()), rel=0.05, abs=1e-3)
    assert len(cb.instance_history) == 2 * 2 * 4


def test_per_instance_matches_per_example_autograd_on_llama(tmp_path: Path) -> None:
    module = LlamaUnlearner()
    initial = copy.deepcopy(module)
    cb = GEffectCallback(per_instance=True, realised_change=False, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1)
    m = copy.deepcopy(initial).double()
    params = list(m.parameters())
    batch = next(iter(m.train_dataloader()))
    g = torch.autograd.grad(m.training_step(batch, 0), params)
    for risk, prefix in (("forget", "f"), ("retain", "r")):
        got = [r["g_effect"] for r in cb.instance_history if r["risk"] == risk and r["step"] == 0]
        assert len(got) == 4
        for i in range(4):
            loss = m.nll(batch[f"{prefix}_ids"][i : i + 1], batch[f"{prefix}_labels"][i : i + 1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            expected = sum(float((a * b).sum()) for a, b in zip(grads, g, strict=True) if a is not None)
            assert got[i] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_plain_llama_module_default_groups(tmp_path: Path) -> None:
    module = LlamaUnlearner()
    initial = copy.deepcopy(module)
    cb = GEffectCallback(coarse_groups=True, save_plot=True)
    fit(module, [cb], tmp_path, max_steps=2)
    rows = step_rows(cb, 0)
    fine = [g for (risk, g), r in rows.items() if risk == "forget" and r["level"] == "group"]
    assert fine == ["embedding", "layer_00", "layer_01", "final_norm", "lm_head"]
    coarse = [g for (risk, g), r in rows.items() if risk == "forget" and r["level"] == "coarse"]
    assert coarse == ["shallow", "middle"]  # two blocks: one each in the first two thirds
    for risk in ("forget", "retain"):
        total = rows[(risk, "total")]["g_effect"]
        assert sum(rows[(risk, g)]["g_effect"] for g in fine) == pytest.approx(total, rel=1e-5)
        assert rows[(risk, "shallow")]["g_effect"] == pytest.approx(rows[(risk, "layer_00")]["g_effect"])
    ref = reference_dots(initial, [next(iter(initial.train_dataloader()))])
    assert rows[("forget", "total")]["g_effect"] == pytest.approx(sum(ref["forget"].values()), rel=1e-4)
    assert (tmp_path / "g_effect.csv").is_file()
    assert (tmp_path / "g_effect.png").is_file()


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def test_logged_keys_and_steps_follow_every_n_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    logger = RecordingLogger()
    cb = GEffectCallback(
        every_n_steps=3, layer_pattern=MLP_LAYERS, realised_change=True, output_dir=str(tmp_path / "out")
    )
    fit(MLPUnlearner(n=40), [cb], tmp_path, max_steps=8, logger=logger, log_every_n_steps=5)
    mine = [(s, m) for s, m in logger.calls if any(k.startswith("g_effect/") for k in m)]
    assert [s for s, _ in mine] == [0, 3, 6]
    keys = set(mine[0][1])
    for risk in ("forget", "retain"):
        assert {f"g_effect/{risk}/{g}" for g in ("layer_00", "layer_03", "total")} <= keys
        assert f"g_effect_risk/{risk}/realised_change" in keys
    assert sorted({r["step"] for r in cb.history}) == [0, 3, 6]
    assert mine[1][1]["g_effect/forget/total"] == step_rows(cb, 3)[("forget", "total")]["g_effect"]
    # Files land in output_dir; the CSV round-trips.
    written = load_history(tmp_path / "out" / "g_effect.csv")
    assert len(written) == len(cb.history)
    assert written[5]["g_effect"] == pytest.approx(cb.history[5]["g_effect"])
    assert (tmp_path / "out" / "g_effect.png").stat().st_size > 0


def test_existing_results_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "g_effect.csv").write_text("earlier run\n")
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    fit(MLPUnlearner(), [cb], tmp_path, max_steps=1)
    assert (tmp_path / "g_effect.csv").read_text() == "earlier run\n"
    assert len(load_history(tmp_path / "g_effect_1.csv")) == len(cb.history)


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(MLPUnlearner(), SupportsRiskLosses)
    assert isinstance(MLPUnlearner(), SupportsPerExampleRisks)
    assert not isinstance(NoRiskMLP(), SupportsRiskLosses)


def test_unsupported_setups_fail_early(tmp_path: Path) -> None:
    cb = GEffectCallback()
    for strategy in (FSDPStrategy, DeepSpeedStrategy):
        trainer = Mock(spec=Trainer)
        trainer.strategy = Mock(spec=strategy)
        with pytest.raises(NotImplementedError, match=strategy.__name__):
            cb.setup(trainer, MLPUnlearner(), "fit")
    with pytest.raises(TypeError, match="NoRiskMLP has no `risk_losses"):
        fit(NoRiskMLP(), [GEffectCallback()], tmp_path)

    class RiskOnly(NoRiskMLP):
        def risk_losses(self, batches: Sequence[Any]) -> dict[str, Tensor]:
            return {"r": self.net(torch.cat([b["fx"] for b in batches])).pow(2).mean()}

    with pytest.raises(TypeError, match="per_example_risks"):
        fit(RiskOnly(), [GEffectCallback(per_instance=True)], tmp_path)

    llama = LlamaUnlearner()
    llama.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant"):
        cb.setup(Mock(spec=Trainer, strategy=Mock()), llama, "fit")
    llama.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cb.setup(Mock(spec=Trainer, strategy=Mock()), llama, "fit")

    # Reentrant checkpointing set up without transformers is caught when the risk gradient is taken.
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        fit(ReentrantCheckpointMLP(), [GEffectCallback(save_plot=False)], tmp_path)

    with pytest.raises(ValueError, match="every_n_steps"):
        GEffectCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="capturing group"):
        GEffectCallback(layer_pattern=r"\.layers\.")


def test_override_point_for_modules_without_the_protocol(tmp_path: Path) -> None:
    class MyCallback(GEffectCallback):
        def risk_losses(self, pl_module: Any, batches: Sequence[Any]) -> Mapping[str, Tensor]:
            x = torch.cat([b["fx"] for b in batches])
            return {"energy": pl_module.net(x).pow(2).mean()}

    torch.manual_seed(0)
    module = NoRiskMLP()
    initial = copy.deepcopy(module)
    cb = MyCallback(save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1)
    batch = mlp_batches(8, 4, 1)[0]
    params = list(initial.parameters())
    risk = initial.net(batch["fx"]).pow(2).mean()
    # Here objective and risk coincide: the G-effect is the squared gradient norm.
    expected = sum(float(g.pow(2).sum()) for g in torch.autograd.grad(risk, params))
    assert cb.last_g_effect["energy/total"] == pytest.approx(expected, rel=1e-5)


def test_ddp_two_processes_equal_single_process_on_union_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLPUnlearner(n=8, batch_size=4)
    initial = copy.deepcopy(module)
    out = tmp_path / "ddp"
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, per_instance=True, output_dir=str(out), save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1, devices=2, strategy="ddp_spawn")
    # The spawned ranks hold the history; rank 0 wrote it to output_dir when fit ended.
    rows = {(r["risk"], r["group"]): r for r in load_history(out / "g_effect.csv")}
    union = mlp_batches(8, 8, 1)
    ref = reference_dots(initial, union)
    for risk in ("forget", "retain"):
        assert rows[(risk, "total")]["g_effect"] == pytest.approx(sum(ref[risk].values()), rel=1e-5)
        layer = ref[risk]["net.0.weight"] + ref[risk]["net.0.bias"]
        assert rows[(risk, "layer_00")]["g_effect"] == pytest.approx(layer, rel=1e-5, abs=1e-7)
    # Per-instance values are gathered from both ranks (rank-major, in the DistributedSampler's order): compare the
    # multiset of values with per-example autograd on the union batch.
    instances = load_instance_history(out / "g_effect_instances.csv")
    m = copy.deepcopy(initial).double()
    params = list(m.parameters())
    b64 = to64(union[0])
    g = torch.autograd.grad(m.training_step(b64, 0), params)
    got = sorted(r["g_effect"] for r in instances if r["risk"] == "retain")
    expected = []
    for i in range(8):
        loss = m.per_example(b64["rx"][i : i + 1], b64["ry"][i : i + 1]).mean()
        expected.append(sum(float((a * b).sum()) for a, b in zip(torch.autograd.grad(loss, params), g, strict=True)))
    assert got == pytest.approx(sorted(expected), rel=1e-4, abs=1e-7)


class CrashingMLP(MLPUnlearner):
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        if self.global_step == 2:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_results_survive_a_crash(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    with pytest.raises(RuntimeError, match="boom"):
        fit(CrashingMLP(), [cb], tmp_path, max_steps=4)
    # Steps 0 and 1 were measured before the crash and are on disk.
    assert sorted({r["step"] for r in load_history(tmp_path / "g_effect.csv")}) == [0, 1]
    assert load_history(tmp_path / "g_effect.csv") == cb.history


def test_resuming_from_a_checkpoint_file_continues_the_history(tmp_path: Path) -> None:
    """Train 2 epochs, save a .ckpt, resume a new Trainer to 3 epochs: the history equals one 3-epoch run."""

    def callback(name: str) -> GEffectCallback:
        return GEffectCallback(
            layer_pattern=MLP_LAYERS,
            realised_change=True,
            measure_update=True,
            per_instance=True,
            save_plot=False,
            output_dir=str(tmp_path / name),
        )

    def module(seed: int) -> MLPUnlearner:
        torch.manual_seed(seed)
        return MLPUnlearner(n=8, batch_size=4, lr=1e-3, optimizer="adamw")  # two optimiser steps per epoch

    whole = callback("whole")
    fit(module(0), [whole], tmp_path, max_steps=-1, max_epochs=3)
    first = callback("first")
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="stop")
    fit(module(0), [first, saver], tmp_path, max_steps=-1, max_epochs=2, enable_checkpointing=True)
    ckpt = tmp_path / "ckpt" / "stop.ckpt"
    # The callback's state is plain data: it loads under torch's weights_only default without allow-listing.
    state = torch.load(ckpt, weights_only=True)["callbacks"][first.state_key]
    assert state["history"] == first.history
    assert {r["step"] for r in state["history"]} == {0, 1, 2, 3}

    # A fresh callback and a differently initialised module: everything comes from the file.
    resumed = callback("resumed")
    fit(module(1), [resumed], tmp_path, max_steps=-1, max_epochs=3, ckpt_path=ckpt)
    assert [r["step"] for r in resumed.history if r["group"] == "total"] == [s for s in range(6) for _ in (0, 1)]
    assert resumed.history == whole.history
    assert resumed.instance_history == whole.instance_history
    # The running sums continue across the resume: step 4 adds its change to step 3's sum.
    forget = {r["step"]: r for r in resumed.history if r["risk"] == "forget" and r["group"] == "total"}
    for key in ("predicted_change", "realised_change", "update_change"):
        assert forget[4][f"cumulative_{key}"] == pytest.approx(forget[3][f"cumulative_{key}"] + forget[4][key])
        assert forget[5][f"cumulative_{key}"] == pytest.approx(sum(forget[s][key] for s in range(6)))
    # The resumed run's files hold the whole history, exactly.
    assert load_history(tmp_path / "resumed" / "g_effect.csv") == whole.history
    assert load_instance_history(tmp_path / "resumed" / "g_effect_instances.csv") == whole.instance_history


def test_running_sums_weight_each_step_and_skip_missing_changes() -> None:
    def values(step: int, predicted: float, realised: float | None) -> _StepValues:
        return _StepValues(
            step=step,
            risk="forget",
            group="total",
            level="total",
            g_effect=1.0,
            risk_value=2.0,
            predicted_change=predicted,
            realised_change=realised,
            update_change=None,
        )

    before = {"forget/total/predicted_change": 0.5}
    rows, after = _with_running_sums([values(3, -0.25, 0.125)], before, weight=3)
    assert before == {"forget/total/predicted_change": 0.5}  # the input totals are left alone
    assert after == {"forget/total/predicted_change": 0.5 - 0.75, "forget/total/realised_change": 0.375}
    row: GEffectRow = rows[0]
    assert (row["cumulative_predicted_change"], row["cumulative_realised_change"]) == (-0.25, 0.375)
    assert row["cumulative_update_change"] is None
    # A step without a realised change leaves that sum where it was.
    rows, after = _with_running_sums([values(6, 0.5, None)], after, weight=3)
    assert rows[0]["cumulative_realised_change"] is None
    assert after["forget/total/realised_change"] == 0.375
    assert after["forget/total/predicted_change"] == 1.25


def test_csv_readers_check_the_columns(tmp_path: Path) -> None:
    instances = tmp_path / "g_effect_instances.csv"
    instances.write_text("step,risk,index,g_effect\n3,forget,0,-0.5\n3,forget,1,0.25\n")
    assert load_instance_history(instances) == [
        {"step": 3, "risk": "forget", "index": 0, "g_effect": -0.5},
        {"step": 3, "risk": "forget", "index": 1, "g_effect": 0.25},
    ]
    with pytest.raises(ValueError, match="load_instance_history"):
        load_history(instances)
    instances.write_text("step,risk,index,g_effect\n3,forget,,-0.5\n")
    with pytest.raises(ValueError, match="line 2, column 'index'"):
        load_instance_history(instances)


def test_docstring_examples_run() -> None:
    # The same examples `pytest --doctest-modules callbacks` runs, kept in the default suite.
    results = doctest.testmod(g_effect_module, raise_on_error=False)
    assert results.attempted > 0
    assert results.failed == 0
