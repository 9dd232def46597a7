"""``lit-unlearn attack relearn | quantize``: the robustness attacks from the command line.

Both write a JSON report with every number and a short markdown table into a new ``--output-dir`` and print the
markdown. Bad input ends with one line on stderr that names the culprit and the fix, and exit status 2.
"""

import argparse
import sys
import time
from collections.abc import Sequence
from typing import NoReturn, get_args

import torch

from lit_unlearn.attacks.common import EvalOptions
from lit_unlearn.attacks.quantize import QuantSpec, quantization_attack
from lit_unlearn.attacks.relearn import RelearnSettings, relearn_attack
from lit_unlearn.data.formatting import PromptFormat
from lit_unlearn.data.subsets import FORGET_AUTHORS
from lit_unlearn.models import DType

PROG = "lit-unlearn attack"


class _UsageError(Exception):
    """A command-line mistake, reported in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse without the usage dump: one line naming the bad argument (subcommand parsers inherit this class)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


def _group_size(value: str) -> int | None:
    if value == "channel":
        return None
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a positive integer nor 'channel'") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer; give e.g. 128, or 'channel'")
    return size


def _common(parser: argparse.ArgumentParser) -> None:
    """Arguments both attacks share: data, evaluation, device."""
    parser.add_argument("--output-dir", required=True, help="a new (or empty) folder for the report")
    parser.add_argument("--forget-split", default="forget10", choices=list(FORGET_AUTHORS))
    parser.add_argument("--data-dir", default=None, help="TOFU folder (default: $LIT_UNLEARN_TOFU_DIR, else the Hub)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="greedy generation budget for ROUGE-L")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="questions per evaluation batch")
    parser.add_argument("--max-length", type=int, default=512, help="truncation length of sequences")
    parser.add_argument("--prompt-format", default="auto", choices=list(get_args(PromptFormat)))
    parser.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="evaluate only the first N rows of every split (original TOFU: 300); default: every row",
    )
    parser.add_argument("--dtype", default="auto", choices=list(get_args(DType)), help="weights dtype")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--min-gap", type=float, default=1e-3, help="smallest |target − unlearned| for a recovery")
    parser.add_argument("--threads", type=int, default=None, help="pin torch's CPU threads (reproducible runs)")


def _evaluation(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.eval_batch_size,
        max_length=args.max_length,
        prompt_format=args.prompt_format,
        max_items=args.max_items,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``lit-unlearn attack`` parser with its two subcommands."""
    parser = _Parser(prog=PROG, description="Robustness attacks on an unlearned model (see docs/attacks.md).")
    commands = parser.add_subparsers(dest="attack", required=True, metavar="{relearn,quantize}")

    relearn = commands.add_parser(
        "relearn",
        help="fine-tune on half of the forget set, evaluate on the other half",
        description="Relearning attack: split each forget author's QA 50/50, fine-tune the unlearned model on one "
        "half (and, as controls, on as many retain rows, and the retain model on the same half), evaluate every "
        "model on the other half plus model utility, report the recovery ratio per budget.",
    )
    relearn.add_argument("--model", required=True, help="the unlearned model (folder or Hub id)")
    target = relearn.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", help="the model before unlearning (folder or Hub id)")
    target.add_argument("--target-eval", help="or its evaluation (eval_items.json) on the forget split")
    retain = relearn.add_mutually_exclusive_group(required=True)
    retain.add_argument("--retain", help="the retain model (folder or Hub id); also runs the retain baseline")
    retain.add_argument("--retain-eval", help="or its evaluation on the forget split (no retain baseline then)")
    relearn.add_argument("--budgets", type=int, nargs="+", default=[0, 15, 30, 60], help="optimiser-step budgets")
    relearn.add_argument("--lr", type=float, default=1e-5, help="constant AdamW learning rate (tiny model: 3e-4)")
    relearn.add_argument("--weight-decay", type=float, default=0.01)
    relearn.add_argument("--batch-size", type=int, default=8, help="rows per optimiser step")
    relearn.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 disables it")
    relearn.add_argument("--seed", type=int, default=0, help="seed of the split, control rows, shuffles, dropout")
    _common(relearn)

    quantize = commands.add_parser(
        "quantize",
        help="round-to-nearest weight quantization of the target and unlearned models",
        description="Quantization attack: fake-quantize every nn.Linear except the output head (round to nearest, "
        "float32, dequantized weights written back) of the unlearned model (and the target), evaluate each at full "
        "precision and quantized, report the recovery ratio and the fraction of integer codes unlearning changed.",
    )
    quantize.add_argument("--model", required=True, help="the unlearned model (folder or Hub id)")
    quantize.add_argument("--target", default=None, help="the model before unlearning (recovery, code changes)")
    quantize.add_argument("--bits", type=int, required=True, choices=[4, 8])
    quantize.add_argument(
        "--group-size", type=_group_size, default=None, help="input columns per scale, or 'channel' (default)"
    )
    quantize.add_argument("--asymmetric", action="store_true", help="GPTQ's min/max grid with a zero point")
    quantize.add_argument("--retain-eval", default=None, help="the retain model's evaluation (forget quality)")
    _common(quantize)
    return parser


def _say(message: str) -> None:
    print(f"[{PROG} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit-unlearn attack``; returns the exit status (2 on bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as err:
        print(err, file=sys.stderr)
        return 2
    prog = f"{PROG} {args.attack}"
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be ≥ 1, got {args.threads}.")
            # This process is the attack's own: pinning threads makes CPU runs reproducible.
            torch.set_num_threads(args.threads)
        evaluation = _evaluation(args)
        if args.attack == "relearn":
            settings = RelearnSettings(
                budgets=tuple(args.budgets),
                lr=args.lr,
                weight_decay=args.weight_decay,
                batch_size=args.batch_size,
                max_grad_norm=args.max_grad_norm or None,
                seed=args.seed,
            )
            report = relearn_attack(
                args.model,
                args.output_dir,
                target=args.target,
                target_eval=args.target_eval,
                retain=args.retain,
                retain_eval=args.retain_eval,
                forget_split=args.forget_split,
                settings=settings,
                evaluation=evaluation,
                data_dir=args.data_dir,
                dtype=args.dtype,
                device=args.device,
                min_gap=args.min_gap,
                log=_say,
            )
        else:
            report = quantization_attack(
                args.model,
                args.output_dir,
                QuantSpec(bits=args.bits, group_size=args.group_size, symmetric=not args.asymmetric),
                target=args.target,
                forget_split=args.forget_split,
                retain_eval=args.retain_eval,
                evaluation=evaluation,
                data_dir=args.data_dir,
                dtype=args.dtype,
                device=args.device,
                min_gap=args.min_gap,
                log=_say,
            )
    except (OSError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(report.markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
