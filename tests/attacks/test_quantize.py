"""The quantization attack: the RTN grids against the spec's worked examples and hand computations, fake quantization
of a model, the code-change diagnostic, and the attack end to end through the command line."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_unlearn.attacks import QuantSpec, code_changes, fake_quantize_, quantize_weight, recovery_ratio
from lit_unlearn.attacks.common import FORGET_METRICS
from lit_unlearn.cli import main as cli_main

ROW = [0.12, -0.5, 0.33, 0.01]


@pytest.mark.parametrize(
    ("bits", "codes", "spec_values"),
    [
        (4, [2, -7, 5, 0], [0.142857, -0.5, 0.357143, 0.0]),
        (8, [30, -127, 84, 3], [0.118110, -0.5, 0.330709, 0.0118110]),
    ],
)
def test_worked_example_round_trips_exactly(bits: int, codes: list[int], spec_values: list[float]) -> None:
    """objectives_more.md §6: the row [0.12, −0.5, 0.33, 0.01] at int4 and int8."""
    weight = torch.tensor([ROW])
    q = quantize_weight(weight, QuantSpec(bits=bits))
    scale = torch.tensor(0.5, dtype=torch.float32) / (2 ** (bits - 1) - 1)  # max |W| / (2^(b−1) − 1), in float32
    assert q.codes.tolist() == [codes]
    assert q.codes.dtype == torch.int8
    assert torch.equal(q.scale, scale.reshape(1, 1))
    assert torch.equal(q.dequantized, torch.tensor([codes], dtype=torch.float32) * scale)
    assert q.dequantized[0].tolist() == pytest.approx(spec_values, abs=5e-7)  # the spec's six digits
    if bits == 4:
        assert q.scale.item() == pytest.approx(0.0714286, abs=5e-8)
    # Round trip: the dequantized weights sit on the grid, so quantizing them again changes nothing.
    again = quantize_weight(q.dequantized, QuantSpec(bits=bits))
    assert torch.equal(again.codes, q.codes)
    assert torch.equal(again.dequantized, q.dequantized)
    # Adding 1e-5 to every entry changes no code.
    assert torch.equal(quantize_weight(weight + 1e-5, QuantSpec(bits=bits)).codes, q.codes)


def test_statistical_example_fraction_of_codes_changed() -> None:
    """objectives_more.md §6: a 256×512 layer, W ~ N(0, 0.02²), ΔW ~ N(0, 1e−5²): 1.65 % (int8), 0.0916 % (int4 per
    channel), 0.0961 % (int4, group 128). With this seed the counts match the spec to its printed digits; other draws
    scatter by about 7 % of the int4 values (120 ± 9 codes)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 512, generator=generator, dtype=torch.float64) * 0.02
    delta = torch.randn(256, 512, generator=generator, dtype=torch.float64) * 1e-5
    expected = {QuantSpec(8): 1.65e-2, QuantSpec(4): 0.0916e-2, QuantSpec(4, group_size=128): 0.0961e-2}
    for spec, fraction in expected.items():
        before = quantize_weight(weight, spec).codes
        after = quantize_weight(weight + delta, spec).codes
        changes = code_changes({"layer": before}, {"layer": after})
        digits = 1e-4 if spec.bits == 8 else 1e-6  # half a unit of the spec's last printed digit, as a fraction
        assert changes.fraction == pytest.approx(fraction, abs=digits / 2 + 1e-12), spec.label


