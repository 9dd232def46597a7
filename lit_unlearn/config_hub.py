"""The configs shipped with lit-unlearn: list them, resolve one, copy them into a folder to edit.

The repository's top-level ``configs/`` folder is the only copy: ``pyproject.toml`` packages it as the data package
``lit_unlearn.configs``, so an installed wheel carries exactly those files and ``lit-unlearn configs`` (and the
quickstart) find them from any directory.
"""

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

CONFIG_PACKAGE = "lit_unlearn.configs"
"""Import name under which ``configs/`` is installed."""


def _root() -> Path:
    try:
        root = resources.files(CONFIG_PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"The shipped configs ({CONFIG_PACKAGE}) are not installed; reinstall lit-unlearn (`pip install -e .` in a "
            "clone, or `pip install lit-unlearn`)."
        ) from err
    # pip always unpacks wheels, so the resources are plain files; Path() makes that assumption explicit.
    return Path(str(root))


def shipped_configs() -> list[str]:
    """Every shipped config as a POSIX path relative to ``configs/`` (e.g. ``"tofu_tiny/wga.yaml"``), sorted."""
    root = _root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def shipped_config(name: str) -> Path:
    """The file of a shipped config.

    Args:
        name: Its path relative to ``configs/``, with or without ``.yaml`` (``"tofu_tiny/wga"``).

    Raises:
        FileNotFoundError: no such config; the message lists the shipped ones in the same folder.
    """
    relative = name if name.endswith(".yaml") else f"{name}.yaml"
    path = _root() / relative
    if not path.is_file():
        folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
        nearby = [c for c in shipped_configs() if c.startswith(folder)] or shipped_configs()
        raise FileNotFoundError(
            f"No shipped config {name!r}. Shipped configs{f' in {folder}/' if folder else ''}: {', '.join(nearby)} "
            "(`lit-unlearn configs` lists them all)."
        )
    return path


def copy_configs(names: Sequence[str], dest: str | Path, overwrite: bool = False) -> list[Path]:
    """Copy shipped configs into ``dest``, keeping their sub-folders (``dest/tofu_tiny/wga.yaml``).

    Args:
        names: Config names (as for :func:`shipped_config`), folder names (``"tofu_tiny"``) or ``"all"``.
        dest: Target folder, created if needed.
        overwrite: Replace files that already exist in ``dest``; otherwise an existing file is an error, so edits
            made there are never lost.

    Returns:
        The written files.

    Raises:
        FileNotFoundError: an unknown name. FileExistsError: a target exists and ``overwrite`` is off (nothing is
            written then).
    """
    available = shipped_configs()
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += available
        elif any(c.startswith(f"{name.rstrip('/')}/") for c in available):
            chosen += [c for c in available if c.startswith(f"{name.rstrip('/')}/")]
        else:
            chosen.append(shipped_config(name).relative_to(_root()).as_posix())
    chosen = list(dict.fromkeys(chosen))
    dest = Path(dest)
    targets = [dest / c for c in chosen]
    clashes = [str(t) for t in targets if t.exists()]
    if clashes and not overwrite:
        raise FileExistsError(
            f"{len(clashes)} file(s) already exist, e.g. {clashes[0]}; nothing was copied. Pass --force to overwrite "
            "them, or choose another folder."
        )
    for relative, target in zip(chosen, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_root() / relative, target)
    return targets


def _summary_line(path: Path, width: int | None = None) -> str:
    """The first sentence of a config's header comment (what it reproduces), cut to ``width`` characters (None:
    whole). The header wraps its sentences over lines and ends with the command that runs the config."""
    header = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        text = raw.lstrip("# ").strip()
        if not raw.startswith("#") or text.startswith("lit-unlearn "):
            break
        header.append(text)
    joined = " ".join(header)
    # A period before a word or at the end closes a sentence; "et al. 2024" and "Llama-3.2" do not.
    end = re.search(r"\.(?=\s+[^\d\s]|$)", joined)
    line = joined[: end.end()] if end else joined
    return line if width is None or len(line) <= width else line[: width - 1].rstrip() + "…"


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-unlearn configs``: list the shipped configs, or copy some (or all) into a folder."""
    parser = argparse.ArgumentParser(
        prog="lit-unlearn configs",
        description="List the configs shipped with lit-unlearn, or copy them into a folder to edit and run with "
        "`lit-unlearn fit --config FOLDER/NAME.yaml`.",
    )
    parser.add_argument("--copy", nargs="+", metavar="NAME", help="configs or folders to copy, or 'all'")
    parser.add_argument("--to", metavar="DIR", help="folder to copy into (required with --copy)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist in DIR")
    args = parser.parse_args(argv)
    try:
        if args.copy:
            if not args.to:
                parser.error("--copy needs --to DIR (the folder to copy the configs into)")
            for path in copy_configs(args.copy, args.to, overwrite=args.force):
                print(path)
            return 0
        names = shipped_configs()
        width = max(map(len, names), default=0)  # one column for every name, the longest included
        # On a terminal each line fits its width (COLUMNS overrides); piped or redirected, the whole header.
        room = max(shutil.get_terminal_size().columns - width - 2, 20) if sys.stdout.isatty() else None
        for name in names:
            print(f"{name:<{width}}  {_summary_line(shipped_config(name), room)}")
    except BrokenPipeError:
        # The reader closed the pipe (`| head`): stop quietly, and keep Python's exit flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (FileNotFoundError, FileExistsError) as err:
        print(f"lit-unlearn configs: error: {err}", file=sys.stderr)
        return 2
    return 0
