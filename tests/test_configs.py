"""Every shipped config parses and instantiates through the real CLI (litgpt's config-hub test)."""

from pathlib import Path

import pytest
import yaml

from lit_unlearn.lightning_cli import run_lightning_cli
from lit_unlearn.modules.base import UnlearningModule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    objectives = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_po", "idk_dpo", "rmu", "wga", "tnpo", "wtnpo")
    objectives += ("satimp", "undial", "ceu", "pdu")
    for objective in objectives:
        assert f"tofu/{objective}.yaml" in names
        assert f"tofu_tiny/{objective}.yaml" in names
    # The G-effect paper's presets: both of its models and the tiny one, for every method of its code.
    for method in ("ga", "gd", "ga_kl", "npo", "npo_kl", "idk", "rmu", "wga", "tnpo", "wtnpo"):
        for model in ("phi", "llama2", "tiny"):
            assert f"tofu_paper/{model}_{method}.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_instantiates(config: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Parse and instantiate with the model swapped for the offline tiny one and outputs sent to tmp_path."""
    raw = yaml.safe_load(config.read_text())
    header = config.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header), "configs open with a 3-line comment header"
    assert any("lit-unlearn" in line for line in header), "the header names the command"
    init = raw["model"]["init_args"]
    overrides = [f"--trainer.logger.init_args.save_dir={tmp_path}"]
    if "tiny" in init:  # fine-tuning from scratch: the tiny model is built at model_name_or_path
        overrides.append(f"--model.model_name_or_path={tmp_path / 'init'}")
    else:
        overrides.append(f"--model.model_name_or_path={tiny_model_dir}")
    if "tokenizer_name" in init:  # a Hub tokenizer beside Hub weights (TOFU's Phi-1.5): the tiny model's own
        overrides.append(f"--model.tokenizer_name={tiny_model_dir}")
    if "output_dir" in init:
        overrides.append(f"--model.output_dir={tmp_path / 'out'}")
    if raw["model"]["class_path"].endswith("RMU"):
        overrides += ["--model.layer=1", r"--model.trainable_params=layers\.1\.mlp"]
    if "precision" in raw.get("trainer", {}):
        overrides.append("--trainer.precision=32-true")
    cli = run_lightning_cli(["--config", str(config), *overrides], run=False)
    assert type(cli.model).__name__ == raw["model"]["class_path"].rsplit(".", 1)[-1]
    assert type(cli.datamodule).__name__ == raw["data"]["class_path"].rsplit(".", 1)[-1]
    if isinstance(cli.model, UnlearningModule):
        for key in ("forget_weight", "retain_weight", "retain_loss"):
            if key in init:
                assert getattr(cli.model, key) == init[key]
    if config.parent.name == "tofu_paper":  # the paper's code settings reach the module and the data module
        assert cli.model.kl_positions == "all"
        assert cli.model.hparams.weight_decay == 0.0
        assert cli.datamodule.hparams.hold_out_retain_eval
        for key in ("beta", "alpha", "eps", "control_vector", "layer_index"):
            if key in init:
                assert getattr(cli.model, key) == init[key]
        if "tokenizer_name" in init:
            assert cli.datamodule.hparams.tokenizer_name_or_path == str(tiny_model_dir)
