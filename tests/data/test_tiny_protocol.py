"""The shipped tiny configs follow the paper's data protocol: the evaluated retain rows are never in the
regulariser's pool, and every author the unlearning touches or evaluates was learned by the tiny target."""

import json
import sys
from pathlib import Path
from typing import Any

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


def _run_stage(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unselected: tuple[str, ...] = ()
) -> tuple[Any, list, list]:
    """``tofu_tiny.main(argv)`` with the models, references, runs and page patched out; an earlier selection of
    every variant but ``unselected`` on record. Returns the module, the specs it queued and the splits it collected
    runs of."""
    import benchmark_scripts

    from lit_unlearn.model_cache import PreparedModel

    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    models = {n: PreparedModel(n, str(tmp_path / n)) for n in ("target", "retain01", "retain05", "retain10")}
    monkeypatch.setattr(tofu_tiny.tiny_deep_models, "build", lambda *a, **k: models)
    monkeypatch.setattr(
        tofu_tiny, "references", lambda models, splits, setting: {s: {"target": {"model_utility": 1.0}} for s in splits}
    )
    monkeypatch.setattr(tofu_tiny, "describe_model", lambda model_dir: {})
    monkeypatch.setattr(
        tofu_tiny, "write_result", lambda result, out, page: (out / "written.json").write_text(json.dumps(result))
    )
    queued: list = []
    collected: list = []

    def fake_run_all(specs: list, setting: object, workers: int) -> list:
        queued.extend(specs)
        return [{"spec": {"lr": 1e-4, "variant": s.variant}, "summary": {"model_utility": 1.0, "forget_quality": 0.5}}
                for s in specs]  # fmt: skip

    monkeypatch.setattr(tofu_tiny, "run_all", fake_run_all)
    monkeypatch.setattr(tofu_tiny, "_brief", lambda record: {})
    monkeypatch.setattr(
        tofu_tiny, "cached_runs", lambda selection, setting, splits, written=None: collected.extend(splits) or []
    )
    (tmp_path / "figures").mkdir()
    earlier = {"selection": {v: {"lr": 3e-4, "runs": []} for v in tofu_tiny.VARIANTS if v not in unselected}}
    (tmp_path / "figures" / "tofu_tiny.json").write_text(json.dumps(earlier))
    tofu_tiny.main([*argv, "--data-dir", "unused", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "figures")])
    return tofu_tiny, queued, collected


def test_seeds_stage_runs_only_the_named_variants_and_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`seeds --splits forget05 --variants WTNPO WGA` queues those cells' seed runs and nothing else (the learning-rate
    grid of forget01 is looked up, as for every stage), though every variant's selection is on record; in the order
    named, not the selection's (WGA comes first there)."""
    argv = ["seeds", "--splits", "forget05", "--variants", "WTNPO", "WGA"]
    tofu_tiny, queued, collected = _run_stage(argv, tmp_path, monkeypatch)
    grid = {(s.variant, s.split) for s in queued if s.seed == 0 and s.split == "forget01"}
    assert grid == {(v, "forget01") for v in ("WGA", "WTNPO")}
    seeds = [(s.variant, s.split, s.seed) for s in queued if s.split != "forget01"]
    assert seeds == [(v, "forget05", seed) for v in ("WTNPO", "WGA") for seed in tofu_tiny.SEEDS]
    assert collected == ["forget01", "forget05"]


def test_collect_stage_runs_nothing_new_and_gathers_the_named_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tofu_tiny, queued, collected = _run_stage(["collect", "--splits", "forget05", "forget10"], tmp_path, monkeypatch)
    assert queued == []  # every variant's selection is in the JSON: its grid (maybe no longer cached) is not run
    assert collected == ["forget01", "forget05", "forget10"]
    # A variant the JSON has not selected is selected from a grid the cache holds whole, and never run.
    for folder, rates in (("part", tofu_tiny.LR_GRID[:-1]), ("whole", tofu_tiny.LR_GRID)):
        for lr in rates:
            record = {"spec": {"lr": lr, "variant": "WGA"}, "summary": {"model_utility": 1.0, "forget_quality": lr}}
            run_dir = tmp_path / folder / "runs" / tofu_tiny.RunSpec("WGA", "forget01", lr, 0).run_id
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(json.dumps(record))
        _, queued, _ = _run_stage(["collect"], tmp_path / folder, monkeypatch, unselected=("WGA",))
        assert queued == []
        selection = json.loads((tmp_path / folder / "figures" / "written.json").read_text())["selection"]
        assert selection.get("WGA", {}).get("lr") == (max(rates) if folder == "whole" else None)


def test_select_stage_gathers_only_splits_with_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs of a split whose references were never evaluated cannot be scored: they wait for `seeds` or `collect`.
    _, _, collected = _run_stage(["select"], tmp_path, monkeypatch)
    assert collected == ["forget01"]


def test_only_cells_with_every_seed_are_reported(tmp_path: Path) -> None:
    """A (variant, split) cell enters the JSON's runs only once every seed of it is cached."""
    import benchmark_scripts

    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    setting = tofu_tiny.Setting(str(tmp_path), "unused", "unused", {}, 32, tofu_tiny.RETAIN_EVAL_ROWS)
    selection = {"GA": {"lr": 3e-4}, "WGA": {"lr": 3e-4}}
    record = {"steps": 1, "fit_s": 1.0, "eval_s": 1.0, "summary": {}, "g_effect": {}}
    cached = [("GA", "forget05", s) for s in tofu_tiny.SEEDS] + [("WGA", "forget05", s) for s in tofu_tiny.SEEDS[:-1]]
    for variant, split, seed in cached:
        spec = tofu_tiny.RunSpec(variant, split, 3e-4, seed)
        path = tmp_path / "runs" / spec.run_id / "run.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record | {"spec": {"variant": variant, "split": split, "seed": seed}}))
    runs = tofu_tiny.cached_runs(selection, setting, tofu_tiny.FORGET_SPLITS)
    assert [(r["spec"]["variant"], r["spec"]["split"], r["spec"]["seed"]) for r in runs] == cached[:3]


def test_model_records_name_no_machine_paths(tmp_path: Path) -> None:
    import benchmark_scripts

    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    inside = tofu_tiny.REPO / "outputs" / "tofu_tiny_deep" / "retain05"
    assert tofu_tiny._portable(str(tmp_path / "cache" / "retain05"), tmp_path / "cache") == "<cache-dir>/retain05"
    assert tofu_tiny._portable(str(inside), tmp_path / "cache") == "outputs/tofu_tiny_deep/retain05"  # in the repo
