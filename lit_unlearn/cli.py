"""``lit-unlearn``: LightningCLI for ``fit | validate | test`` plus the ``quickstart`` and ``summarize`` commands."""

import sys
from unittest import mock

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

EXTRA_COMMANDS = {
    "quickstart": "build the tiny TOFU models, unlearn with WGA under the G-effect callback, write a report",
    "summarize": "print forget quality, model utility and its components of an evaluation as JSON",
}


class LitUnlearnCLI(LightningCLI):
    """LightningCLI whose data module tokenizes with the model's own tokenizer."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One source of truth: the tokenizer always comes from the model being trained or unlearned.
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")


def run_lightning_cli(args: ArgsType = None, run: bool = True) -> LitUnlearnCLI:
    """Parse ``args`` (default: ``sys.argv``) and run the LightningCLI subcommand (``run=False``: only instantiate,
    and ``args`` carry no subcommand)."""
    # Importing the package registers every module/data class, so `--model=NPO` shorthands resolve.
    import lit_unlearn  # noqa: F401

    if args is not None:
        # Called from Python (quickstart, tests): the process's own argv belongs to someone else.
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            return _make_cli(args, run)
    return _make_cli(args, run)


def _make_cli(args: ArgsType, run: bool) -> LitUnlearnCLI:
    return LitUnlearnCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}}
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``lit-unlearn`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "summarize":
        from lit_unlearn.eval.summarize import main as summarize_main

        return summarize_main(argv[1:])
    if argv and argv[0] == "quickstart":
        from lit_unlearn.quickstart import main as quickstart_main

        return quickstart_main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print("Extra commands (besides the LightningCLI ones below):")
        for name, text in EXTRA_COMMANDS.items():
            print(f"  {name:<11} {text}")
        print()
    run_lightning_cli(argv)
    return 0
