"""GEffectCallback against independent references: naive float64 dots, finite steps, per-example autograd."""

import copy
import logging
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from g_effect_modules import (
    GradMinusUnlearnMLP,
    IdlessMLP,
    LlamaUnlearner,
    ManualMLPUnlearner,
    MLPUnlearner,
    NoRiskMLP,
    ObjectiveTermsMLP,
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
    SupportsExampleIds,
    SupportsObjectiveTerms,
    SupportsPerExampleObjective,
    SupportsPerExampleRisks,
    SupportsRiskLosses,
    load_history,
    load_instance_history,
    load_ranking,
)
from callbacks.g_effect import _smoothed, _StepValues, _with_running_sums

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


def reference_terms(
    module: MLPUnlearner, batches: Sequence[Mapping[str, Tensor]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Naive float64 G-effects of each objective term, the terms written out here: risk -> term -> parameter -> dot.

    ``unlearn = mean_j(−γ·mean_i mse_f)`` and ``regularizer = mean_j(α·mean_i mse_r)`` over the micro-batches j.
    """
    m = copy.deepcopy(module).double()
    names, params = zip(*m.named_parameters(), strict=True)
    b64 = [to64(b) for b in batches]
    k = len(b64)
    terms = {
        "unlearn": sum(-m.forget_weight * m.per_example(b["fx"], b["fy"]).mean() for b in b64) / k,
        "regularizer": sum(m.retain_weight * m.per_example(b["rx"], b["ry"]).mean() for b in b64) / k,
    }
    term_grads = {name: torch.autograd.grad(term, params) for name, term in terms.items()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for risk_name, risk in m.risk_losses(b64).items():
        risk_grad = torch.autograd.grad(risk, params)
        out[risk_name] = {
            term: {n: float(torch.dot(a.flatten(), b.flatten())) for n, a, b in zip(names, risk_grad, g, strict=True)}
            for term, g in term_grads.items()
        }
    return out


def reference_objective_instances(
    module: MLPUnlearner, batches: Sequence[Mapping[str, Tensor]]
) -> dict[str, list[float]]:
    """Per forget example in order: ∇R·∇ℓ_i, ``ℓ_i = −γ·mse_i / (B_j·k)``, one float64 backward per example."""
    m = copy.deepcopy(module).double()
    params = list(m.parameters())
    b64 = [to64(b) for b in batches]
    risk_grads = {name: torch.autograd.grad(risk, params) for name, risk in m.risk_losses(b64).items()}
    out: dict[str, list[float]] = {name: [] for name in risk_grads}
    for b in b64:
        for i in range(len(b["fx"])):
            share = -m.forget_weight * m.per_example(b["fx"][i : i + 1], b["fy"][i : i + 1]).sum()
            grads = torch.autograd.grad(share / (len(b["fx"]) * len(b64)), params)
            for name, risk_grad in risk_grads.items():
                out[name].append(
                    sum(float(torch.dot(a.flatten(), c.flatten())) for a, c in zip(risk_grad, grads, strict=True))
                )
    return out


def step_rows(cb: GEffectCallback, step: int, term: str = "total") -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["risk"], r["group"]): r for r in cb.history if r["step"] == step and r["term"] == term}


def step_total_rows(cb: GEffectCallback, risk: str) -> list[dict[str, Any]]:
    """The rows of the total G-effect (term and group "total") on ``risk``, one per measured step."""
    return [r for r in cb.history if (r["risk"], r["term"], r["group"]) == (risk, "total", "total")]


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
    for per_instance, terms in ((True, False), ("both", True)):
        cb = GEffectCallback(
            layer_pattern=MLP_LAYERS,
            realised_change=True,
            measure_update=True,
            per_instance=per_instance,
            terms=terms,
            save_plot=False,
        )
        measured = run([cb])
        assert {r["term"] for r in cb.history} == ({"total", "unlearn", "regularizer"} if terms else {"total"})
        for key, value in plain.items():
            assert torch.equal(value, measured[key]), (key, per_instance, terms)


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
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, per_instance="both", terms=True, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=2, precision="bf16-mixed")
    ref = reference_dots(initial, mlp_batches(16, 4, 1))
    ref_terms = reference_terms(initial, mlp_batches(16, 4, 1))
    rows = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        value = rows[(risk, "total")]["g_effect"]
        assert torch.isfinite(torch.tensor(value))
        assert value == pytest.approx(sum(ref[risk].values()), rel=0.05, abs=1e-3)
        # The terms run under the same autocast as training_step.
        for term in ("unlearn", "regularizer"):
            got = step_rows(cb, 0, term)[(risk, "total")]["g_effect"]
            assert got == pytest.approx(sum(ref_terms[risk][term].values()), rel=0.05, abs=1e-3)
        objective = [r for r in cb.instance_history if (r["step"], r["side"], r["risk"]) == (0, "objective", risk)]
        shares = sum(r["g_effect"] for r in objective)
        unlearn = step_rows(cb, 0, "unlearn")[(risk, "total")]["g_effect"]
        assert shares == pytest.approx(unlearn, rel=0.05, abs=1e-3)
    assert len([r for r in cb.instance_history if r["side"] == "risk"]) == 2 * 2 * 4


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


def test_logged_keys_with_terms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    logger = RecordingLogger()
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, save_plot=False)
    fit(MLPUnlearner(), [cb], tmp_path, max_steps=1, logger=logger)
    keys = set().union(*(set(m) for _, m in logger.calls))
    for risk in ("forget", "retain"):
        for term in ("total", "unlearn", "regularizer"):
            assert {f"g_effect/{risk}/{term}/{g}" for g in ("layer_00", "layer_03", "total")} <= keys
        # With terms on every G-effect key names its term; the risk scalars stay as they are.
        assert f"g_effect/{risk}/total" not in keys
        assert f"g_effect_risk/{risk}/value" in keys
    unlearn = step_rows(cb, 0, "unlearn")[("forget", "total")]["g_effect"]
    assert cb.last_g_effect["forget/unlearn/total"] == unlearn


def test_existing_results_are_not_overwritten(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "g_effect.csv").write_text("earlier run\n")
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, save_plot=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        fit(MLPUnlearner(), [cb], tmp_path, max_steps=1)
    assert f"GEffectCallback: G-effects written to {tmp_path}" in caplog.text  # the user is told where
    assert (tmp_path / "g_effect.csv").read_text() == "earlier run\n"
    assert len(load_history(tmp_path / "g_effect_1.csv")) == len(cb.history)


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(MLPUnlearner(), SupportsRiskLosses)
    assert isinstance(MLPUnlearner(), SupportsPerExampleRisks)
    assert not isinstance(NoRiskMLP(), SupportsRiskLosses)
    for protocol in (SupportsObjectiveTerms, SupportsPerExampleObjective, SupportsExampleIds):
        assert isinstance(MLPUnlearner(), protocol)
        assert isinstance(LlamaUnlearner(), protocol)
        assert not isinstance(NoRiskMLP(), protocol)
    assert not isinstance(IdlessMLP(), SupportsExampleIds)


def test_unsupported_setups_fail_early(tmp_path: Path) -> None:
    cb = GEffectCallback()
    for strategy in (FSDPStrategy, DeepSpeedStrategy):
        trainer = Mock(spec=Trainer)
        trainer.strategy = Mock(spec=strategy)
        # The error names the strategy and the one that works: ModelParallelStrategy (FSDP2).
        with pytest.raises(NotImplementedError, match=f"{strategy.__name__}.*ModelParallelStrategy"):
            cb.setup(trainer, MLPUnlearner(), "fit")
    with pytest.raises(TypeError, match="NoRiskMLP has no `risk_losses"):
        fit(NoRiskMLP(), [GEffectCallback()], tmp_path)

    class RiskOnly(NoRiskMLP):
        def risk_losses(self, batches: Sequence[Any]) -> dict[str, Tensor]:
            return {"r": self.net(torch.cat([b["fx"] for b in batches])).pow(2).mean()}

    with pytest.raises(TypeError, match="per_example_risks"):
        fit(RiskOnly(), [GEffectCallback(per_instance=True)], tmp_path)
    with pytest.raises(TypeError, match="terms=True.*SupportsObjectiveTerms.*objective_terms"):
        fit(RiskOnly(), [GEffectCallback(terms=True)], tmp_path)
    with pytest.raises(TypeError, match="SupportsPerExampleObjective.*per_example_unlearn"):
        fit(RiskOnly(), [GEffectCallback(per_instance="objective")], tmp_path)
    with pytest.raises(ValueError, match="per_instance must be 'risk', 'objective', 'both'"):
        GEffectCallback(per_instance="forget")

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
    module = MLPUnlearner(n=8, batch_size=4, forget_weight=0.7, retain_weight=1.3)
    initial = copy.deepcopy(module)
    out = tmp_path / "ddp"
    cb = GEffectCallback(
        layer_pattern=MLP_LAYERS, per_instance="both", terms=True, output_dir=str(out), save_plot=False
    )
    fit(module, [cb], tmp_path, max_steps=1, devices=2, strategy="ddp_spawn")
    # The spawned ranks hold the history; rank 0 wrote it to output_dir when fit ended.
    rows = {(r["risk"], r["term"], r["group"]): r for r in load_history(out / "g_effect.csv")}
    union = mlp_batches(8, 8, 1)
    ref = reference_dots(initial, union)
    ref_terms = reference_terms(initial, union)
    for risk in ("forget", "retain"):
        assert rows[(risk, "total", "total")]["g_effect"] == pytest.approx(sum(ref[risk].values()), rel=1e-5)
        layer = ref[risk]["net.0.weight"] + ref[risk]["net.0.bias"]
        assert rows[(risk, "total", "layer_00")]["g_effect"] == pytest.approx(layer, rel=1e-5, abs=1e-7)
        # Each term is bilinear in two rank-local gradients: only the all-reduced risk gradient makes it global.
        for term, per_param in ref_terms[risk].items():
            assert rows[(risk, term, "total")]["g_effect"] == pytest.approx(sum(per_param.values()), rel=1e-5)
            layer = per_param["net.0.weight"] + per_param["net.0.bias"]
            assert rows[(risk, term, "layer_00")]["g_effect"] == pytest.approx(layer, rel=1e-5, abs=1e-7)
        for group in ("layer_00", "layer_03", "total"):
            parts = rows[(risk, "unlearn", group)]["g_effect"] + rows[(risk, "regularizer", group)]["g_effect"]
            assert parts == pytest.approx(rows[(risk, "total", group)]["g_effect"], rel=1e-4)
    # Risk-side values are gathered from both ranks (rank-major, in the DistributedSampler's order): compare the
    # multiset of values with per-example autograd on the union batch.
    instances = load_instance_history(out / "g_effect_instances.csv")
    m = copy.deepcopy(initial).double()
    params = list(m.parameters())
    b64 = to64(union[0])
    g = torch.autograd.grad(m.training_step(b64, 0), params)
    got = sorted(r["g_effect"] for r in instances if r["risk"] == "retain" and r["side"] == "risk")
    expected = []
    for i in range(8):
        loss = m.per_example(b64["rx"][i : i + 1], b64["ry"][i : i + 1]).mean()
        expected.append(sum(float((a * b).sum()) for a, b in zip(torch.autograd.grad(loss, params), g, strict=True)))
    assert got == pytest.approx(sorted(expected), rel=1e-4, abs=1e-7)
    # Objective side: a rank's share of its own 4 examples over the world size is the example's share of the
    # union-batch unlearn term; the gathered ids say which example each value belongs to.
    shares = reference_objective_instances(initial, union)
    objective = [r for r in instances if r["side"] == "objective"]
    assert sorted(r["example"]["index"] for r in objective if r["risk"] == "forget") == list(range(8))
    for row in objective:
        assert row["g_effect"] == pytest.approx(shares[row["risk"]][row["example"]["index"]], rel=1e-4, abs=1e-7)
    for risk in ("forget", "retain"):
        total = sum(r["g_effect"] for r in objective if r["risk"] == risk)
        assert total == pytest.approx(rows[(risk, "unlearn", "total")]["g_effect"], rel=1e-4, abs=1e-7)
    ranking = load_ranking(out / "g_effect_ranking.csv")
    assert sorted(int(row["example"]["index"]) for row in ranking) == list(range(8))
    for row in ranking:
        assert row["measurements"] == 1
        for risk in ("forget", "retain"):
            expected_share = shares[risk][int(row["example"]["index"])]
            assert row["g_effect"][risk] == pytest.approx(expected_share, rel=1e-4, abs=1e-7)


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
            per_instance="both",
            terms=True,
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
    totals = [r["step"] for r in resumed.history if r["group"] == "total" and r["term"] == "total"]
    assert totals == [s for s in range(6) for _ in (0, 1)]
    assert resumed.history == whole.history
    assert resumed.instance_history == whole.instance_history
    # The running sums continue across the resume: step 4 adds its change to step 3's sum.
    forget = {r["step"]: r for r in step_total_rows(resumed, "forget")}
    for key in ("predicted_change", "realised_change", "update_change"):
        assert forget[4][f"cumulative_{key}"] == pytest.approx(forget[3][f"cumulative_{key}"] + forget[4][key])
        assert forget[5][f"cumulative_{key}"] == pytest.approx(sum(forget[s][key] for s in range(6)))
    # The resumed run's files hold the whole history, exactly.
    assert load_history(tmp_path / "resumed" / "g_effect.csv") == whole.history
    assert load_instance_history(tmp_path / "resumed" / "g_effect_instances.csv") == whole.instance_history
    # The ranking of the resumed run covers the whole run: every example was measured in 3 epochs.
    ranking = load_ranking(tmp_path / "resumed" / "g_effect_ranking.csv")
    assert ranking == load_ranking(tmp_path / "whole" / "g_effect_ranking.csv")
    assert [row["measurements"] for row in ranking] == [3] * 8
    # The terms' running sums continue across the resume too.
    unlearn = [r for r in resumed.history if (r["risk"], r["term"], r["group"]) == ("forget", "unlearn", "total")]
    assert unlearn[-1]["cumulative_predicted_change"] == pytest.approx(sum(r["predicted_change"] for r in unlearn))


def test_running_sums_weight_each_step_and_skip_missing_changes() -> None:
    def values(step: int, predicted: float, realised: float | None) -> _StepValues:
        return _StepValues(
            step=step,
            risk="forget",
            term="total",
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
    header = "step,risk,side,index,g_effect,example\n"
    instances.write_text(
        header + '3,forget,objective,0,-0.5,"{""index"": 7, ""question"": ""Who?""}"\n3,retain,risk,1,0.25,\n'
    )
    assert load_instance_history(instances) == [
        {"step": 3, "risk": "forget", "side": "objective", "index": 0, "g_effect": -0.5,
         "example": {"index": 7, "question": "Who?"}},
        {"step": 3, "risk": "retain", "side": "risk", "index": 1, "g_effect": 0.25, "example": None},
    ]  # fmt: skip
    # A file written before rows had a side: every row is a risk-side row without ids.
    instances.write_text("step,risk,index,g_effect\n3,forget,0,-0.5\n")
    assert load_instance_history(instances) == [
        {"step": 3, "risk": "forget", "side": "risk", "index": 0, "g_effect": -0.5, "example": None}
    ]
    with pytest.raises(ValueError, match="load_instance_history"):
        load_history(instances)
    instances.write_text("step,risk,index,g_effect\n3,forget,,-0.5\n")
    with pytest.raises(ValueError, match="line 2, column 'index'"):
        load_instance_history(instances)
    instances.write_text(header + "3,forget,objective,0,-0.5,[7]\n")
    with pytest.raises(ValueError, match="column 'example': expected a JSON object"):
        load_instance_history(instances)
    ranking = tmp_path / "g_effect_ranking.csv"
    ranking.write_text("index,g_effect_forget,measurements\n7,-0.5,2\n")
    assert load_ranking(ranking) == [{"example": {"index": "7"}, "g_effect": {"forget": -0.5}, "measurements": 2}]
    ranking.write_text("g_effect_forget,measurements\n-0.5,2\n")
    with pytest.raises(ValueError, match="example id columns"):
        load_ranking(ranking)


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("module_type", [MLPUnlearner, GradMinusUnlearnMLP, ObjectiveTermsMLP])
def test_terms_equal_naive_float64_dots_and_sum_to_the_total(
    tmp_path: Path, module_type: type[MLPUnlearner], streaming: bool
) -> None:
    # Two micro-batches: the terms decompose the accumulated gradient, averaged as Lightning averages it. With
    # SupportsLossTerms the unlearn term comes from the step's own graph (MLPUnlearner: its gradient is handed to
    # .grad and the module's backward skips the term; GradMinusUnlearnMLP: the module's backward takes the whole
    # loss); without it (ObjectiveTermsMLP), from objective_terms' own forward and backward passes.
    torch.manual_seed(0)
    module = module_type(batch_size=2, forget_weight=0.7, retain_weight=1.3)
    initial = copy.deepcopy(module)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, streaming=streaming, save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1, accumulate_grad_batches=2)
    batches = mlp_batches(16, 2, 2)
    ref = reference_terms(initial, batches)
    ref_total = reference_dots(initial, batches)
    total = step_rows(cb, 0)
    for risk in ("forget", "retain"):
        assert total[(risk, "total")]["g_effect"] == pytest.approx(sum(ref_total[risk].values()), rel=1e-5)
        for term in ("unlearn", "regularizer"):
            rows = step_rows(cb, 0, term)
            per = ref[risk][term]
            expected = {
                "layer_00": per["net.0.weight"] + per["net.0.bias"],
                "layer_03": per["net.3.weight"] + per["net.3.bias"],
                "total": sum(per.values()),
            }
            for group, value in expected.items():
                row = rows[(risk, group)]
                # Through the step's own terms the regulariser is .grad minus the unlearn term's gradient: exact up to
                # the float32 rounding of those two operands, a few ulps of the larger (the unlearn term's, here up
                # to 100x the regulariser's on one group), hence an absolute tolerance on that scale.
                unlearn = ref[risk]["unlearn"]
                operand = abs(sum(v for n, v in unlearn.items() if group == "total" or n[4] == group[-1]))
                assert row["g_effect"] == pytest.approx(value, rel=1e-5, abs=1e-7 + 1e-6 * operand)
                assert row["predicted_change"] == pytest.approx(-1e-2 * row["g_effect"], rel=1e-9)
                assert row["realised_change"] is None
                assert row["update_change"] is None
        # Linearity: the terms and the total (.grad) add up.
        for group in ("layer_00", "layer_03", "total"):
            parts = sum(step_rows(cb, 0, term)[(risk, group)]["g_effect"] for term in ("unlearn", "regularizer"))
            assert parts == pytest.approx(total[(risk, group)]["g_effect"], rel=1e-4)
    # The terms are not proportional to the total: each carries its own sign on the forget risk.
    forget_terms = [step_rows(cb, 0, t)[("forget", "total")]["g_effect"] for t in ("unlearn", "regularizer")]
    assert forget_terms[0] < 0 < abs(forget_terms[1])


def test_terms_from_the_step_run_no_objective_forward_and_match_objective_terms(tmp_path: Path) -> None:
    # The same run through both paths, every 2nd step over 4 steps with 2 micro-batches: equal terms, and the step's
    # own terms never call objective_terms. Unmeasured steps in between record nothing.
    values = {}
    for module_type in (MLPUnlearner, ObjectiveTermsMLP):
        torch.manual_seed(0)
        cb = GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, every_n_steps=2, save_plot=False)
        module = module_type(batch_size=2, forget_weight=0.6, retain_weight=1.1)
        calls = []
        objective_terms = module.objective_terms
        module.objective_terms = lambda batches, f=objective_terms, c=calls: c.append(len(batches)) or f(batches)
        fit(module, [cb], tmp_path / module_type.__name__, max_steps=4, accumulate_grad_batches=2)
        assert calls == ([] if module_type is MLPUnlearner else [2, 2])
        assert module._loss_terms is None  # recording is off after the last measured step
        values[module_type] = {(r["step"], r["risk"], r["term"], r["group"]): r["g_effect"] for r in cb.history}
    fast, slow = values.values()
    assert fast.keys() == slow.keys()
    assert {k[0] for k in fast} == {0, 2}
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


class UnlearnBackwardCountingMLP(MLPUnlearner):
    """Counts the backward passes that reach training_step's unlearn term, and keeps each step's gradient."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unlearn_backwards: list[int] = []
        self.gradients: list[list[Tensor]] = []

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.terms(batch)
        step = self.global_step
        terms["unlearn"].register_hook(lambda grad: self.unlearn_backwards.append(step))
        if self._loss_terms is not None:
            self._loss_terms = terms
        return sum(terms.values())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.gradients.append([p.grad.detach().clone() for p in self.parameters()])


class WholeLossCountingMLP(UnlearnBackwardCountingMLP):
    """The counting MLP whose backward differentiates the whole loss (no SupportsSkipUnlearnBackward)."""

    skip_unlearn_backward = None  # type: ignore[assignment]


@pytest.mark.parametrize("retain_weight", [1.2, 0.0])
@pytest.mark.parametrize("skips", [True, False])
def test_step_terms_back_propagate_the_forget_part_once_and_leave_the_update_unchanged(
    tmp_path: Path, skips: bool, retain_weight: float
) -> None:
    # 4 steps of 2 micro-batches, measured every 2nd: the gradients the optimiser applies equal, bit for bit, those of
    # the same run without the callback (the callback adds the unlearn term's gradient, the module's backward the
    # regulariser's, if any); with SupportsSkipUnlearnBackward the unlearn term is back-propagated once per
    # micro-batch, measured or not.
    runs = []
    for callbacks in ([], [GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, every_n_steps=2, save_plot=False)]):
        torch.manual_seed(0)
        module_type = UnlearnBackwardCountingMLP if skips else WholeLossCountingMLP
        module = module_type(batch_size=2, forget_weight=0.8, retain_weight=retain_weight)
        fit(module, callbacks, tmp_path / str(len(callbacks)), max_steps=4, accumulate_grad_batches=2)
        runs.append(module)
    plain, measured = runs
    assert plain.unlearn_backwards == [0, 0, 1, 1, 2, 2, 3, 3]
    # Without the handoff the measured steps (0 and 2) differentiate the unlearn term twice per micro-batch.
    assert measured.unlearn_backwards == (plain.unlearn_backwards if skips else [0] * 4 + [1, 1] + [2] * 4 + [3, 3])
    assert len(measured.gradients) == len(plain.gradients) == 4
    for got, expected in zip(measured.gradients, plain.gradients, strict=True):
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e)


