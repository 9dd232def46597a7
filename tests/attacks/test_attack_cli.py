"""``lit-unlearn attack``: bad input ends in one line on stderr that names the culprit and the fix (exit status 2);
and the evaluation rows an attack uses (a row subset keeps the TOFU row index)."""

from pathlib import Path

import pytest

from lit_unlearn.attacks.common import EvalOptions, eval_plan
from lit_unlearn.cli import main as cli_main
from lit_unlearn.data import TOFUEvalDataset, load_tofu
from lit_unlearn.models import load_tokenizer


def _error_line(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    assert cli_main(["attack", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_model_dir(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    line = _error_line(capsys, ["quantize", f"--model={missing}", "--bits=4", f"--output-dir={tmp_path / 'out'}"])
    assert line.startswith("lit-unlearn attack quantize: error: --model:")
    assert str(missing) in line
    assert "does not exist" in line
    assert "save_pretrained" in line
    assert not (tmp_path / "out").exists()  # nothing written


def test_unknown_bits(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    line = _error_line(capsys, ["quantize", f"--model={tiny_model_dir}", "--bits=3", f"--output-dir={tmp_path}"])
    assert "argument --bits: invalid choice: 3 (choose from 4, 8)" in line
    assert "--help" in line


def test_bad_group_size(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["quantize", f"--model={tiny_model_dir}", "--bits=4", "--group-size=rows", f"--output-dir={tmp_path}"]
    line = _error_line(capsys, args)
    assert "argument --group-size" in line
    assert "'rows' is neither a positive integer nor 'channel'" in line


def test_relearn_needs_a_target(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["relearn", f"--model={tiny_model_dir}", f"--retain={tiny_model_dir}", f"--output-dir={tmp_path}"]
    line = _error_line(capsys, args)
    assert "one of the arguments --target --target-eval is required" in line


def test_relearn_missing_target_eval(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "eval_items.json"
    args = ["relearn", f"--model={tiny_model_dir}", f"--target-eval={missing}", f"--retain={tiny_model_dir}"]
    line = _error_line(capsys, [*args, f"--output-dir={tmp_path / 'out'}"])
    assert "--target-eval:" in line
    assert str(missing) in line


def test_bad_budgets(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["relearn", f"--model={tiny_model_dir}", f"--target={tiny_model_dir}", f"--retain={tiny_model_dir}"]
    line = _error_line(capsys, [*args, "--budgets", "0", "-5", f"--output-dir={tmp_path}"])
    assert "budgets must be distinct integers ≥ 0" in line


def test_output_dir_is_never_overwritten(capsys: pytest.CaptureFixture, tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "earlier.json").write_text("{}")
    args = ["quantize", f"--model={tiny_model_dir}", "--bits=8", "--forget-split=forget01", f"--output-dir={tmp_path}"]
    line = _error_line(capsys, args)
    assert str(tmp_path) in line
    assert "--output-dir" in line
    assert (tmp_path / "earlier.json").read_text() == "{}"


def test_row_subset_keeps_tofu_row_indices(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = load_tofu("forget01_perturbed")
    dataset = TOFUEvalDataset(rows, "forget", tokenizer, row_indices=[30, 3, 17])
    assert len(dataset) == 3
    assert [dataset[i]["index"] for i in range(3)] == [3, 17, 30]
    assert [dataset[i]["question"] for i in range(3)] == [rows[i]["question"] for i in (3, 17, 30)]
    assert dataset.rows[30] is not None  # every row stays addressable by its TOFU index
    with pytest.raises(ValueError, match=r"out of range: \[40\]"):
        TOFUEvalDataset(rows, "forget", tokenizer, row_indices=[0, 40])
    with pytest.raises(ValueError, match=r"repeated: \[3\]"):
        TOFUEvalDataset(rows, "forget", tokenizer, row_indices=[3, 3])
    with pytest.raises(ValueError, match="out of range"):  # the cap applies first
        TOFUEvalDataset(rows, "forget", tokenizer, max_items=10, row_indices=[12])


def test_eval_plan_rows() -> None:
    plan = eval_plan("forget01", EvalOptions(max_items=12), forget_rows=[15, 2, 11, 30])
    assert plan.indices["forget"] == (2, 11)
    assert plan.indices["retain"] == plan.indices["world_facts"] == tuple(range(12))
    assert eval_plan("forget01", EvalOptions()).indices["forget"] == tuple(range(40))
    with pytest.raises(ValueError, match="at least 2 per split"):
        eval_plan("forget01", EvalOptions(max_items=5), forget_rows=[2, 30])
    with pytest.raises(ValueError, match=r"Forget rows \[40\]"):
        eval_plan("forget01", EvalOptions(), forget_rows=[0, 40])
