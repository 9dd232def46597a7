"""The G-effect paper's code settings as options of the modules and losses (configs/tofu_paper uses them), each against
an independent reference: torch's own ``kl_div`` for the KL over every position, Hugging Face's ``hidden_states`` for
RMU's layer index, the seeded draw for its control vector, and hand-computed TNPO weights."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

import lit_unlearn
from lit_unlearn import losses
from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.data import load_tofu
from lit_unlearn.data.collate import pad_sequences
from lit_unlearn.data.formatting import encode_pair


@pytest.fixture(scope="module")
def retain(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    """Three retain rows of different lengths, right-padded: prompt, answer and padding positions all occur."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = [encode_pair(tok, r["question"], r["answer"], "qa", 96) for r in load_tofu("retain90")[:3]]
    return pad_sequences([e["input_ids"] for e in encoded], tok.pad_token_id, labels=[e["labels"] for e in encoded])


def test_kl_over_every_position_is_torchs_batchmean_on_the_flattened_batch() -> None:
    """The paper's code: ``F.kl_div(log q, log p_o, reduction="batchmean", log_target=True)`` on (B·T, V)."""
    torch.manual_seed(0)
    logits, ref = torch.randn(3, 7, 11, dtype=torch.float64), torch.randn(3, 7, 11, dtype=torch.float64)
    labels = torch.full((3, 7), IGNORE_INDEX)
    labels[0, 4:] = 1  # labels only matter for "answer": "all" must not look at them
    flat_q, flat_p = logits.log_softmax(-1).reshape(21, 11), ref.log_softmax(-1).reshape(21, 11)
    expected = F.kl_div(flat_q, flat_p, reduction="batchmean", log_target=True)
    value = losses.kl_divergence(logits, ref, labels, "all")
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    shares = losses.kl_divergence(logits, ref, labels, "all", per_example=True)
    per_row = [
        F.kl_div(flat_q[7 * b : 7 * b + 7], flat_p[7 * b : 7 * b + 7], reduction="sum", log_target=True) / 21
        for b in range(3)
    ]
    torch.testing.assert_close(shares, torch.stack(per_row), rtol=1e-12, atol=1e-12)
    # The answer-position mean is another number (here: row 0's 2 shifted answer positions only).
    assert not math.isclose(float(losses.kl_divergence(logits, ref, labels, "answer")), float(value))


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_the_modules_kl_regulariser_follows_kl_positions(
    positions: str, tiny_model_dir: Path, retain: dict[str, torch.Tensor]
) -> None:
    """GA + KL (the paper's ``ga_kl``): the regulariser term is the KL of the module's model against its frozen
    reference, averaged where ``kl_positions`` says, computed here with torch's ``kl_div``."""
    module = lit_unlearn.GradAscent(
        model_name_or_path=str(tiny_model_dir), retain_loss="kl", retain_weight=0.5, kl_positions=positions
    ).double()
    with torch.no_grad():
        for param in module.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        inputs = {"input_ids": retain["input_ids"], "attention_mask": retain["attention_mask"]}
        logq = module.model(**inputs).logits.log_softmax(-1)
        logp = module.reference_model(**inputs).logits.log_softmax(-1)
        kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # (B, T)
        if positions == "all":
            expected = kl.mean()
        else:  # position t predicts label t+1
            mask = retain["labels"][:, 1:] != IGNORE_INDEX
            expected = kl[:, :-1][mask].mean()
        batch = {"forget": retain, "retain": retain}
        got = module.objective_terms([batch])["regularizer"]
    torch.testing.assert_close(got, 0.5 * expected, rtol=1e-10, atol=1e-12)


def test_kl_positions_is_checked() -> None:
    with pytest.raises(ValueError, match="kl_positions='prompt'.*'answer'.*'all'"):
        lit_unlearn.GradAscent(model_name_or_path="unused", retain_loss="kl", kl_positions="prompt")


def _rmu(tiny_model_dir: Path, **kwargs: object) -> lit_unlearn.RMU:
    return lit_unlearn.RMU(model_name_or_path=str(tiny_model_dir), trainable_params=".*", **kwargs)


