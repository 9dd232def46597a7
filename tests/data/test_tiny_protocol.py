"""The shipped tiny configs follow the paper's data protocol: the evaluated retain rows are never in the
regulariser's pool, and every author the unlearning touches or evaluates was learned by the tiny target."""

import sys
from pathlib import Path

import pytest
import yaml

from lit_unlearn.data import TOFUFinetuneDataModule, TOFUUnlearnDataModule, load_tofu
from lit_unlearn.data.evaluation import tofu_file_of

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "tofu_tiny"
# Every shipped unlearning config of the tiny target: its own and the paper presets' tiny ones.
UNLEARNING = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("finetune"))
UNLEARNING += sorted((REPO / "configs" / "tofu_paper").glob("tiny_*.yaml"))


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


@pytest.mark.parametrize("config", UNLEARNING, ids=lambda p: f"{p.parent.name}/{p.stem}")
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


def test_results_benchmark_keeps_evaluated_retain_rows_outside_the_pool(tmp_path: Path) -> None:
    """benchmarks/tofu_tiny.py on the deep target: for every forget split, the regulariser's pool its runs get and the
    retain rows its evaluation scores are disjoint, and the deep target learned both and the forget split."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tofu_tiny
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    deep = REPO / "configs" / "tofu_tiny_deep"
    target = _pairs(
        TOFUFinetuneDataModule("unused", **_init_args(deep / "finetune_target.yaml", "data")).training_rows()[0]
    )
    setting = tofu_tiny.Setting(str(tmp_path), "unused", "unused", {}, 32, tofu_tiny.RETAIN_EVAL_ROWS)
    for split in tofu_tiny.FORGET_SPLITS:
        for variant in ("NPO+KL",):  # every variant gets the same data arguments
            args = tofu_tiny.fit_args(tofu_tiny.RunSpec(variant, split, 1e-4, 0), setting, tmp_path)
            data = _init_args(tofu_tiny.PRESETS / tofu_tiny.VARIANTS[variant].config, "data")
            for arg in args:
                if arg.startswith("--data.") and not arg.startswith("--data.data_dir"):
                    key, value = arg.removeprefix("--data.").split("=", 1)
                    data[key] = yaml.safe_load(value)
            module = TOFUUnlearnDataModule("unused", **data)
            pool = _pairs(module.retain_rows()[0])
            evaluated = _pairs(load_tofu(tofu_file_of("retain", split))[: tofu_tiny.RETAIN_EVAL_ROWS])
            assert pool, (split, variant)
            assert not pool & evaluated, (split, variant)
            assert pool <= target
            assert evaluated <= target
            assert _pairs(module.forget_rows()[0]) <= target
