"""The ``lit-unlearn`` console script: its errors, and two CPU processes through Lightning's re-executing launcher.

``strategy=ddp`` and ``ModelParallelStrategy`` start rank 1 by running the process's own command line again, so the
command line must carry the subcommand and the whole configuration: these tests launch the real console script (the
venv's ``lit-unlearn``; ``python -m lit_unlearn`` where none is installed) with ``PYTHONPATH`` set to this checkout,
which Python searches before the installed package.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tofu_tiny" / "grad_diff.yaml"


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("lit-unlearn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lit_unlearn"]


def _fit(tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``lit-unlearn fit`` of the tiny GradDiff config on the offline tiny model: 2 steps, no evaluation."""
    command = [
        *_console_script(),
        "fit",
        "--config",
        str(TINY_CONFIG),
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--model.output_dir={tmp_path / 'model'}",
        f"--data.data_dir={tofu_dir}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow  # two process start-ups per test: about a minute each on two loaded CPU cores
def test_fit_with_ddp_relaunches_the_command_line(tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path) -> None:
    done = _fit(tiny_model_dir, tofu_dir, tmp_path, "--trainer.strategy=ddp")
    output = done.stdout + done.stderr
    # Both ranks joined the process group: the relaunched rank parsed the same `fit` command line.
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert (tmp_path / "model" / "config.json").is_file()


@pytest.mark.slow
def test_fit_with_model_parallel_strategy_and_g_effect(tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path) -> None:
    """The issue's command: FSDP2 with the strategy's default mesh, and the G-effect callback appended."""
    done = _fit(
        tiny_model_dir,
        tofu_dir,
        tmp_path,
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.process_group_backend=gloo",
        "--trainer.callbacks+=callbacks.GEffectCallback",
        "--trainer.callbacks.save_plot=false",
    )
    # The default mesh puts both devices on the tensor-parallel dimension, which the modules do not use: they say so.
    assert "tensor_parallel_size=1" in done.stdout + done.stderr
    [table] = (tmp_path / "runs").rglob("g_effect.csv")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert {(r["step"], r["risk"]) for r in rows} == {(s, risk) for s in "01" for risk in ("forget", "retain")}
    for step in "01":
        for risk in ("forget", "retain"):
            mine = {r["group"]: float(r["g_effect"]) for r in rows if r["step"] == step and r["risk"] == risk}
            assert set(mine) == {"embedding", "layer_00", "layer_01", "final_norm", "lm_head", "total"}
            # Every group is summed over both ranks' shards exactly once: the groups add up to the total.
            assert sum(v for g, v in mine.items() if g != "total") == pytest.approx(mine["total"], rel=1e-5)
    assert (tmp_path / "model" / "config.json").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # The data module loads the tokenizer first: the message leads with the path the user gave, not "tokenizer".
        (
            "--model.model_name_or_path=/no/model",
            "FileNotFoundError: '/no/model' does not exist (the tokenizer loads from model_name_or_path",
        ),
        ("--model.lr=-1", "ValueError: lr must be positive and finite, got -1.0."),
        ("--model.lr=.inf", "ValueError: lr must be positive and finite, got inf."),  # not a non-finite loss later
        # A wrong data folder is reported when the data module is built, before any training.
        (
            "--data.data_dir=/no/tofu",
            "TOFUFileNotFoundError: TOFU split 'forget01': /no/tofu/forget01.json does not exist",
        ),
        # Offline, a Hub id that is not cached: the loader's message (the id and the fix), not the innermost
        # huggingface_hub error below it, which names neither.
        (
            "--model.model_name_or_path=no-owner/no-such-model",
            "OSError: Could not load the tokenizer 'no-owner/no-such-model'",
        ),
    ],
)
def test_a_class_that_fails_to_build_is_named_in_one_line(
    override: str, message: str, tofu_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # jsonargparse wraps it in a Union error of a screenful; the command names the cause as argparse does.
    from lit_unlearn.lightning_cli import run_lightning_cli

    args = ["fit", "--config", str(TINY_CONFIG), f"--model.model_name_or_path={tiny_model_dir}"]
    args += [f"--data.data_dir={tofu_dir}", f"--trainer.default_root_dir={tmp_path}", override]
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lit-unlearn: error: {message}" in err
    assert "Does not validate" not in err
    # One line, with no usage above it: the command line was well formed (the model may have printed its loading
    # bar before).
    assert "usage:" not in err
    assert len(err.split("lit-unlearn: error: ")[-1].splitlines()) <= 2  # the Hub loader's message has two lines


def test_a_malformed_data_line_under_fit_is_one_error_line(
    tofu_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The file exists (the data module's construction-time check passes); fit's setup reads it and finds line 3 cut.
    from lit_unlearn.cli import main

    data = tmp_path / "tofu"
    data.mkdir()
    for source in tofu_dir.iterdir():
        (data / source.name).symlink_to(source)
    lines = (tofu_dir / "forget01.json").read_text(encoding="utf-8").splitlines()
    (data / "forget01.json").unlink()
    (data / "forget01.json").write_text("\n".join([*lines[:2], lines[2][:30], *lines[3:]]) + "\n", encoding="utf-8")
    args = ["fit", "--config", str(TINY_CONFIG), f"--model.model_name_or_path={tiny_model_dir}"]
    args += [f"--data.data_dir={data}", f"--trainer.default_root_dir={tmp_path}", "--model.output_dir=null"]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        f"lit-unlearn: error: TOFUDataError: TOFU split 'forget01': {data / 'forget01.json'}, line 3: malformed" in err
    )
    assert "Traceback" not in err


def test_offline_without_a_tofu_folder_fit_is_one_error_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # No folder configured: the split is looked up in the Hub cache in prepare_data, under Lightning's frames.
    import huggingface_hub

    from lit_unlearn.cli import main

    monkeypatch.delenv("LIT_UNLEARN_TOFU_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    args = ["fit", "--config", str(TINY_CONFIG), f"--model.model_name_or_path={tiny_model_dir}"]
    args += [f"--trainer.default_root_dir={tmp_path}", "--model.output_dir=null"]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lit-unlearn: error: TOFUFileNotFoundError: TOFU split 'forget01' (forget01.json of the Hub dataset" in err
    assert "is not cached and offline mode is on" in err
    assert "LIT_UNLEARN_TOFU_DIR=/path/to/tofu" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.lrr=1", "error: --model.lrr: lit_unlearn.GradDiff has no option 'lrr' (did you mean --model.lr?)\n"),
        ("--data.forget_split=forget5", "error: --data.forget_split=forget5: expected one of forget01, forget05, "),
        ("--model.lr=abc", "error: --model.lr=abc: expected float or None\n"),
        ("--trainer.max_epochs=two", "error: --trainer.max_epochs=two: expected int or None\n"),
        ("--config=/no/such.yaml", "/no/such.yaml"),
    ],
)
def test_a_bad_option_is_reported_under_a_short_usage(
    override: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    # argparse's own usage lists every Trainer option (about 45 lines) above the error; the short one keeps it in view.
    from lit_unlearn.lightning_cli import run_lightning_cli

    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(TINY_CONFIG), override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lit-unlearn fit --config CONFIG [--section.key=value ...]\n")
    assert message in err
    assert len(err.splitlines()) < 15
    # The tip is a command one can run (a usage string pasted into it was not).
    assert "tip: For details of accepted options run: lit-unlearn fit --help\n" in err


def test_a_ranking_of_another_split_under_fit_is_one_error_line(
    tofu_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A forget01 ranking applied to forget05: the file exists (checked at construction); setup finds the questions
    # of its rows are not forget05's.
    from lit_unlearn.cli import main
    from lit_unlearn.data import load_tofu

    ranking = tmp_path / "g_effect_ranking.csv"
    with open(ranking, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "question", "g_effect_forget", "g_effect_retain", "measurements"])
        writer.writerows([i, row["question"], 0.0, -i, 1] for i, row in enumerate(load_tofu("forget01", tofu_dir)))
    args = ["fit", "--config", str(TINY_CONFIG), f"--model.model_name_or_path={tiny_model_dir}"]
    args += [f"--data.data_dir={tofu_dir}", f"--trainer.default_root_dir={tmp_path}", "--model.output_dir=null"]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.max_steps=1"]
    args += ["--data.forget_split=forget05", f"--data.ranking_file={ranking}", "--data.subset=bottom"]
    args += ["--data.subset_fraction=0.25"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"lit-unlearn: error: RankingError: {ranking}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("verbose", [None, "true"])
def test_test_prints_one_line_of_headline_numbers_unless_asked_for_tables(
    verbose: str | None,
    tofu_dir: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The TOFU metrics are logged at epoch end, so Lightning's results table would repeat them once per evaluation
    # split's dataloader: `test` prints the folder and the headline numbers instead, `--verbose true` the tables.
    import logging

    from lit_unlearn.lightning_cli import run_lightning_cli

    args = ["test", "--config", str(TINY_CONFIG), f"--model.model_name_or_path={tiny_model_dir}"]
    args += [f"--data.data_dir={tofu_dir}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    args += ["--model.evaluation.max_items=2", "--model.evaluation.max_new_tokens=2"]
    args += ["--model.evaluation.retain_eval_path=null", "--trainer.enable_progress_bar=false"]
    args += [f"--verbose={verbose}"] if verbose else []
    with caplog.at_level(logging.INFO):
        cli = run_lightning_cli(args)
    out = capsys.readouterr().out
    mu = cli.model.tofu_eval_summary["model_utility"]
    assert f"forget quality none (set evaluation.retain_eval_path to the retain model's), model utility {mu:.4g}" in (
        caplog.text
    )
    # Lightning's tables (how many depends on the terminal's width: several loaders can share one).
    assert ("test/model_utility" in out) is (verbose is not None)
    assert "TPU available" in caplog.text  # Lightning's start-up lines are kept, its litlogger advert is not
    assert "litlogger" not in caplog.text


@pytest.mark.parametrize(
    ("config", "advice"),
    [
        ("tofu_tiny/wga.yaml", "it is a shipped config: `lit-unlearn configs --copy tofu_tiny/wga.yaml --to configs`"),
        ("configs/tofu_tiny/wgaa.yaml", "`lit-unlearn configs` lists the shipped ones"),
    ],
)
def test_a_missing_config_file_names_the_fix(
    config: str, advice: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Outside a checkout, a shipped config's name is not a file: say how to get it.
    from lit_unlearn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lit-unlearn: error: config file {config} does not exist")
    assert advice in err
    assert len(err.splitlines()) == 1


def test_a_config_name_without_its_folder_points_at_the_copy_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # In a checkout the shipped configs are already under configs/: copying them again would refuse to overwrite.
    from lit_unlearn.cli import main

    (tmp_path / "configs" / "tofu_tiny").mkdir(parents=True)
    (tmp_path / "configs" / "tofu_tiny" / "wga.yaml").write_text("model: null\n")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "tofu_tiny/wga.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "lit-unlearn: error: config file tofu_tiny/wga.yaml does not exist; did you mean --config "
        "configs/tofu_tiny/wga.yaml?\n"
    )


@pytest.mark.parametrize(
    ("argv", "status", "loaded"),
    [
        (["configs"], 0, "[]"),
        # summarize reads JSON with torch and transformers (the metrics), not Lightning, which the eval package's
        # mixin and the data package's DataModules imported eagerly (about 13 s for a one-line error).
        (["summarize", "/no/such/eval_items.json"], 2, "['torch', 'transformers']"),
        (["fitt"], 2, "[]"),  # an unknown command is answered before anything is imported
    ],
)
def test_commands_that_need_no_lightning_do_not_import_it(argv: list[str], status: int, loaded: str) -> None:
    # `lit-unlearn configs` answered after importing Lightning (about 13 s on two cores) through the package's
    # eager imports; a fresh interpreter shows which modules the command really loads.
    probe = (
        "import sys\n"
        "from lit_unlearn.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "print(status, sorted(m for m in ('lightning', 'torch', 'transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == f"{status} {loaded}", done.stderr[-2000:]


def test_every_extra_command_and_public_name_resolves() -> None:
    import inspect
    from importlib import import_module

    import lit_unlearn
    import lit_unlearn.data
    import lit_unlearn.modules
    from lit_unlearn.cli import EXTRA_COMMANDS

    for name, (module, _) in EXTRA_COMMANDS.items():
        command = import_module(module).main
        assert list(inspect.signature(command).parameters) == ["argv"], name
    for name in lit_unlearn.__all__:
        home = lit_unlearn.data if name in lit_unlearn.data.__all__ else lit_unlearn.modules
        assert getattr(lit_unlearn, name) is getattr(home, name)
        assert name in dir(lit_unlearn)
    with pytest.raises(AttributeError, match="has no attribute 'GradAscend'"):
        lit_unlearn.GradAscend  # noqa: B018
    # The lazy subpackages: each public name is its module's own object, listed by dir().
    for package in (lit_unlearn.data, import_module("lit_unlearn.eval")):
        for name in package.__all__:
            value = getattr(package, name)
            assert getattr(inspect.getmodule(value) or package, name, value) is value, (package.__name__, name)
            assert name in dir(package)
    from lit_unlearn.eval import summarize

    assert inspect.isfunction(summarize)  # the function, though its submodule has the same name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "lit-unlearn: error: no command given: the commands are fit, validate, test, predict, quickstart, "),
        (["fitt", "--config", "x.yaml"], "lit-unlearn: error: unknown command 'fitt' (did you mean fit?): the "),
        (["sumarize"], "unknown command 'sumarize' (did you mean summarize?): the commands are fit, validate, "),
        (["zzz"], "lit-unlearn: error: unknown command 'zzz': the commands are fit, validate, test, predict, "),
    ],
)
def test_a_missing_or_unknown_command_lists_every_command(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    # LightningCLI's own "invalid choice" named only fit, validate, test and predict.
    from lightning.pytorch.cli import LightningCLI

    from lit_unlearn.cli import LIGHTNING_COMMANDS, main

    assert set(LIGHTNING_COMMANDS) == set(LightningCLI.subcommands())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "configs, attack (`lit-unlearn --help`)\n" in err
