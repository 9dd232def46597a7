"""Every unlearning objective: forward-pass budget, training through the CLI, checkpoints, LoRA."""

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from tofu_batches import tofu_part, tofu_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

import lit_unlearn
from lit_unlearn import losses
from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.models import LoraSettings
from lit_unlearn.modules.base import ReferenceOutputs, UnlearningModule

# (class name, extra init args, model forwards with grad, reference forwards) per training step,
# for a batch with forget + retain (+ idk) parts.
OBJECTIVES = [
    ("GradAscent", {}, 1, 0),
    ("GradDiff", {}, 2, 0),
    ("GradDiff", {"retain_loss": "kl"}, 2, 1),
    ("NPO", {}, 2, 1),
    ("NPO", {"retain_loss": "kl"}, 2, 1),
    ("SimNPO", {}, 2, 0),
    ("IdkPO", {}, 2, 0),
    ("IdkDPO", {}, 3, 1),
    ("RMU", {"layer": 1, "trainable_params": r"layers\.(0|1)\.mlp\.down_proj\.weight"}, 2, 1),
    ("WGA", {}, 2, 0),
    ("WGA", {"retain_loss": "kl"}, 2, 1),
    ("TNPO", {}, 2, 1),
    ("TNPO", {"retain_loss": "kl"}, 2, 1),
    ("WTNPO", {}, 2, 1),
    ("WTNPO", {"retain_loss": "kl"}, 2, 1),
    ("SatImp", {}, 2, 0),
    ("UNDIAL", {}, 1, 1),
    ("CEU", {}, 1, 0),
    ("PDU", {"epsilon": 0.3}, 2, 0),
]
# The other retain terms of the objectives above whose default differs: budget only, as the CLI path is the same.
RETAIN_VARIANTS = [
    ("SatImp", {"retain_loss": "kl"}, 2, 1),
    ("UNDIAL", {"retain_loss": "nll"}, 2, 1),
    ("UNDIAL", {"retain_loss": "kl"}, 2, 1),
    ("UNDIAL", {"positions": "all", "retain_loss": "kl"}, 2, 1),
    ("CEU", {"retain_loss": "nll"}, 2, 0),
    ("CEU", {"retain_loss": "kl"}, 2, 1),
    ("PDU", {"epsilon": 0.3, "retain_loss": "kl"}, 2, 1),
    ("PDU", {"epsilon": 0.3, "retain_loss": "none"}, 1, 0),
]
RISES = ["GradAscent", "WGA", "NPO", "TNPO", "WTNPO", "SatImp", "UNDIAL", "CEU", "PDU"]
REQUIRED = {"PDU": {"epsilon": 0.3}}
"""Arguments without a default, per objective."""
TRAINED = [(name, kwargs) for name, kwargs, _, _ in OBJECTIVES]


class _Counter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._forward = module.forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._forward(*args, **kwargs)


@pytest.mark.parametrize(("name", "kwargs", "model_calls", "ref_calls"), OBJECTIVES + RETAIN_VARIANTS)
def test_forward_budget(name, kwargs, model_calls, ref_calls, tiny_model_dir, batch) -> None:
    """One forward with grad per batch part, at most one reference forward per batch."""
    module: UnlearningModule = getattr(lit_unlearn, name)(model_name_or_path=str(tiny_model_dir), **kwargs)
    model_counter = _Counter(module.model)
    ref_counter = _Counter(module.reference_model) if module.reference_model is not None else None
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    assert model_counter.calls == model_calls
    assert (ref_counter.calls if ref_counter else 0) == ref_calls
    if ref_calls:
        assert module.reference_model is not None
        assert not any(p.requires_grad for p in module.reference_model.parameters())
    else:
        assert module.reference_model is None


def test_reference_concatenation_matches_separate_forwards(tiny_model_dir, batch) -> None:
    """The stacked reference pass gives each part the logits of its own forward."""
    module = lit_unlearn.IdkDPO(model_name_or_path=str(tiny_model_dir), retain_loss="kl")
    stacked = module.reference_logits({k: batch[k] for k in ("idk", "forget", "retain")})
    for name in ("idk", "forget", "retain"):
        part = batch[name]
        with torch.no_grad():
            alone = module.reference_model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        real = part["attention_mask"].bool()
        torch.testing.assert_close(stacked[name][real], alone[real], atol=1e-5, rtol=1e-5)


