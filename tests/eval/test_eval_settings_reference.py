"""A retain reference that cannot be read fails when the evaluator is built, not after the whole evaluation."""

from pathlib import Path

import pytest

from lit_unlearn.eval.evaluator import TOFUEvaluator
from lit_unlearn.eval.settings import EvalSettings


def test_a_missing_reference_fails_before_any_item(tmp_path: Path) -> None:
    settings = EvalSettings(retain_eval_path=str(tmp_path / "retain" / "eval_items.json"))
    with pytest.raises(FileNotFoundError, match=r"retain_eval_path .*does not exist.*Evaluate the retain model first"):
        TOFUEvaluator(tokenizer=None, settings=settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["null", "None"])
def test_null_from_the_command_line_means_no_reference(given: str) -> None:
    assert EvalSettings(retain_eval_path=given).retain_eval_path is None
