"""Author arithmetic on TOFU: which rows of ``full`` belong to which author, forget/retain correspondences.

``full`` lists 200 authors × 20 rows in order. ``forgetXX`` is the last 2/10/20 authors of ``full``,
``retainXX`` the rows before them, ``retain_perturbed`` the first 400 rows (authors 0..19).
"""

from collections.abc import Iterable, Mapping, Sequence

from lit_unlearn.data.tofu import NUM_TOFU_AUTHORS, ROWS_PER_AUTHOR

FORGET_AUTHORS: dict[str, int] = {"forget01": 2, "forget05": 10, "forget10": 20}
"""Number of authors in each forget split (1%, 5%, 10% of the 200)."""

RETAIN_OF_FORGET: dict[str, str] = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
"""The retain split that complements each forget split in ``full``."""

FULL_OFFSETS: dict[str, int] = {
    "full": 0,
    "retain99": 0,
    "retain95": 0,
    "retain90": 0,
    **{name: (NUM_TOFU_AUTHORS - n) * ROWS_PER_AUTHOR for name, n in FORGET_AUTHORS.items()},
}
"""Index in ``full`` of the first row of each split that is a contiguous block of ``full``."""


def forget_authors(forget_split: str) -> list[int]:
    """Author indices (0..199, in ``full`` order) of a forget split: its authors are the last ones."""
    if forget_split not in FORGET_AUTHORS:
        raise ValueError(f"Unknown forget split {forget_split!r}; choose one of {list(FORGET_AUTHORS)}.")
    return list(range(NUM_TOFU_AUTHORS - FORGET_AUTHORS[forget_split], NUM_TOFU_AUTHORS))


def full_indices(split: str, rows: Sequence[Mapping], full_rows: Sequence[Mapping]) -> list[int]:
    """Index in ``full`` of every row of ``split``, checked against the content of ``full``.

    Raises:
        ValueError: ``split`` is not a block of ``full``, or its rows differ from the matching rows of ``full``
            (a mixed-up data folder would otherwise select the wrong authors silently).
    """
    if split not in FULL_OFFSETS:
        raise ValueError(f"Split {split!r} is not a block of TOFU's full split; use one of {list(FULL_OFFSETS)}.")
    offset = FULL_OFFSETS[split]
    if offset + len(rows) > len(full_rows):
        raise ValueError(
            f"Split {split!r} has {len(rows)} rows, more than fit in full after row {offset} "
            f"({len(full_rows)} rows); the data folder mixes different versions of TOFU."
        )
    for i, row in enumerate(rows):
        ref = full_rows[offset + i]
        if (row["question"], row["answer"]) != (ref["question"], ref["answer"]):
            raise ValueError(
                f"Row {i} of {split!r} differs from row {offset + i} of full (question {row['question'][:60]!r} "
                f"vs {ref['question'][:60]!r}); TOFU's {split} must be rows {offset}..{offset + len(rows) - 1} of "
                "full. Use matching copies of the Hub files."
            )
    return list(range(offset, offset + len(rows)))


def author_of(full_index: int) -> int:
    """Author index (0..199) of a row of ``full``."""
    return full_index // ROWS_PER_AUTHOR


def check_authors(authors: Iterable[int], what: str) -> list[int]:
    """Validate author indices (0..199) and return them sorted without duplicates."""
    authors = list(authors)
    bad = [a for a in authors if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < NUM_TOFU_AUTHORS]
    if bad:
        raise ValueError(f"{what}: author indices must be integers in 0..{NUM_TOFU_AUTHORS - 1}, got {bad}.")
    return sorted(set(authors))