class MisrecordingMLP(MLPUnlearner):
    """Records terms that do not sum to the loss it returns (the regulariser is left out of the record)."""

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.terms(batch)
        if self._loss_terms is not None:
            self._loss_terms = {"unlearn": terms["unlearn"]}
        return sum(terms.values())


def test_recorded_terms_that_do_not_sum_to_the_loss_are_an_error(tmp_path: Path) -> None:
    match = r"MisrecordingMLP\.loss_terms\(\) recorded sum to .* the loss training_step"
    with pytest.raises(RuntimeError, match=match):
        fit(MisrecordingMLP(), [GEffectCallback(terms=True, save_plot=False)], tmp_path, max_steps=1)


class NanLossMLP(MLPUnlearner):
    """An objective whose unlearn term is NaN (e.g. a diverged run)."""

    def terms(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        terms = super().terms(batch)
        return {**terms, "unlearn": terms["unlearn"] * float("nan")}


def test_non_finite_loss_with_step_terms_drops_the_step_with_a_warning(tmp_path: Path) -> None:
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, save_plot=False)
    with pytest.warns(UserWarning, match="non-finite G-effect at step 0; step not recorded"):
        fit(NanLossMLP(), [cb], tmp_path, max_steps=1)
    assert cb.history == []


def test_objective_without_regulariser_has_only_the_unlearn_term(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, terms=True, per_instance="objective", save_plot=False)
    fit(MLPUnlearner(retain_weight=0.0), [cb], tmp_path, max_steps=1)
    assert {r["term"] for r in cb.history} == {"total", "unlearn"}
    for key, row in step_rows(cb, 0).items():
        assert step_rows(cb, 0, "unlearn")[key]["g_effect"] == pytest.approx(row["g_effect"], rel=1e-5, abs=1e-7)
    for risk in ("forget", "retain"):
        shares = sum(r["g_effect"] for r in cb.instance_history if r["risk"] == risk)
        assert shares == pytest.approx(step_rows(cb, 0)[(risk, "total")]["g_effect"], rel=1e-4)


