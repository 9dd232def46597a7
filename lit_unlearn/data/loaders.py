"""DataLoader plumbing shared by the TOFU DataModules: seeded loaders and paired batches."""

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on ``seed`` (a new permutation each epoch).

    The sampler owns its generator, so the order does not depend on the global RNG state, which model
    initialisation and dropout also consume.
    """
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class PartsCombinedLoader(CombinedLoader):
    """A ``CombinedLoader`` whose iterables may yield several named parts at once, merged into one flat batch.

    The forget loader of the unlearning DataModule yields ``{"forget": ..., "idk": ...}`` from one dataset (so
    the refusal answers stay aligned with their questions); this loader lifts such parts to the top level:
    ``{"forget": {"forget": f, "idk": i}, "retain": r}`` becomes ``{"forget": f, "idk": i, "retain": r}``.

    Args:
        iterables: name → DataLoader, as for ``CombinedLoader``.
        mode: ``"min_size"`` (an epoch ends with the shortest loader) or ``"max_size_cycle"``; the other modes
            can yield missing or ``None`` parts, which a merged batch cannot represent.
        nested: the names whose loaders yield a dict of parts instead of one batch.
    """

    def __init__(self, iterables: dict, mode: str = "min_size", nested: tuple[str, ...] = ()) -> None:
        if mode not in ("min_size", "max_size_cycle"):
            raise ValueError(f"PartsCombinedLoader supports mode 'min_size' or 'max_size_cycle', got {mode!r}.")
        super().__init__(iterables, mode)
        self.nested = nested

    def __next__(self) -> tuple[dict, int, int]:
        batch, batch_idx, dataloader_idx = super().__next__()
        flat = {}
        for name, value in batch.items():
            parts = value if name in self.nested else {name: value}
            for part, part_batch in parts.items():
                if part in flat:
                    raise ValueError(f"Two loaders yield the batch part {part!r}; give the parts distinct names.")
                flat[part] = part_batch
        return flat, batch_idx, dataloader_idx