def test_reference_logps_are_the_frozen_models_token_logps(tiny_model_dir, batch) -> None:
    """What NPO/TNPO/WTNPO/IdkDPO receive as π_ref: log-probs of the frozen model, loaded here on its own."""
    module = lit_unlearn.IdkDPO(model_name_or_path=str(tiny_model_dir))
    with torch.no_grad():  # move the trained model away from the reference, so mixing them up would show
        module.model.lm_head.weight.mul_(1.5)
    reference = ReferenceOutputs(batch, module.reference_logits({k: batch[k] for k in module.reference_parts}))
    frozen = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for name in ("idk", "forget"):
        part = batch[name]
        with torch.no_grad():
            logits = frozen(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits.double()
        labels = part["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        torch.testing.assert_close(reference.logps(name)[mask].double(), expected[mask], atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="add it to the objective's reference_parts"):
        reference.logps("retain")


class _NPOWithoutReferenceParts(lit_unlearn.NPO):
    reference_parts = ()


def test_forgotten_reference_part_names_the_fix(tiny_model_dir, batch) -> None:
    module = _NPOWithoutReferenceParts(model_name_or_path=str(tiny_model_dir))
    assert module.reference_model is None
    with pytest.raises(KeyError, match=r"'forget'.*reference_parts"):
        module.training_step(batch, 0)
    with pytest.raises(RuntimeError, match="holds none"), module.frozen_reference():
        pass


@pytest.mark.parametrize("lora", [False, True])
def test_rmu_retain_term_matches_the_frozen_models_states(lora, tiny_model_dir, batch) -> None:
    """RMU's retain term takes its target from the same frozen reference as the logits (adapters off with LoRA)."""
    if lora:
        pytest.importorskip("peft")
    module = lit_unlearn.RMU(
        model_name_or_path=str(tiny_model_dir),
        layer=0,  # hidden_states[1] below is block 0's raw output (the last block's would be normed)
        trainable_params=r"layers\.0\.mlp\.down_proj",
        lora=LoraSettings(r=4, alpha=8, target_modules=["down_proj"]) if lora else None,
    )
    assert (module.reference_model is None) == lora
    torch.manual_seed(0)
    with torch.no_grad():  # the untrained module would match its reference exactly: move what trains
        for param in module.model.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn_like(param))
    retain = batch["retain"]
    term = module.retain_term(retain, None)
    frozen = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = {"input_ids": retain["input_ids"], "attention_mask": retain["attention_mask"]}
    with torch.no_grad():
        target = frozen(**inputs, output_hidden_states=True).hidden_states[1]
        hidden = module.model(**inputs, output_hidden_states=True).hidden_states[1]
    mask = retain["labels"][:, 1:] != IGNORE_INDEX
    expected = ((hidden[:, :-1] - target[:, :-1]) ** 2).mean(-1)[mask].mean()
    assert expected > 1e-4
    torch.testing.assert_close(term.detach(), expected, atol=1e-6, rtol=1e-5)


def test_loss_is_gamma_forget_plus_alpha_retain(tiny_model_dir, batch) -> None:
    """train loss = γ·L_forget + α·L_retain, with L_forget from the pure loss function."""
    module = lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), forget_weight=0.5, retain_weight=2.0)
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        f_logps, f_mask = module.answer_logps(batch["forget"])
        r_logps, r_mask = module.answer_logps(batch["retain"])
    expected = 0.5 * losses.gradient_ascent(f_logps, f_mask) + 2.0 * losses.nll(r_logps, r_mask)
    torch.testing.assert_close(loss.detach(), expected)


def test_nan_loss_names_the_culprit(tiny_model_dir, batch) -> None:
    module = lit_unlearn.GradAscent(model_name_or_path=str(tiny_model_dir))
    with torch.no_grad():
        module.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss.*forget_loss"):
        module.training_step(batch, 0)


def test_idk_objectives_need_idk_part(tiny_model_dir, batch) -> None:
    module = lit_unlearn.IdkPO(model_name_or_path=str(tiny_model_dir))
    with pytest.raises(KeyError, match="with_idk: true"):
        module.training_step({"forget": batch["forget"], "retain": batch["retain"]}, 0)


