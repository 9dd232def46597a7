"""The ``lit-unlearn`` console script: LightningCLI's ``fit | validate | test | predict`` and the extra commands.

The extra commands are dispatched here and only here; each one is a ``main(argv) -> int`` of its own module.
"""

import difflib
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from lit_unlearn.config_hub import shipped_configs

EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "lit_unlearn.quickstart",
        "build the tiny TOFU models, unlearn under the G-effect callback, write a report",
    ),
    "summarize": (
        "lit_unlearn.eval.summarize",
        "print forget quality, model utility and its components of an evaluation as JSON",
    ),
    "configs": ("lit_unlearn.config_hub", "list the shipped configs, or copy them into a folder to edit"),
    "attack": (
        "lit_unlearn.attacks.cli",
        "robustness attacks on an unlearned model: relearn | quantize (docs/attacks.md)",
    ),
}
"""Each extra command: the module whose ``main(argv) -> int`` runs it (imported only when it runs: importing Lightning
takes seconds that ``lit-unlearn configs`` should not pay), and its line in ``--help``."""


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
"""LightningCLI's subcommands (``LightningCLI.subcommands()``, named here so that checking one imports nothing)."""


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``lit-unlearn``.

    Args:
        args: The arguments after the program name; ``None`` reads ``sys.argv``. LightningCLI subcommands then parse
            ``sys.argv`` themselves, which keeps Lightning's re-executing multi-process launcher working.

    Returns:
        The exit status.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        module, _ = EXTRA_COMMANDS[argv[0]]
        return import_module(module).main(argv[1:])
    unknown = _unknown_command(argv)
    if unknown is not None:
        print(f"lit-unlearn: error: {unknown}", file=sys.stderr)
        return 2
    if argv and argv[0] in ("-h", "--help"):
        print("Extra commands (besides the LightningCLI ones below):")
        for name, (_, text) in EXTRA_COMMANDS.items():
            print(f"  {name:<11} {text}")
        print()
    missing = _missing_config_file(argv)
    if missing is not None:
        print(f"lit-unlearn: error: {missing}", file=sys.stderr)
        return 2
    from lit_unlearn.data.ranking import RankingError
    from lit_unlearn.data.tofu import TOFUDataError, TOFUFileNotFoundError
    from lit_unlearn.lightning_cli import run_lightning_cli

    try:
        run_lightning_cli(None if args is None else argv)
    except (TOFUDataError, TOFUFileNotFoundError, RankingError) as err:
        # A bad or missing data file, or a bad ranking file, surfaces when `fit` reads it, under Lightning's frames
        # (offline with no TOFU folder set, in prepare_data): its message names the file and the fix, which a
        # traceback would bury. Python callers of run_lightning_cli still get it.
        print(f"lit-unlearn: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


def _unknown_command(argv: Sequence[str]) -> str | None:
    """What to say when ``argv`` names no command, or one that does not exist (LightningCLI's own message lists only
    its four, not the extra commands)."""
    commands = [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]
    listing = f"the commands are {', '.join(commands)} (`lit-unlearn --help`)"
    if not argv:
        return f"no command given: {listing}"
    if argv[0].startswith("-") or argv[0] in LIGHTNING_COMMANDS:
        return None
    close = difflib.get_close_matches(argv[0], commands, n=1)
    return f"unknown command {argv[0]!r}{f' (did you mean {close[0]}?)' if close else ''}: {listing}"


def _missing_config_file(argv: Sequence[str]) -> str | None:
    """What to say of a ``--config`` YAML/JSON file that does not exist (jsonargparse names it, but not the fix):
    where the name is a shipped config, how to get it; else where to find the shipped ones. (A ``--config`` given
    as inline YAML is left to jsonargparse.)"""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is None or not value.endswith((".yaml", ".yml", ".json")) or Path(value).is_file():
            continue
        name = value.removeprefix("configs/")
        if Path("configs", name).is_file():  # in a checkout, or after `configs --copy`: only the folder was left out
            return f"config file {value} does not exist; did you mean --config configs/{name}?"
        if name in shipped_configs():
            return (
                f"config file {value} does not exist here; it is a shipped config: `lit-unlearn configs --copy {name} "
                f"--to configs` copies it (then `--config configs/{name}`)."
            )
        return f"config file {value} does not exist; `lit-unlearn configs` lists the shipped ones."
    return None