def test_objective_side_matches_per_example_autograd_on_llama(tmp_path: Path) -> None:
    """Token-mean forget term over two micro-batches: each share against one float64 backward per example."""
    module = LlamaUnlearner(batch_size=2, forget_weight=0.8, retain_weight=1.2)
    initial = copy.deepcopy(module)
    cb = GEffectCallback(terms=True, per_instance="both", save_plot=False)
    fit(module, [cb], tmp_path, max_steps=1, accumulate_grad_batches=2)
    m = copy.deepcopy(initial).double()
    params = list(m.parameters())
    batches = [b for b, _ in zip(m.train_dataloader(), range(2), strict=False)]
    risk_grads = {}
    for name in ("forget", "retain"):
        risk_grads[name] = torch.autograd.grad(m.risk_losses(batches)[name], params, allow_unused=True)
    objective = [r for r in cb.instance_history if r["side"] == "objective"]
    got = {(r["risk"], r["index"]): r for r in objective}
    assert len(got) == len(objective) == 2 * 4
    expected_sum = dict.fromkeys(risk_grads, 0.0)
    for j, batch in enumerate(batches):
        nll, mask = m.token_nll(batch["f_ids"], batch["f_labels"])  # (B, T-1), float64
        for i in range(2):
            # The example's tokens over the micro-batch's token count (a token mean), over 2 micro-batches.
            share = -0.8 * nll[i].sum() / (mask.sum() * 2)
            naive = -0.8 * nll[i].sum() / mask[i].sum() / (2 * 2)  # a mean of per-example means: not the share
            assert abs(float((share - naive).detach())) > 0.05 * abs(float(share.detach()))
            grads = torch.autograd.grad(share, params, retain_graph=True, allow_unused=True)
            for name, risk_grad in risk_grads.items():
                pairs = zip(risk_grad, grads, strict=True)
                expected = sum(float((a * b).sum()) for a, b in pairs if a is not None and b is not None)
                expected_sum[name] += expected
                row = got[(name, 2 * j + i)]
                assert row["g_effect"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
                assert row["example"] == {"index": 2 * j + i, "question": f"question {2 * j + i}"}
    unlearn = step_rows(cb, 0, "unlearn")
    for name in ("forget", "retain"):
        # JVP shares (forward mode) against the unlearn term's own backward pass, and against float64 autograd.
        shares = sum(r["g_effect"] for r in objective if r["risk"] == name)
        assert shares == pytest.approx(unlearn[(name, "total")]["g_effect"], rel=1e-4, abs=1e-6)
        assert unlearn[(name, "total")]["g_effect"] == pytest.approx(expected_sum[name], rel=1e-4, abs=1e-6)
    # The risk side is still there, with its own rows.
    assert len([r for r in cb.instance_history if r["side"] == "risk"]) == 2 * 4


def test_ranking_file_equals_the_sums_of_the_instance_rows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "out"
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, per_instance="objective", output_dir=str(out), save_plot=False)
    fit(MLPUnlearner(n=12, batch_size=4), [cb], tmp_path, max_steps=5)  # examples 0-7 twice, 8-11 once
    by_hand: dict[int, dict[str, Any]] = {}
    for row in cb.instance_history:
        assert row["side"] == "objective"
        entry = by_hand.setdefault(row["example"]["index"], {"forget": 0.0, "retain": 0.0, "steps": set()})
        entry[row["risk"]] += row["g_effect"]
        entry["steps"].add(row["step"])
    assert sorted(len(e["steps"]) for e in by_hand.values()) == [1] * 4 + [2] * 8
    assert (out / "g_effect_ranking.csv").read_text().splitlines()[0] == (
        "index,g_effect_forget,g_effect_retain,measurements"
    )
    ranking = load_ranking(out / "g_effect_ranking.csv")
    # Sorted by the cumulative forget value, ascending.
    assert [int(r["example"]["index"]) for r in ranking] == sorted(by_hand, key=lambda i: by_hand[i]["forget"])
    for row in ranking:
        entry = by_hand[int(row["example"]["index"])]
        assert row["g_effect"] == pytest.approx({"forget": entry["forget"], "retain": entry["retain"]}, rel=1e-12)
        assert row["measurements"] == len(entry["steps"])

    # Without example ids there is no key across steps: the rows are kept, the ranking is not written, and a warning
    # says why.
    idless = GEffectCallback(per_instance="objective", output_dir=str(tmp_path / "idless"), save_plot=False)
    with pytest.warns(UserWarning, match="example_ids"):
        fit(IdlessMLP(), [idless], tmp_path, max_steps=1)
    assert idless.instance_history
    assert all(r["example"] is None for r in idless.instance_history)
    assert not (tmp_path / "idless" / "g_effect_ranking.csv").exists()
    assert (tmp_path / "idless" / "g_effect_instances.csv").is_file()


