"""``EpochProgress``: one plain line per training epoch, for runs whose output is interleaved with others'.

Lightning's progress bars redraw one terminal line; two processes training side by side (the quickstart builds its
target and retain models in parallel) would overwrite each other's bars. One prefixed line per epoch reads cleanly.
"""

import logging
import time

from lightning.pytorch import Callback, LightningModule, Trainer
from transformers.utils import logging as hf_logging
from typing_extensions import override


def say(message: str, who: str = "lit-unlearn") -> None:
    """Print one progress line, ``[who HH:MM:SS] message``, flushed at once (output shared with other processes)."""
    print(f"[{who} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def quiet_libraries() -> None:
    """Silence Lightning's start-up banners and transformers' weight-loading bars in this process: a run that loads
    a dozen models, or builds two side by side, would otherwise bury its own progress lines under theirs."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


class EpochProgress(Callback):
    """Print ``[prefix] epoch e/E · <metric> v · t s`` when each training epoch ends (global rank 0 only).

    Args:
        prefix: Label of the run in the printed lines.
        metric: Logged metric shown on each line (skipped when not logged).
    """

    def __init__(self, prefix: str = "fit", metric: str = "train/loss") -> None:
        super().__init__()
        self.prefix = prefix
        self.metric = metric
        self._start = 0.0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        value = trainer.callback_metrics.get(self.metric)
        shown = f" · {self.metric} {float(value):.4g}" if value is not None else ""
        elapsed = time.perf_counter() - self._start
        print(f"[{self.prefix}] epoch {trainer.current_epoch + 1}/{total}{shown} · {elapsed:.0f} s", flush=True)
