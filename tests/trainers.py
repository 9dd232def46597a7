"""The Trainer every small fit in the tests builds: CPU, no logger, checkpoints, progress bar or model summary."""

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback, Trainer


def quiet_trainer(root: str | Path, callbacks: Sequence[Callback] = (), **kwargs: object) -> Trainer:
    """A CPU ``Trainer`` writing only under ``root``; ``kwargs`` (``max_steps``, ...) are passed through."""
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kwargs,
    )