def test_coarse_boundaries_give_the_paper_groups(tmp_path: Path) -> None:
    cb = GEffectCallback(coarse_groups=True, coarse_boundaries=(1,), save_plot=False)
    fit(LlamaUnlearner(layers=3), [cb], tmp_path, max_steps=1)
    rows = step_rows(cb, 0)
    coarse = [g for (risk, g), r in rows.items() if risk == "forget" and r["level"] == "coarse"]
    assert coarse == ["blocks_00_00", "blocks_01_02+final_norm"]
    for risk in ("forget", "retain"):
        e = {g: rows[(risk, g)]["g_effect"] for (r, g) in rows if r == risk}
        assert e["blocks_00_00"] == pytest.approx(e["layer_00"], rel=1e-6)
        # As in the paper's code, the final norm is counted in the last block group.
        last = e["layer_01"] + e["layer_02"] + e["final_norm"]
        assert e["blocks_01_02+final_norm"] == pytest.approx(last, rel=1e-5)
        # embedding / block groups / lm_head partition the parameters, like the paper's five buckets.
        buckets = e["embedding"] + e["blocks_00_00"] + e["blocks_01_02+final_norm"] + e["lm_head"]
        assert buckets == pytest.approx(e["total"], rel=1e-5)

    trainer = Mock(spec=Trainer, strategy=Mock())
    for outside in ((0,), (3,), (1, 5)):
        with pytest.raises(ValueError, match=r"inside the model's blocks 0-2"):
            GEffectCallback(coarse_groups=True, coarse_boundaries=outside).setup(
                trainer, LlamaUnlearner(layers=3), "fit"
            )
    GEffectCallback(coarse_groups=True, coarse_boundaries=(1, 2)).setup(trainer, LlamaUnlearner(layers=3), "fit")
    for unordered in ((), (2, 1), (1, 1)):
        with pytest.raises(ValueError, match="strictly increasing"):
            GEffectCallback(coarse_groups=True, coarse_boundaries=unordered)
    with pytest.raises(ValueError, match="needs coarse_groups=True"):
        GEffectCallback(coarse_boundaries=(10, 20))


