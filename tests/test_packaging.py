"""Packaging: the wheel ships every package and every config, and an installed copy finds its configs anywhere."""

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_unlearn import config_hub

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.relative_to(REPO_ROOT / "configs").as_posix() for p in (REPO_ROOT / "configs").rglob("*.yaml"))


def _declared_packages() -> set[str]:
    return set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_and_config_folder_is_declared() -> None:
    """The explicit package list in pyproject.toml misses nothing (a forgotten package would vanish from the wheel)."""
    code = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for root in ("lit_unlearn", "callbacks")
        for init in (REPO_ROOT / root).rglob("__init__.py")
    }
    configs = {
        ".".join(("lit_unlearn", *p.parent.relative_to(REPO_ROOT).parts))
        for p in (REPO_ROOT / "configs").rglob("*.yaml")
    } | {"lit_unlearn.configs"}
    assert _declared_packages() == code | configs


def test_shipped_configs_are_the_repository_configs() -> None:
    assert config_hub.shipped_configs() == CONFIG_FILES
    assert (
        config_hub.shipped_config("tofu_tiny/wga").read_bytes()
        == (REPO_ROOT / "configs/tofu_tiny/wga.yaml").read_bytes()
    )


def test_listing_starts_every_description_in_one_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_hub.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == CONFIG_FILES
    longest = max(map(len, CONFIG_FILES))
    # Each name padded to the longest, two spaces, then its header comment (none of which starts with a space).
    assert all(line[longest : longest + 2] == "  " and line[longest + 2] != " " for line in lines)
    # Not on a terminal (piped, as here): the header's first sentence whole, however long, across the header's line
    # breaks (the first line alone stopped mid-sentence).
    described = dict(zip(CONFIG_FILES, (line[longest + 2 :] for line in lines), strict=True))
    for name, description in described.items():
        header = []
        for raw in (REPO_ROOT / "configs" / name).read_text(encoding="utf-8").splitlines():
            if not raw.startswith("# ") or raw.startswith("# lit-unlearn "):
                break
            header.append(raw[2:].strip())
        assert " ".join(header).startswith(description), name
        assert description.endswith("."), name
    assert described["tofu/grad_ascent.yaml"] == (
        "Gradient ascent (Jang et al. 2023) on TOFU forget10 with the open-unlearning Llama-3.2-1B-Instruct "
        "target (G-effect paper protocol: 5 epochs, effective batch 16, AdamW lr 1e-5, no weight decay, 1 warm-up "
        "epoch, bf16)."
    )
    assert described["tofu_paper/tiny_ga.yaml"] == (
        "Tiny TOFU model, the G-effect paper's code `ga`: gradient ascent, no retain term."
    )


def test_unknown_config_lists_its_neighbours() -> None:
    with pytest.raises(FileNotFoundError, match=r"tofu_tiny/wga\.yaml"):
        config_hub.shipped_config("tofu_tiny/wgaa")


def test_copy_keeps_folders_and_never_overwrites_edits(tmp_path: Path) -> None:
    written = config_hub.copy_configs(["tofu_tiny"], tmp_path)
    tiny = [c for c in CONFIG_FILES if c.startswith("tofu_tiny/")]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == tiny
    edited = tmp_path / "tofu_tiny" / "wga.yaml"
    edited.write_text("# my edit\n")
    with pytest.raises(FileExistsError, match="--force"):
        config_hub.copy_configs(["all"], tmp_path)
    assert edited.read_text() == "# my edit\n"  # nothing written on refusal
    assert not (tmp_path / "tofu").exists()
    config_hub.copy_configs(["all"], tmp_path, overwrite=True)
    assert edited.read_bytes() == (REPO_ROOT / "configs/tofu_tiny/wga.yaml").read_bytes()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml")) == CONFIG_FILES


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it offline and in seconds.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("lit_unlearn-*.whl")
    return path


def test_wheel_contains_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lit_unlearn/configs/{c}" for c in CONFIG_FILES} <= names
    assert "lit_unlearn/data/idk_answers.txt" in names
    assert "callbacks/g_effect.py" in names


def _installed_env(wheel: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The wheel unpacked into its own folder, imported ahead of the repository's editable install."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    return env, work


@pytest.mark.slow
def test_installed_wheel_lists_configs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    env, work = _installed_env(wheel, tmp_path)
    where = subprocess.run(
        [sys.executable, "-c", "import lit_unlearn; print(lit_unlearn.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(tmp_path / "site"))  # the installed copy, not the clone
    listed = subprocess.run(
        [sys.executable, "-m", "lit_unlearn", "configs"], cwd=work, env=env, check=True, capture_output=True, text=True
    )
    assert [line.split()[0] for line in listed.stdout.splitlines()] == CONFIG_FILES


@pytest.mark.slow
def test_installed_wheel_runs_the_quickstart_from_any_directory(
    wheel: Path, tmp_path: Path, tofu_dir: Path, short_config: Callable[..., str]
) -> None:
    env, work = _installed_env(wheel, tmp_path)
    recipes = [
        *("--target-config", short_config("tofu_tiny/finetune_target", max_epochs=1, limit_train_batches=2)),
        *("--retain-config", short_config("tofu_tiny/finetune_retain", max_epochs=1, limit_train_batches=2)),
        *("--unlearn-config", short_config("tofu_tiny/wga", max_epochs=1, limit_train_batches=2)),
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_unlearn",
            "quickstart",
            "--output-dir",
            "out",
            "--data-dir",
            str(tofu_dir),
            *recipes,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["unlearned"]["model_utility"] is not None
    assert (work / "outputs" / "tofu_tiny" / "target" / "model.safetensors").is_file()  # the default cache, here
