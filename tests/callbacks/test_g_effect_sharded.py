"""GEffectCallback under FSDP2 (Lightning's ModelParallelStrategy): two CPU processes (gloo) against one process.

The two-process runs are made by ``sharded_runs.py`` in a subprocess (the strategy's launcher re-executes the script
for rank 1); the one-process references run here, on the same global batches (see that module's docstring).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sharded_runs import WORLD, run, tofu_batches
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]

# One two-process launch of five runs, plus the one-process references: about a minute of CPU, three on a loaded
# two-core machine. Run with -m slow.
pytestmark = pytest.mark.slow


def _rows(history: list[dict[str, Any]]) -> dict[tuple[int, str, str, str], dict[str, Any]]:
    return {(r["step"], r["risk"], r["term"], r["group"]): r for r in history}


@pytest.fixture(scope="module")
def sharded(tiny_model_dir: Path, tofu_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The runs of sharded_runs.main on two processes, and their output folder."""
    out = tmp_path_factory.mktemp("sharded") / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = Path(__file__).with_name("sharded_runs.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tofu_dir), str(out)],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {**json.loads(out.read_text()), "root": out.parent}


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tofu_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same runs on one process (no mesh: the modules stay unsharded), the halves accumulated."""
    root = tmp_path_factory.mktemp("single")
    batches = tofu_batches(tiny_model_dir, tofu_dir)
    results = {
        name: run(name, tiny_model_dir, batches, root, "auto", 1, steps)
        for name, steps in [("grad_diff", 3), ("npo", 4)]
    }
    return {**results, "root": root}


@pytest.mark.parametrize("name", ["grad_diff", "npo"])
def test_two_sharded_processes_match_one_process(name: str, sharded: dict[str, Any], single: dict[str, Any]) -> None:
    """The loss trajectory and every G-effect (total, each group, each term, update and realised change) match."""
    assert sharded[name]["all_sharded"], "every parameter of the model (and of NPO's reference) is a DTensor"
    assert not single[name]["all_sharded"]
    assert sharded[name]["losses"] == pytest.approx(single[name]["losses"], rel=1e-5, abs=1e-6)
    got, expected = _rows(sharded[name]["history"]), _rows(single[name]["history"])
    assert set(got) == set(expected)
    groups = {key[3] for key in expected}
    assert {"embedding", "layer_00", "layer_01", "final_norm", "lm_head", "total"} <= groups
    assert {key[2] for key in expected} == {"total", "unlearn", "regularizer"}
    for key, row in expected.items():
        assert got[key]["g_effect"] == pytest.approx(row["g_effect"], rel=1e-4, abs=1e-9), key
        assert got[key]["risk_value"] == pytest.approx(row["risk_value"], rel=1e-5), key
        for change in ("update_change", "realised_change"):
            if row[change] is None:
                assert got[key][change] is None
            else:
                assert got[key][change] == pytest.approx(row[change], rel=1e-4, abs=1e-9), (key, change)


def test_sharded_model_is_saved_whole(sharded: dict[str, Any], single: dict[str, Any]) -> None:
    """on_fit_end gathers the shards: the saved model loads as a plain Llama with the one-process run's weights."""
    model = AutoModelForCausalLM.from_pretrained(sharded["root"] / "grad_diff" / "model")
    reference = AutoModelForCausalLM.from_pretrained(single["root"] / "grad_diff" / "model")
    assert model.config.architectures == ["LlamaForCausalLM"]
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_resuming_a_sharded_checkpoint_continues_the_run(sharded: dict[str, Any]) -> None:
    """Resumed from the step-2 distributed checkpoint (no frozen reference in it), steps 2-3 are those of the
    uninterrupted run, and the callback's history continues from the checkpoint."""
    checkpoint = sharded["root"] / "npo" / "ckpt" / "epoch=0-step=2.ckpt"
    assert checkpoint.is_dir()
    assert len(list(checkpoint.glob("*.distcp"))) == WORLD
    full, resumed = sharded["npo"], sharded["npo_resumed"]
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-6)
    assert _rows(resumed["history"]).keys() == _rows(full["history"]).keys()
    for key, row in _rows(full["history"]).items():
        assert _rows(resumed["history"])[key]["g_effect"] == pytest.approx(row["g_effect"], rel=1e-6, abs=1e-9)


def test_bf16_mixed_policy_and_gradient_checkpointing(sharded: dict[str, Any]) -> None:
    """bf16-mixed computes in bfloat16 (FSDP2's policy): close to, but not, the float32 step; the G-effect too."""
    bf16, fp32 = sharded["grad_diff_bf16"], sharded["grad_diff"]
    assert bf16["losses"][0] != fp32["losses"][0]
    assert bf16["losses"][0] == pytest.approx(fp32["losses"][0], abs=5e-2)
    got, expected = _rows(bf16["history"]), _rows(fp32["history"])
    for risk in ("forget", "retain"):
        key = (0, risk, "total", "total")
        assert got[key]["g_effect"] == pytest.approx(expected[key]["g_effect"], rel=5e-2)