def test_plot_smoothing_changes_the_plot_only(tmp_path: Path) -> None:
    assert _smoothed([1.0, 3.0, 2.0], 0.5) == [1.0, 2.0, 2.0]
    assert _smoothed([1.0, 3.0], 0.0) == [1.0, 3.0]
    runs = {}
    for weight in (None, 0.6):
        torch.manual_seed(0)
        cb = GEffectCallback(
            layer_pattern=MLP_LAYERS, terms=True, plot_smoothing=weight, output_dir=str(tmp_path / str(weight))
        )
        fit(MLPUnlearner(), [cb], tmp_path, max_steps=4)
        runs[weight] = cb
    # The stored and written values are the raw ones; only the picture differs.
    assert runs[0.6].history == runs[None].history
    assert load_history(tmp_path / "0.6" / "g_effect.csv") == runs[None].history
    assert (tmp_path / "0.6" / "g_effect.png").read_bytes() != (tmp_path / "None" / "g_effect.png").read_bytes()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="plot_smoothing"):
            GEffectCallback(plot_smoothing=bad)


def test_rows_saved_before_terms_and_sides_load_as_total_and_risk() -> None:
    history_row = {
        "step": 0,
        "risk": "forget",
        "group": "total",
        "level": "total",
        "g_effect": -1.0,
        "risk_value": 2.0,
        "predicted_change": 0.01,
        "realised_change": None,
        "update_change": None,
        "cumulative_predicted_change": 0.01,
        "cumulative_realised_change": None,
        "cumulative_update_change": None,
    }
    instance_row = {"step": 0, "risk": "forget", "index": 3, "g_effect": 0.5}
    cb = GEffectCallback()
    cb.load_state_dict({"history": [history_row], "instance_history": [instance_row], "cumulative": {}})
    assert cb.history == [{**history_row, "term": "total"}]
    # In the declared key order, which is the column order of the CSV file.
    assert list(cb.history[0]) == list(typing.get_type_hints(GEffectRow))
    assert cb.instance_history == [{**instance_row, "side": "risk", "example": None}]


