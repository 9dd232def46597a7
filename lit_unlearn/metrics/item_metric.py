"""``ItemMetric``: the base of the metrics that keep one value per evaluated item, and ``ItemMean``.

Every TOFU number is an aggregate of per-item values (probabilities, truth ratios, ROUGE recalls, ...), and forget
quality needs the per-item distribution itself, so these metrics keep the per-item values as list states
(``dist_reduce_fx="cat"``): torchmetrics gathers them from every process before ``compute``.

Items may carry an integer id (``indices``, e.g. the TOFU row number). ``DistributedSampler`` evens out the shards of
the processes by repeating items; with ids, each item counts once (its first occurrence after the gather) and the
values are taken in increasing id order, which makes the multi-process result the single-process one exactly.
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def first_occurrences(keys: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct ``keys`` in increasing order and the position of the first occurrence of each.

    Args:
        keys: integer ids, shape (N,), or rows of ids, shape (N, C) (compared as whole rows, ordered
            lexicographically).

    Returns:
        ``(distinct, positions)``: ``distinct`` has shape (M,) or (M, C); ``keys[positions] == distinct``.

    Example:
        >>> first_occurrences(torch.tensor([0, 2, 4, 1, 3, 0]))  # two processes, row 0 repeated by the sampler
        (tensor([0, 1, 2, 3, 4]), tensor([0, 3, 1, 4, 2]))
    """
    distinct, inverse = torch.unique(keys, sorted=True, return_inverse=True, dim=0)
    positions = torch.arange(keys.shape[0], device=keys.device)
    first = torch.full((distinct.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
    return distinct, first.scatter_reduce(0, inverse, positions, reduce="amin")


class ItemMetric(Metric):
    """A metric over items with one float64 value each (state ``values``), optionally identified by ``indices``.

    Subclasses compute the per-item values in ``update`` and pass them to :meth:`_append`; ``compute`` aggregates
    :meth:`_items`, the deduplicated values in id order. :meth:`per_item` returns them, synchronised across
    processes. Pass ``indices`` to every ``update`` or to none: without ids every item counts, in arrival order.

    Args:
        kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    full_state_update = False
    values: list[Tensor]
    indices: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def _append(self, values: Tensor, indices: Tensor | None) -> None:
        """Keep a batch of per-item ``values`` (B,) and their ids ``indices`` (B,) (or None)."""
        if indices is not None:
            indices = torch.as_tensor(indices, device=values.device)
            if indices.shape != values.shape[:1] or indices.dtype.is_floating_point or indices.dtype == torch.bool:
                raise ValueError(
                    f"{type(self).__name__}: `indices` must be integer ids of shape ({values.shape[0]},), one per "
                    f"item, got {indices.dtype} of shape {tuple(indices.shape)}."
                )
            self.indices.append(indices.long())
        self.values.append(values.double())

    def _keys(self) -> Tensor | None:
        """The id of every item kept, or None when no update passed ids."""
        num_items = sum(v.shape[0] for v in self.values) if isinstance(self.values, list) else self.values.shape[0]
        keys = dim_zero_cat(self.indices) if self._has(self.indices) else None
        if keys is None:
            return None
        if keys.shape[0] != num_items:
            raise ValueError(
                f"{type(self).__name__} holds {num_items} items but {keys.shape[0]} ids: pass `indices` to every "
                "update or to none."
            )
        return keys

    @staticmethod
    def _has(state: list[Tensor] | Tensor) -> bool:
        return bool(state.numel()) if isinstance(state, Tensor) else any(t.numel() for t in state)

    def _items(self) -> tuple[Tensor, Tensor]:
        """``(ids, values)`` with every id once, in increasing id order (``arange`` ids when none were given)."""
        values = dim_zero_cat(self.values) if self._has(self.values) else torch.zeros(0, dtype=torch.float64)
        keys = self._keys()
        if keys is None:
            return torch.arange(values.shape[0], device=values.device), values
        distinct, first = first_occurrences(keys)
        return distinct, values[first]

    def per_item(self) -> tuple[Tensor, Tensor]:
        """Per-item ``(ids, values)`` of every item seen by any process, each id once, in increasing id order.

        Returns:
            Two tensors of shape (N,): long ids and float64 values.
        """
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            ids, values = self._items()
            return ids.clone(), values.clone()


class ItemMean(ItemMetric):
    """Mean of one number per item (e.g. the average answer NLL), each item counted once.

    Inputs of ``update``: ``values`` (B,), one number per item; ``indices`` (B,), optional item ids. ``compute``
    returns the mean as a scalar float64 tensor; items whose value is NaN are left out (NaN when no value is
    finite).

    Args:
        kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> metric = ItemMean()
        >>> metric.update(torch.tensor([1.0, 2.0]), indices=torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([4.0, 1.0]), indices=torch.tensor([2, 0]))  # item 0 again
        >>> metric.compute().item()
        2.3333333333333335
    """

    def update(self, values: Tensor, indices: Tensor | None = None) -> None:
        """Add a batch of items."""
        if values.ndim != 1:
            raise ValueError(f"ItemMean expects one value per item, shape (B,), got shape {tuple(values.shape)}.")
        self._append(values, indices)

    def compute(self) -> Tensor:
        """Mean over the items (NaN values left out)."""
        return self._items()[1].nanmean()
