"""``LitUnlearnCLI``: LightningCLI with the project's argument links, and ``run_lightning_cli`` to call it from Python.

This module knows nothing of the extra commands (``quickstart``, ``summarize``, ...): they build on it, and the
console script's dispatcher (``lit_unlearn.cli``) builds on both, so no import ever points back up.
"""

import logging
import os
import sys
import traceback
import warnings
from typing import NoReturn

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

# Importing these registers every module and data class, so `--model=NPO` and `--data=TOFUUnlearnDataModule`
# shorthands resolve (the packages themselves import them lazily).
import lit_unlearn.data.finetune_datamodule  # noqa: F401
import lit_unlearn.data.unlearn_datamodule  # noqa: F401
import lit_unlearn.modules  # noqa: F401
from lit_unlearn.cli_errors import condense_parse_error
from lit_unlearn.models.hub import tokenizer_source
from lit_unlearn.modules.causal_lm import check_output_dir


class LitUnlearnParser(LightningArgumentParser):
    """Lightning's parser whose errors on a mistyped option or a bad value are one line (``condense_parse_error``)."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # Only the message that is printed: a nested parser's error (a class's own options) raises into its parent,
        # which quotes it inside the Union error that condense_parse_error reads.
        super().error(condense_parse_error(message) if self.exit_on_error else message, ex)


class LitUnlearnCLI(LightningCLI):
    """LightningCLI whose data module tokenizes with the model's own tokenizer and builds its evaluation loaders with
    the model's evaluation item cap."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One source of truth: the data module tokenizes with the tokenizer the model loads, its `tokenizer_name` when
        # the weights ship without one, else its `model_name_or_path`. (Not the same key as the data module's
        # `tokenizer_name_or_path`: with the module's None beside the data module's path, Lightning would refuse to
        # log the two hparams.)
        parser.link_arguments(
            ("model.init_args.model_name_or_path", "model.init_args.tokenizer_name"),
            "data.init_args.tokenizer_name_or_path",
            compute_fn=tokenizer_source,
        )
        # One evaluation item cap, `model.evaluation.max_items`: the data module's loaders then hold (and tokenize)
        # only the rows that are evaluated. jsonargparse parses the optional dataclass `evaluation: EvalSettings |
        # None` like a subclass ({class_path, init_args}), hence `.init_args.`; the path without it names no key,
        # and jsonargparse would skip the link without a word (tests/data/test_unlearn_datamodule.py checks the
        # loaders). A data module without `eval_max_items` (TOFUFinetuneDataModule) leaves the link unapplied.
        parser.link_arguments("model.init_args.evaluation.init_args.max_items", "data.init_args.eval_max_items")

    @override
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: object) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # The TOFU metrics are logged at epoch end, so Lightning's results table repeats all of them once per
            # evaluation split's dataloader (five identical tables). The evaluation names its folder and headline
            # numbers in one line instead; `--verbose true` brings the tables back.
            parser.set_defaults(verbose=False)
        return parser

    @override
    def before_instantiate_classes(self) -> None:
        # A fit that would replace a saved model is refused before the model loads or a log folder is made.
        if self.subcommand != "fit":
            return
        model = self.config["fit"]["model"]
        init = model.get("init_args") or {}
        try:
            name = str(model.get("class_path")).rsplit(".", 1)[-1]
            check_output_dir(init.get("output_dir"), bool(init.get("overwrite_output_dir")), name)
        except FileExistsError as err:
            self._error(f"FileExistsError: {err}")

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse reports a class that failed to build as a Union that "does not validate" (a trainer,
            # model or data module is `X | None`), a screenful of namespaces in which the cause, e.g. "Tokenizer
            # directory ... does not exist", is one line: name that cause, as argparse names a bad option.
            cause = _first_cause_outside_jsonargparse(err)
            if cause is err:
                raise
            self._error(f"{type(cause).__name__}: {cause}")

    def _error(self, message: str) -> NoReturn:
        """An error found after parsing (a class that fails to build, a saved model in the way): one line, as the
        console script reports a bad data file. No usage above it: the command line itself was well formed."""
        print(f"lit-unlearn: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _first_cause_outside_jsonargparse(err: BaseException) -> BaseException:
    """The first exception of ``err``'s ``__cause__`` chain raised by code other than jsonargparse (``err`` itself
    when there is none): the message written for the user. Not the innermost one, which can be a library's own
    (``LocalEntryNotFoundError`` under the loader's error that names the Hub id and the fix)."""
    while err.__cause__ is not None and _raised_in_jsonargparse(err):
        err = err.__cause__
    return err


def _raised_in_jsonargparse(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1].filename


class _NoAdvert(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line, printed on every run without a LitLogger: an
    advert for a hosted service, not about the run, between the start-up lines and any error a user must read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


def _drop_lightning_advert() -> None:
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # the logger that emits it
    if not any(isinstance(f, _NoAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvert())


def run_lightning_cli(args: ArgsType = None, run: bool = True) -> LitUnlearnCLI:
    """Parse ``args`` and run the LightningCLI subcommand they name.

    Args:
        args: Command-line style arguments. ``None`` reads ``sys.argv``, which is what the console script does: then
            Lightning's multi-process launcher, which re-executes ``sys.argv`` for every rank, relaunches the same
            command.
        run: ``False`` only instantiates the trainer, model and data module (``args`` then carry no subcommand).

    Returns:
        The CLI object, with ``trainer``, ``model`` and ``datamodule`` attributes.
    """
    _drop_lightning_advert()
    with warnings.catch_warnings():
        if args is not None:
            # Called from Python (quickstart, tests, benchmarks): the process's own argv belongs to its caller, so
            # Lightning's "args and sys.argv both given" warning is expected here. sys.argv itself is left alone.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # Lightning 2.6 builds torch's LeafSpec, which torch 2.13 deprecates: once per batch transfer, about
        # Lightning's own code, nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        return LitUnlearnCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=LitUnlearnParser,
            save_config_kwargs={"overwrite": True},
            # argparse's generated usage lists every Trainer option: 45 lines above a one-line error. --help still
            # lists them all.
            parser_kwargs={
                # Named, not taken from sys.argv[0] (`__main__.py` under `python -m`, a script's name from Python).
                "prog": "lit-unlearn",
                **{
                    command: {"usage": f"lit-unlearn {command} --config CONFIG [--section.key=value ...]"}
                    for command in LightningCLI.subcommands()
                },
            },
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs"},
                }
            },
            args=args,
            run=run,
        )
