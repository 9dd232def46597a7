"""The model cache: reuse by recipe, stamps written last, and builds independent of the environment's threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lit_unlearn import model_cache
from lit_unlearn.config_hub import shipped_config
from lit_unlearn.model_cache import ModelJob


def _job(tmp_path: Path, config: str, rebuild: bool = False, overrides: tuple[str, ...] = ()) -> ModelJob:
    return ModelJob("target", config, str(tmp_path), "/data", "fingerprint", overrides=overrides, rebuild=rebuild)


def test_fine_tuning_is_cached_by_recipe(tmp_path: Path) -> None:
    """Reused only for the same recipe with a finished stamp; the build trains from the exact text it stamps."""
    calls: list[tuple[str, list[str]]] = []

    def fake_cli(args: list[str]) -> None:
        calls.append((Path(args[args.index("--config") + 1]).read_text(), args))
        out = Path(next(a for a in args if a.startswith("--model.output_dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")

    first = "model: {}\n"
    model_cache.ensure_finetuned(_job(tmp_path, first), fake_cli)
    assert model_cache.ensure_finetuned(_job(tmp_path, first), fake_cli) == (tmp_path / "target", 0.0)
    assert [c[0] for c in calls] == [first]
    model_cache.ensure_finetuned(_job(tmp_path, "model: {lr: 1.0}\n"), fake_cli)  # another recipe
    assert [c[0] for c in calls] == [first, "model: {lr: 1.0}\n"]
    overridden = _job(tmp_path, "model: {lr: 1.0}\n", overrides=("--data.exclude_split=forget05",))
    model_cache.ensure_finetuned(overridden, fake_cli)  # same text, other overrides: another recipe
    assert "--data.exclude_split=forget05" in calls[-1][1]
    (tmp_path / "target" / "recipe.sha256").unlink()  # an interrupted build leaves no stamp
    model_cache.ensure_finetuned(overridden, fake_cli)
    model_cache.ensure_finetuned(_job(tmp_path, "model: {lr: 1.0}\n", rebuild=True), fake_cli)
    assert len(calls) == 5


def test_fingerprint_follows_the_data(tofu_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tofu"
    copy.mkdir()
    for split in ("forget01", "holdout01"):
        (copy / f"{split}.json").write_bytes((tofu_dir / f"{split}.json").read_bytes())
    before = model_cache.tofu_fingerprint(copy, ["forget01", "holdout01"])
    assert before == model_cache.tofu_fingerprint(tofu_dir, ["forget01", "holdout01"])
    (copy / "holdout01.json").write_text((copy / "holdout01.json").read_text().replace("a", "b", 1))
    assert model_cache.tofu_fingerprint(copy, ["forget01", "holdout01"]) != before


def _short_recipe() -> str:
    """The shipped tiny target recipe, cut to a few optimiser steps (same model, data, optimiser and schedule)."""
    raw = yaml.safe_load(shipped_config("tofu_tiny/finetune_target").read_text())
    raw["trainer"]["max_epochs"] = 1
    raw["trainer"]["limit_train_batches"] = 6
    return yaml.safe_dump(raw)


@pytest.mark.slow
def test_builds_under_different_thread_settings_are_identical(tmp_path: Path, tofu_dir: Path) -> None:
    """Two builds whose environments ask for 1 and for 2 threads give bit-identical weights and evaluations: the
    cache pins the thread count itself."""
    config = _short_recipe()
    procs = []
    for threads in ("1", "2"):
        job = ModelJob(
            "target", config, str(tmp_path / f"omp{threads}"), str(tofu_dir), "fp", max_new_tokens=8, max_items=2
        )
        code = (
            f"from lit_unlearn.model_cache import ModelJob, prepare_model; prepare_model(ModelJob(**{job.__dict__!r}))"
        )
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-2000:]
    one = load_file(tmp_path / "omp1" / "target" / "model.safetensors")
    two = load_file(tmp_path / "omp2" / "target" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert one[name].equal(two[name]), name
    init = load_file(tmp_path / "omp1" / "init_target" / "model.safetensors")
    assert any(not one[n].equal(init[n]) for n in one)  # it did train
    summaries = [
        json.loads((tmp_path / d / "target" / "eval_forget01" / "summary.json").read_text()) for d in ("omp1", "omp2")
    ]
    assert summaries[0] == summaries[1]