@pytest.mark.parametrize(
    ("measure_update", "raw_scale", "right_axes"),
    [(False, 1.0, 0), (True, 1.0, 0), (True, -1e-3, 2), (True, 0.0, 0)],  # 0: a rate-0 run predicts no change
)
def test_plot_leaves_no_axis_empty(
    measure_update: bool, raw_scale: float, right_axes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cumulative panel: the raw prediction −Σηe takes the left axis when it is the only series (no empty left
    axis beside it), shares it with the update-aware prediction of a similar scale (SGD: they agree), and is read on
    a right axis in its own units only when the scales differ by more than 10x (as under Adam): drawn divided by the
    ratio, so the right axis is the left one rescaled and both put zero at one height (here the flipped prediction
    leaves zero the other way from the realised change)."""
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    cb = GEffectCallback(layer_pattern=MLP_LAYERS, measure_update=measure_update, save_plot=False)
    fit(MLPUnlearner(), [cb], tmp_path, max_steps=3)
    for row in cb.history:
        if row["cumulative_predicted_change"] is not None:
            row["cumulative_predicted_change"] *= raw_scale
    monkeypatch.setattr("os.replace", lambda *a: None)
    cb._write_plot(tmp_path / "g_effect.png")
    (fig,) = drawn
    fig.canvas.draw()
    assert len(fig.axes) == 4  # 2 risks x 2 panels
    rights = [(ax, child) for ax in fig.axes for child in ax.child_axes]
    assert len(rights) == right_axes
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert any(label.endswith("right axis") for label in labels) is bool(right_axes)
    assert all("= left axis × 0.001" in right.get_ylabel() for _, right in rights)
    for left, right in rights:
        (lo, hi), (right_lo, right_hi) = left.get_ylim(), right.get_ylim()
        ratio = right_hi / hi
        assert ratio == pytest.approx(right_lo / lo)  # one factor: zero at one height
        assert abs(ratio) == pytest.approx(1e-3, rel=0.5)
        (raw_line,) = [line for line in left.get_lines() if "right axis" in line.get_label()]
        risk = "forget" if "forget" in left.get_title() else "retain"
        raw = [r["cumulative_predicted_change"] for r in cb.history if r["risk"] == risk and r["level"] == "total"]
        assert [y * ratio for y in raw_line.get_ydata()] == pytest.approx(raw)  # read on the right: −Σηe itself
    for ax in fig.axes:
        assert ax.get_lines(), ax.get_title() or ax.get_ylabel()


def test_plot_draws_groups_in_network_order_with_legends_below(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In history order the figure drew final_norm and lm_head between embedding and the depth groups, so a group's
    # colour differed from the report's figures; legends inside the panels covered a curve's spike.
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    monkeypatch.setattr("os.replace", lambda *a: None)
    levels = {"embedding": "group", "layer_00": "group", "layer_01": "group", "final_norm": "group"}
    levels |= {"lm_head": "group", "shallow": "coarse", "deep": "coarse", "total": "total"}
    none = dict.fromkeys(typing.get_type_hints(GEffectRow))
    rows = [
        {**none, "step": step, "risk": "forget", "term": "total", "group": group, "level": level, "g_effect": 1.0}
        | {"cumulative_predicted_change": 0.1 * step}
        for step in (0, 1)
        for group, level in levels.items()
    ]
    cb = GEffectCallback(plot_smoothing=None)
    cb.history = rows
    cb._write_plot(tmp_path / "g_effect.png")
    (fig,) = drawn
    fig.canvas.draw()
    curves, cumulative = fig.axes
    labels = [text.get_text() for text in curves.get_legend().get_texts()]
    assert labels == ["embedding", "shallow", "deep", "final_norm", "lm_head", "total"]
    for ax in (curves, cumulative):
        legend, panel = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 < panel.y0  # below the plotting area