def test_rmu_hidden_states_index_is_hugging_faces(tiny_model_dir: Path, retain: dict[str, torch.Tensor]) -> None:
    """``layer_index="hidden_states"``: index l is ``output_hidden_states[l]`` for every l, the embedding output (0)
    and the final norm's output (the last) included; ``"block"`` l is block l's raw output (= index l + 1 below the
    last block)."""
    inputs = {"input_ids": retain["input_ids"], "attention_mask": retain["attention_mask"]}
    for layer in range(3):  # the tiny model has 2 blocks: indices 0, 1, 2
        module = _rmu(tiny_model_dir, layer=layer, layer_index="hidden_states", retain_loss="none")
        with torch.no_grad():
            reference = module.model(**inputs, output_hidden_states=True).hidden_states
            torch.testing.assert_close(module.hidden_states(module.model, retain), reference[layer])
    block = _rmu(tiny_model_dir, layer=0, retain_loss="none")
    with torch.no_grad():
        reference = block.model(**inputs, output_hidden_states=True).hidden_states
        torch.testing.assert_close(block.hidden_states(block.model, retain), reference[1])
    with pytest.raises(ValueError, match=r"hidden-states indices 0\.\.2"):
        _rmu(tiny_model_dir, layer=3, layer_index="hidden_states")
    with pytest.raises(ValueError, match="layer_index='layers'"):
        _rmu(tiny_model_dir, layer=1, layer_index="layers")


def test_rmu_control_vector_uniform_is_the_unnormalised_draw(tiny_model_dir: Path) -> None:
    """The paper's code steers towards ``c·u`` with u ~ U[0,1)^d as drawn (norm ≈ c·√(d/3)); original RMU normalises
    u first (norm c). Both are the same seeded draw."""
    d = 32
    draw = torch.rand(d, generator=torch.Generator().manual_seed(7))
    paper = _rmu(tiny_model_dir, layer=1, control_vector="uniform", steering_coeff=2.0, seed=7, retain_loss="none")
    original = _rmu(tiny_model_dir, layer=1, control_vector="unit", steering_coeff=2.0, seed=7, retain_loss="none")
    torch.testing.assert_close(paper.control, 2.0 * draw)
    torch.testing.assert_close(original.control, 2.0 * draw / draw.norm())
    assert float(original.control.norm()) == pytest.approx(2.0)
    assert float(paper.control.norm()) == pytest.approx(2.0 * math.sqrt(d / 3), rel=0.25)
    with pytest.raises(ValueError, match=re.escape("control_vector='gaussian'")):
        _rmu(tiny_model_dir, layer=1, control_vector="gaussian")


def test_rmu_paper_variant_trains_every_parameter(tiny_model_dir: Path) -> None:
    module = _rmu(tiny_model_dir, layer=1, layer_index="hidden_states", retain_loss="none")
    assert all(p.requires_grad for p in module.model.parameters())
    assert not module.needs_reference  # no retain term, no KL: the paper's rmu_<l> holds no frozen copy


def test_tnpo_eps_of_the_paper_code_suppresses_low_probability_tokens() -> None:
    """At β = 4 and p = p_o = 0.03, ``2 p^β / (p^β + p_o^β + ε)`` is 1 with the paper's formula (ε = 0) and
    2·8.1e-7 / (1.62e-6 + 1e-5) = 0.1394 with its code's ε = 1e-5 (hand-computed)."""
    logp = torch.full((1, 1), math.log(0.03), dtype=torch.float64)
    assert float(losses.tnpo_weights(logp, logp, 4.0)) == pytest.approx(1.0, rel=1e-12)
    assert float(losses.tnpo_weights(logp, logp, 4.0, 1e-5)) == pytest.approx(1.62e-6 / 1.162e-5, rel=1e-9)
    assert float(losses.tnpo_weights(logp, logp, 4.0, 1e-5)) == pytest.approx(0.1394, abs=1e-4)
    # WTNPO multiplies by p^α on top.
    weights = losses.wtnpo_weights(logp, logp, 4.0, 1.5, 1e-5)
    assert float(weights) == pytest.approx(1.62e-6 / 1.162e-5 * 0.03**1.5, rel=1e-9)


def test_weights_without_a_tokenizer_take_tokenizer_name_in_module_and_data(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """TOFU's Phi-1.5 targets ship weights only: the preset names the tokenizer separately, and both the module and
    the data module (linked on the command line) use it."""
    import shutil

    from lit_unlearn.lightning_cli import run_lightning_cli

    weights = tmp_path / "weights_only"
    weights.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, weights / name)
    common = [
        "--config",
        str(Path(__file__).resolve().parents[2] / "configs/tofu_paper/phi_ga.yaml"),
        f"--model.model_name_or_path={weights}",
        f"--model.output_dir={tmp_path / 'out'}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.precision=32-true",
    ]
    cli = run_lightning_cli([*common, f"--model.tokenizer_name={tiny_model_dir}"], run=False)
    assert cli.datamodule.hparams.tokenizer_name_or_path == str(tiny_model_dir)
    expected = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert cli.model.tokenizer.get_vocab() == expected.get_vocab()
    # Without it, the weights' folder has no tokenizer to load: the command says so and exits 2.
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli([*common, "--model.tokenizer_name=null"], run=False)
    assert exit_info.value.code == 2
    assert "weights_only' has none of ['tokenizer.json'" in capsys.readouterr().err
