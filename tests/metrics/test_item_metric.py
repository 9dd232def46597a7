"""Per-item metrics: each item id counts once (its first occurrence), values in id order; ids go to every update or
to none."""

import pytest
import torch

from lit_unlearn.metrics import AnswerProbability, ItemMean, MinKMembershipAUC, TruthRatio, first_occurrences


def test_first_occurrences_vs_a_python_loop() -> None:
    keys = torch.tensor([7, 3, 7, 1, 3, 9, 1, 1])
    seen: dict[int, int] = {}
    for pos, key in enumerate(keys.tolist()):
        seen.setdefault(key, pos)
    distinct, positions = first_occurrences(keys)
    assert distinct.tolist() == sorted(seen)
    assert positions.tolist() == [seen[k] for k in sorted(seen)]
    rows = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 2]])  # (side, id) rows: (1, 0) twice
    distinct, positions = first_occurrences(rows)
    assert distinct.tolist() == [[0, 0], [0, 2], [1, 0]]
    assert positions.tolist() == [1, 3, 0]


def test_repeated_ids_count_once_in_id_order() -> None:
    metric = ItemMean()
    metric.update(torch.tensor([5.0, 1.0]), torch.tensor([2, 0]))
    metric.update(torch.tensor([3.0, 99.0]), torch.tensor([1, 2]))  # id 2 again: its first value (5.0) stays
    ids, values = metric.per_item()
    assert ids.tolist() == [0, 1, 2]
    assert values.tolist() == [1.0, 3.0, 5.0]
    assert metric.compute().item() == pytest.approx(3.0)
    ratios = TruthRatio()
    ratios.update(torch.tensor([1.0, 2.0]), torch.tensor([[1.0], [1.0]]), torch.tensor([1, 0]))
    assert ratios.ratios().tolist() == pytest.approx([torch.e, 1.0])  # row order: id 0 (R = e^(2-1)) first


def test_without_ids_every_item_counts() -> None:
    metric = AnswerProbability()
    metric.update(torch.tensor([0.0, 0.0]))
    metric.update(torch.tensor([0.0]))
    assert metric.per_item()[0].tolist() == [0, 1, 2]
    assert metric.compute().item() == 1.0


def test_ids_to_some_updates_only_raise() -> None:
    metric = ItemMean()
    metric.update(torch.tensor([1.0]), torch.tensor([0]))
    metric.update(torch.tensor([2.0]))
    with pytest.raises(ValueError, match="pass `indices` to every update or to none"):
        metric.compute()
    with pytest.raises(ValueError, match="integer ids of shape"):
        ItemMean().update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]))


def test_membership_ids_are_per_side() -> None:
    """Forget row 0 and holdout row 0 are two items; forget row 0 seen twice is one."""
    metric = MinKMembershipAUC(k=1.0)
    ones = torch.ones(1, 1, dtype=torch.bool)
    metric.update(torch.tensor([[-0.1]]), ones, True, torch.tensor([0]))
    metric.update(torch.tensor([[-5.0]]), ones, False, torch.tensor([0]))
    metric.update(torch.tensor([[-9.0]]), ones, True, torch.tensor([0]))  # a repeat: the first score stays
    assert metric.compute().item() == 1.0  # member 0.1 < non-member 5.0