def test_bad_arguments(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match=r"GradDiff: retain_loss='mse'; choose one of \('none', 'nll', 'kl'\)"):
        lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir), retain_loss="mse")
    with pytest.raises(ValueError, match="retain_loss='rmu'"):  # RMU's own retain term is RMU's only
        lit_unlearn.NPO(model_name_or_path=str(tiny_model_dir), retain_loss="rmu")
    for cls, kwargs, message in [
        (lit_unlearn.NPO, {"beta": 0.0}, "NPO beta must be > 0, got 0.0."),
        (lit_unlearn.SimNPO, {"beta": -1.0}, "SimNPO beta must be > 0, got -1.0."),
        (lit_unlearn.IdkDPO, {"beta": 0.0}, "IdkDPO beta must be > 0, got 0.0."),
        (lit_unlearn.WGA, {"beta": -1.0}, "WGA beta must be >= 0, got -1.0."),
        (lit_unlearn.TNPO, {"eps": -1e-5}, "TNPO eps must be >= 0, got -1e-05."),
        (lit_unlearn.WTNPO, {"alpha": -1.0}, "WTNPO alpha must be >= 0, got -1.0."),
        (lit_unlearn.SatImp, {"beta2": -0.1}, "SatImp beta2 must be >= 0, got -0.1."),
        (lit_unlearn.UNDIAL, {"beta": -1.0}, "UNDIAL beta must be >= 0, got -1.0."),
        (lit_unlearn.UNDIAL, {"positions": "prompt"}, "UNDIAL: positions='prompt'; choose 'answer' or 'all'."),
        (lit_unlearn.CEU, {"ignore_first_n": -1}, "CEU ignore_first_n must be >= 0, got -1."),
        (lit_unlearn.PDU, {"epsilon": -0.1}, "PDU epsilon must be >= 0, got -0.1."),
        (lit_unlearn.PDU, {"epsilon": float("inf")}, "PDU epsilon must be finite, got inf."),
        (lit_unlearn.PDU, {"epsilon": 0.3, "dual_step_size": -1.0}, "PDU dual_step_size must be >= 0, got -1.0."),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            cls(model_name_or_path=str(tiny_model_dir), **kwargs)
    with pytest.raises(ValueError, match="matches no parameter"):
        lit_unlearn.RMU(model_name_or_path=str(tiny_model_dir), layer=1, trainable_params="nothing_like_this")
    with pytest.raises(ValueError, match="blocks"):
        lit_unlearn.RMU(model_name_or_path=str(tiny_model_dir), layer=9)


def test_risk_losses_are_mean_answer_nll(tiny_model_dir, batch) -> None:
    module = lit_unlearn.GradDiff(model_name_or_path=str(tiny_model_dir))
    risks = module.risk_losses([batch, batch])
    per_example = module.per_example_risks([batch])
    for name in ("forget", "retain"):
        part = batch[name]
        out = module.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"])
        torch.testing.assert_close(risks[name], out.loss)  # HF's own causal-LM loss is the reference
        assert per_example[name].shape == (part["input_ids"].shape[0],)


def _forget_nll(model: torch.nn.Module, part: dict) -> float:
    with torch.no_grad():
        out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"])
    return out.loss.item()


def _cli_args(name: str, model_dir: Path, root: Path, extra: list[str]) -> list[str]:
    return [
        "fit",
        f"--model={name}",
        f"--model.model_name_or_path={model_dir}",
        "--model.lr=1e-3",
        "--model.warmup_epochs=0",
        "--model.weight_decay=0",
        "--data=lit_unlearn.data.TOFUUnlearnDataModule",
        "--data.forget_split=forget01",
        "--data.num_authors=2",
        "--data.batch_size=4",
        "--data.max_length=128",
        "--trainer.max_steps=3",
        "--trainer.accelerator=cpu",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        *extra,
    ]


@pytest.mark.parametrize(("name", "kwargs"), TRAINED)
def test_trains_through_cli(name, kwargs, tiny_model_dir, tmp_path) -> None:
    """A few steps through `lit-unlearn fit`: finite loss, all trainable parameters move, the reference does not."""
    extra = [f"--model.{k}={v}" for k, v in kwargs.items()]
    if name.startswith("Idk"):
        extra.append("--data.with_idk=true")
    cli = run_lightning_cli(_cli_args(name, tiny_model_dir, tmp_path, extra))
    module = cli.model
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = dict(initial.named_parameters())
    trainable = [(n, p) for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert not torch.equal(p, before[n]), f"{name}: trainable parameter {n} did not change"
    if module.reference_model is not None:
        for n, p in module.reference_model.named_parameters():
            assert torch.equal(p, before[n]), f"{name}: reference parameter {n} changed"


@pytest.mark.parametrize("user_module_in_eval", [False, True])
def test_only_the_frozen_reference_is_spared_lightnings_eval_mode_warning(
    user_module_in_eval, tiny_model_dir, tmp_path
) -> None:
    """Lightning warns at fit start about modules in eval mode: not for the frozen reference (eval on purpose), still
    for a module of the user's own; the filter is gone after the fit."""
    cli = run_lightning_cli(_cli_args("NPO", tiny_model_dir, tmp_path, [])[1:], run=False)
    if user_module_in_eval:
        cli.model.model.lm_head.eval()
    reference_modules = sum(1 for _ in cli.model.reference_model.modules())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters_before = list(warnings.filters)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        filters_after = list(warnings.filters)
    eval_warnings = [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]
    if user_module_in_eval:
        assert len(eval_warnings) == 1
        assert eval_warnings[0].startswith(f"Found {reference_modules + 1} module(s)")
    else:
        assert eval_warnings == []
    assert filters_after == filters_before


@pytest.fixture(scope="module")
def memorised_model_dir(tiny_model_dir, tofu_dir, tmp_path_factory) -> Path:
    """The tiny model after a short fit on the forget01 pairs, so it assigns them high probability.

    Confidence-weighted objectives (WGA, WTNPO) barely move a model that knows nothing: their weights p^β vanish.
    """
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    part = tofu_part(tok, tofu_rows(tofu_dir, "forget01", 40))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**part).loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow  # the memorised model's fixture is the default suite's costliest setup (about half a minute)
@pytest.mark.parametrize("name", RISES)
def test_forget_nll_rises(name, memorised_model_dir, batch, tmp_path) -> None:
    """The forget objective alone (no retain term) raises the forget-set NLL of a model that knows the answers."""
    initial = AutoModelForCausalLM.from_pretrained(memorised_model_dir)
    before = _forget_nll(initial, batch["forget"])
    assert before < 3.0  # the fixture did memorise
    extra = ["--model.retain_loss=none", "--model.lr=1e-4"]
    extra += [f"--model.{k}={v}" for k, v in REQUIRED.get(name, {}).items()]
    cli = run_lightning_cli(_cli_args(name, memorised_model_dir, tmp_path, extra))
    assert _forget_nll(cli.model.model, batch["forget"]) > before + 1e-3


def test_checkpoint_round_trip_without_reference(tiny_model_dir, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = run_lightning_cli(_cli_args("NPO", tiny_model_dir, tmp_path, ["--trainer.enable_checkpointing=true"]))
    assert "No output_dir: the trained model was not saved" in caplog.text  # said, not left to be found out
    ckpt_path = next(Path(tmp_path).rglob("*.ckpt"))
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert not any(k.startswith("reference_model.") for k in checkpoint["state_dict"])
    restored = lit_unlearn.NPO.load_from_checkpoint(ckpt_path)
    for (n, p), (_, q) in zip(cli.model.model.named_parameters(), restored.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (n, p), (_, q) in zip(initial.named_parameters(), restored.reference_model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_saves_hf_directory_at_fit_end(tiny_model_dir, tmp_path, caplog) -> None:
    out = tmp_path / "unlearned"
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        cli = run_lightning_cli(_cli_args("GradAscent", tiny_model_dir, tmp_path, [f"--model.output_dir={out}"]))
    assert f"Model and tokenizer saved to {out} " in caplog.text  # the user is told where the model is
    assert "No output_dir" not in caplog.text
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (n, p), (_, q) in zip(cli.model.model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert AutoTokenizer.from_pretrained(out).eos_token == cli.model.tokenizer.eos_token


def test_fit_refuses_an_output_dir_holding_a_model_unless_told_to_overwrite(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "unlearned"
    first = run_lightning_cli(_cli_args("GradAscent", tiny_model_dir, tmp_path, [f"--model.output_dir={out}"]))
    saved = (out / "model.safetensors").read_bytes()
    logs = sorted(tmp_path.rglob("version_*"))
    again = _cli_args("GradAscent", tiny_model_dir, tmp_path, [f"--model.output_dir={out}", "--model.lr=5e-3"])
    # The command line refuses before loading the model or making a log folder, in one line.
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(again)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: FileExistsError: GradAscent: output_dir '" in err
    assert "already holds a saved model (config.json)" in err
    assert "--model.overwrite_output_dir=true" in err
    assert sorted(tmp_path.rglob("version_*")) == logs
    # From Python (Trainer.fit without the CLI), the module refuses when fit starts.
    module = lit_unlearn.GradAscent(model_name_or_path=str(tiny_model_dir), output_dir=str(out))
    with pytest.raises(FileExistsError, match=r"output_dir '.*unlearned' already holds a saved model"):
        module.on_fit_start()
    assert (out / "model.safetensors").read_bytes() == saved  # the first run's model is intact
    second = run_lightning_cli([*again, "--model.overwrite_output_dir=true"])
    assert second.trainer.global_step == first.trainer.global_step == 3
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (n, p), (_, q) in zip(second.model.model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_lora_trains_only_adapters(tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("peft")
    cli = run_lightning_cli(
        _cli_args("NPO", tiny_model_dir, tmp_path, ["--model.lora.r=4", "--model.lora.alpha=8", "--model.lr=1e-2"])
    )
    module = cli.model
    assert module.reference_model is None  # the base model with adapters disabled is the reference
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    for n, p in module.model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad
        else:
            assert not p.requires_grad, n
            base_name = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, initial[base_name]), n
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in module.model.named_parameters())
