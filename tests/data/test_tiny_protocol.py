"""The shipped tiny configs follow the paper's data protocol: the evaluated retain rows are never in the
regulariser's pool, and every author the unlearning touches or evaluates was learned by the tiny target."""

from pathlib import Path

import pytest
import yaml

from lit_unlearn.data import TOFUFinetuneDataModule, TOFUUnlearnDataModule, load_tofu
from lit_unlearn.data.evaluation import tofu_file_of

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tofu_tiny"
UNLEARNING = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("finetune"))


def _init_args(config: Path, section: str) -> dict:
    return dict(yaml.safe_load(config.read_text())[section]["init_args"])


def _pairs(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["question"], r["answer"]) for r in rows}


@pytest.fixture(scope="module")
def trained() -> dict[str, set[tuple[str, str]]]:
    """The QA pairs the tiny target and retain models are fine-tuned on."""
    out = {}
    for kind in ("target", "retain"):
        data = _init_args(CONFIGS / f"finetune_{kind}.yaml", "data")
        out[kind] = _pairs(TOFUFinetuneDataModule("unused", **data).training_rows()[0])
    return out


@pytest.mark.parametrize("config", UNLEARNING, ids=lambda p: p.stem)
def test_evaluated_retain_rows_are_outside_the_pool(config: Path, trained: dict) -> None:
    data = _init_args(config, "data")
    cap = _init_args(config, "model").get("evaluation", {}).get("max_items")
    module = TOFUUnlearnDataModule("unused", **data)
    pool = _pairs(module.retain_rows()[0])
    evaluated = _pairs(load_tofu(tofu_file_of("retain", module.hparams.forget_split))[:cap])
    forget = _pairs(module.forget_rows()[0])
    assert pool, config.name
    assert not pool & evaluated, f"{config.name}: the regulariser trains on evaluated retain rows"
    # The target knows what is forgotten, regularised and evaluated; the retain model never saw the forget set.
    assert pool <= trained["target"]
    assert evaluated <= trained["target"]
    assert forget <= trained["target"]
    assert not forget & trained["retain"]
    assert trained["retain"] == trained["target"] - forget