def test_asymmetric_grid_by_hand() -> None:
    """GPTQ's grid on the worked row: lo = −0.5, hi = 0.33, s = 0.83/15, z = round(0.5/s) = 9."""
    q = quantize_weight(torch.tensor([ROW]), QuantSpec(bits=4, symmetric=False))
    s = 0.83 / 15
    codes = [round(x / s) + 9 for x in ROW]  # [11, 0, 15, 9]
    assert q.codes.tolist() == [codes]
    assert q.codes.dtype == torch.uint8
    assert q.zero.tolist() == [[9.0]]
    assert q.dequantized[0].tolist() == pytest.approx([(c - 9) * s for c in codes], abs=1e-6)
    # The range is widened to hold 0 (an all-positive row has z = 0), so 0 is always exact.
    positive = quantize_weight(torch.tensor([[0.1, 0.4, 0.0]]), QuantSpec(bits=4, symmetric=False))
    assert positive.zero.tolist() == [[0.0]]
    assert positive.codes.tolist() == [[4, 15, 0]]  # 0.1 / (0.4/15) = 3.75 → 4
    assert positive.dequantized[0, 2].item() == 0.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_groups_with_a_shorter_last_group_equal_per_slice_quantization(symmetric: bool) -> None:
    """Groups of 4 along the 10 input columns: slices [0:4], [4:8] and the short [8:10], each its own scale."""
    weight = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    q = quantize_weight(weight, QuantSpec(bits=4, group_size=4, symmetric=symmetric))
    assert q.scale.shape == (3, 3)
    for g, cols in enumerate((slice(0, 4), slice(4, 8), slice(8, 10))):
        alone = quantize_weight(weight[:, cols], QuantSpec(bits=4, symmetric=symmetric))
        assert torch.equal(q.codes[:, cols], alone.codes)
        assert torch.equal(q.dequantized[:, cols], alone.dequantized)
        assert torch.equal(q.scale[:, g], alone.scale[:, 0])
    # A group as wide as the row (or wider) is per-channel quantization.
    assert torch.equal(
        quantize_weight(weight, QuantSpec(bits=8, group_size=64)).codes, quantize_weight(weight, QuantSpec(8)).codes
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_group_stays_zero(symmetric: bool) -> None:
    q = quantize_weight(torch.zeros(2, 4), QuantSpec(bits=4, symmetric=symmetric))
    assert torch.equal(q.dequantized, torch.zeros(2, 4))
    assert not torch.isnan(q.dequantized).any()


def test_code_changes_by_hand() -> None:
    """int4 per channel, s = 0.1 on both rows: 0.1 → code 1, 0.151 → code 2 (1.51 rounds up); nothing else moves."""
    a = quantize_weight(torch.tensor([[0.7, 0.1], [-0.7, 0.3]]), QuantSpec(bits=4)).codes
    b = quantize_weight(torch.tensor([[0.7, 0.151], [-0.7, 0.3]]), QuantSpec(bits=4)).codes
    assert a.tolist() == [[7, 1], [-7, 3]]
    assert b.tolist() == [[7, 2], [-7, 3]]
    other = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int8)
    changed = other.clone()
    changed[0, 0], changed[1, 2] = 0, 0
    result = code_changes({"x": a, "y": other}, {"x": b, "y": changed})
    assert [(layer.name, layer.codes, layer.changed) for layer in result.layers] == [("x", 4, 1), ("y", 6, 2)]
    assert [layer.fraction for layer in result.layers] == [0.25, 2 / 6]
    assert (result.codes, result.changed, result.fraction) == (10, 3, 0.3)
    with pytest.raises(ValueError, match="different layers"):
        code_changes({"x": a}, {"z": a})


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantSpec(bits=3)
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(bits=4, group_size=0)
    assert QuantSpec(bits=4, group_size=128, symmetric=False).label == "int4-g128-asym"


def test_fake_quantize_puts_every_linear_but_the_head_on_the_grid(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    spec = QuantSpec(bits=4, group_size=16)
    result = fake_quantize_(model, spec)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(result.codes) == linears - {"lm_head"}
    assert result.quantized_parameters == sum(before[f"{n}.weight"].numel() for n in result.codes)
    assert result.total_parameters == sum(p.numel() for p in before.values())
    params = dict(model.named_parameters())
    for name, value in before.items():
        layer = name.removesuffix(".weight")
        if layer in result.codes:
            expected = quantize_weight(value, spec)
            assert torch.equal(params[name], expected.dequantized)  # float32 model: the grid values exactly
            assert torch.equal(result.codes[layer], expected.codes)
            assert not torch.equal(params[name], value)
        else:  # the head, the embeddings and the norms are untouched
            assert torch.equal(params[name], value), name


def test_quantize_command_end_to_end(attack_models: dict[str, Path], tmp_path: Path) -> None:
    """``lit-unlearn attack quantize`` on tiny models: four evaluations, code changes equal to a direct comparison of
    the quantized weights, recovery from the reported numbers, and no overwriting."""
    out = tmp_path / "q"
    args = [
        "attack",
        "quantize",
        f"--model={attack_models['unlearned']}",
        f"--target={attack_models['target']}",
        "--bits=4",
        "--group-size=16",
        "--forget-split=forget01",
        "--max-new-tokens=4",
        "--max-items=3",
        "--eval-batch-size=8",
        "--device=cpu",
        "--threads=1",
        "--min-gap=0",
    ]
    assert cli_main([*args, f"--output-dir={out}"]) == 0
    report = json.loads((out / "quantize.json").read_text())
    assert report["spec"] == {"bits": 4, "group_size": 16, "symmetric": True, "label": "int4-g16-sym"}
    assert list(report["metrics"]) == ["target", "Q(target)", "unlearned", "Q(unlearned)"]
    assert all(m["num_forget_items"] == 3 for m in report["metrics"].values())
    for name in ("target", "Q_target", "unlearned", "Q_unlearned"):
        assert (out / f"eval_{name}" / "eval_items.json").is_file()
    # Quantization changes the model: its forget numbers move.
    assert (
        report["metrics"]["Q(unlearned)"]["forget_probability"] != report["metrics"]["unlearned"]["forget_probability"]
    )

    spec = QuantSpec(bits=4, group_size=16)
    codes = [
        fake_quantize_(AutoModelForCausalLM.from_pretrained(attack_models[k]), spec).codes
        for k in ("target", "unlearned")
    ]
    direct = code_changes(*codes)
    assert report["code_changes"]["changed"] == direct.changed
    assert report["code_changes"]["fraction"] == pytest.approx(direct.fraction)
    assert [layer["name"] for layer in report["code_changes"]["layers"]] == list(codes[0])
    m = report["metrics"]
    for metric in FORGET_METRICS:
        key = f"forget_{metric}"
        expected = recovery_ratio(m["Q(unlearned)"][key], m["unlearned"][key], m["target"][key], 0.0)
        assert report["recovery"][metric] == pytest.approx(expected)
    assert "Integer codes that differ" in (out / "quantize.md").read_text()
    # A second run never overwrites the first.
    assert cli_main([*args, f"--output-dir={out}"]) == 2
