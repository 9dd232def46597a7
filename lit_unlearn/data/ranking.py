"""Subset unlearning: which forget examples to keep, from a G-effect ranking of the forget split (or at random).

The G-effect paper's code ranks forget examples by their instance-wise G-effect and unlearns the top or bottom X% of
them. :class:`~callbacks.GEffectCallback` with ``per_instance="objective"`` (or ``"both"``) writes that ranking,
``g_effect_ranking.csv``: one row per forget example with its ``index`` (row in the forget split file), its
``question``, and ``g_effect_<risk>``, the example's objective-side G-effect ``∇R·∇ℓ_i`` summed over the measured
steps, for each risk (``forget``, ``retain``). :func:`select_subset` turns such a file into the kept rows.

What the values mean (G-effect sign convention: a step changes the risk by ≈ −η · G-effect):

* ``g_effect_forget``: negative is the goal, more negative = the example pushes its forget risk up harder (more
  removal).
* ``g_effect_retain``: ≥ 0 or ≈ 0 is the goal; negative = the example's unlearning raises the retain risk, i.e.
  collateral damage, more negative = more damage.

So ``subset="bottom"`` by ``g_effect_retain`` keeps the most damaging examples and ``"top"`` the most benign ones.
"""

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from callbacks import load_ranking
from callbacks.g_effect import RANKING_PREFIX

SubsetMode = Literal["top", "bottom", "random"]
"""``"top"``: the largest values of the ranking column (sorted by value, descending); ``"bottom"``: the smallest
(ascending); ``"random"``: a seeded uniform draw that ignores the values (the control)."""

REQUIRED_ID_COLUMNS = ("index", "question")
"""The example ids a ranking must carry to be checked against the forget split (what the unlearning modules give)."""


class RankingError(ValueError):
    """A ranking file that does not fit the forget split it is applied to; the message names the file, the row and
    the fix. Found when the data module reads the split (``setup``), so the command line reports it in one line."""


def check_subset_options(
    ranking_file: str | None, ranking_column: str, subset: str | None, fraction: float | None
) -> None:
    """Validate the subset options without reading any file (the DataModule's ``__init__`` calls it): only the
    ranking file's existence is checked, so a wrong path is reported before any model trains.

    Raises:
        ValueError: an unknown ``subset``, ``fraction`` outside (0, 1], a fraction without a subset or the reverse, a
            ranking without a subset, ``top``/``bottom`` without a ranking, or a column that is not ``g_effect_<risk>``.
        FileNotFoundError: ``ranking_file`` is not a file.
    """
    if subset is None:
        if fraction is not None or ranking_file is not None:
            raise ValueError(
                "subset_fraction and ranking_file select a subset of the forget split only with subset='top', "
                "'bottom' or 'random'; set subset (or remove them to unlearn the whole split)."
            )
        return
    if subset not in get_args(SubsetMode):
        raise ValueError(f"subset={subset!r}: choose 'top', 'bottom' or 'random' (or None for the whole split).")
    if fraction is None or isinstance(fraction, bool) or not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"subset_fraction={fraction!r}: give the fraction of the forget split to keep, in (0, 1] (e.g. 0.25)."
        )
    if subset != "random" and ranking_file is None:
        raise ValueError(
            f"subset={subset!r} ranks the forget examples by a G-effect ranking: set ranking_file to the "
            "g_effect_ranking.csv written by GEffectCallback(per_instance='objective') (or use subset='random')."
        )
    if not ranking_column.startswith(RANKING_PREFIX):
        raise ValueError(
            f"ranking_column={ranking_column!r}: a ranking is sorted by one of its {RANKING_PREFIX}<risk> columns, "
            f"e.g. '{RANKING_PREFIX}retain' or '{RANKING_PREFIX}forget'."
        )
    if ranking_file is not None:
        _check_ranking_file(ranking_file)


def _check_ranking_file(path: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"ranking_file={path!r} does not exist; give the g_effect_ranking.csv written by "
            "GEffectCallback(per_instance='objective') in its output_dir (or the ranking run's log folder, e.g. "
            "runs/tofu_paper/tiny_ga/version_0/g_effect_ranking.csv)."
        )


def subset_size(fraction: float, total: int) -> int:
    """How many of ``total`` examples a subset of ``fraction`` keeps: ``floor(fraction · total)``.

    The product is rounded to 9 decimals first, so that e.g. 0.29 · 100 (28.999999999999996 in binary) keeps 29.

    Example:
        >>> subset_size(0.25, 40), subset_size(0.29, 100), subset_size(0.01, 40)
        (10, 29, 0)
    """
    return math.floor(round(fraction * total, 9))


def select_subset(
    questions: Sequence[str],
    split: str,
    subset: SubsetMode,
    fraction: float,
    ranking_file: str | None = None,
    ranking_column: str = f"{RANKING_PREFIX}retain",
    seed: int = 0,
) -> list[int]:
    """The rows of a forget split to unlearn: a ranked (or random) fraction of them, in file order.

    Args:
        questions: The question of every row of the forget split file, in file order.
        split: The split's name, for error messages (e.g. ``"forget10"``).
        subset: ``"top"`` (largest values of ``ranking_column``), ``"bottom"`` (smallest) or ``"random"``. Ties are
            broken by the smaller row index.
        fraction: The fraction of the split to keep, in (0, 1]; the subset holds :func:`subset_size` rows.
        ranking_file: A ``g_effect_ranking.csv`` of this split: one row per forget example, every example exactly
            once. Checked even for ``"random"``, whose draw never reads its values.
        ranking_column: The ``g_effect_<risk>`` column to sort by.
        seed: Seed of the ``"random"`` draw (``random.Random(seed).sample`` over the row indices).

    Returns:
        The kept row indices, ascending.

    Raises:
        RankingError: an unknown column; a ranking row whose index is not an integer row of the split, appears
            twice, or whose question differs from that row's (a ranking of another split); a split row the ranking
            lacks. Each message names the file, the row and the fix.
        ValueError: a subset that would be empty.
    """
    total = len(questions)
    size = subset_size(fraction, total)
    if size == 0:
        raise ValueError(
            f"subset_fraction={fraction} of the {total} rows of {split} keeps no example (floor({fraction} · {total}) "
            f"= 0); use a fraction of at least {1 / total:.4g}."
        )
    values = _ranking_values(ranking_file, ranking_column, questions, split) if ranking_file is not None else None
    if subset == "random":
        # Only the row indices and the seed enter: the control is the same draw whatever the ranking says.
        return sorted(random.Random(seed).sample(range(total), size))
    if values is None:
        raise ValueError(f"subset={subset!r} needs a ranking_file.")
    sign = -1.0 if subset == "top" else 1.0
    order = sorted(range(total), key=lambda i: (sign * values[i], i))
    return sorted(order[:size])


def _ranking_values(path: str, column: str, questions: Sequence[str], split: str) -> list[float]:
    """``column``'s value for every row of the split, from a ranking file validated against the split's questions."""
    _check_ranking_file(path)
    file = Path(path)
    rows = load_ranking(file)
    risk = column[len(RANKING_PREFIX) :]
    risks = list(rows[0]["g_effect"]) if rows else []
    if risk not in risks:
        available = ", ".join(f"{RANKING_PREFIX}{r}" for r in risks) or "none"
        raise RankingError(f"{file}: no column {column!r} to rank by (the file has {available}); set ranking_column.")
    missing = [c for c in REQUIRED_ID_COLUMNS if c not in rows[0]["example"]]
    if missing:
        raise RankingError(
            f"{file}: the ranking has no {missing} column(s) (id columns: {list(rows[0]['example'])}); it must name "
            "each example by its row index and question, as the unlearning modules' example_ids do."
        )
    values: dict[int, float] = {}
    for line, row in enumerate(rows, start=2):
        index = _row_index(row["example"], total=len(questions), where=f"{file}, line {line}", split=split)
        if index in values:
            raise RankingError(f"{file}, line {line}: row {index} of {split} is ranked twice; rank each example once.")
        if row["example"]["question"] != questions[index]:
            raise RankingError(
                f"{file}, line {line}: the question of row {index} is {row['example']['question'][:60]!r} but row "
                f"{index} of {split} asks {questions[index][:60]!r}: the ranking comes from another split (or another "
                f"copy of TOFU). Rank {split} itself (run the callback on forget_split={split!r})."
            )
        values[index] = row["g_effect"][risk]
    unranked = [i for i in range(len(questions)) if i not in values]
    if unranked:
        raise RankingError(
            f"{file}: {len(unranked)} of the {len(questions)} rows of {split} are not ranked (first: row "
            f"{unranked[0]}); a ranking covers every forget example when the callback measures every step "
            "(every_n_steps=1) for at least one epoch of the whole split. A subset run writes a ranking of its own "
            "rows only: pass the ranking run's file (set its --trainer.callbacks.output_dir to keep it apart)."
        )
    return [values[i] for i in range(len(questions))]


def _row_index(example: Mapping[str, str], total: int, where: str, split: str) -> int:
    text = example["index"]
    try:
        index = int(text)
    except ValueError:
        raise RankingError(f"{where}: index {text!r} is not a row number of {split}.") from None
    if not 0 <= index < total:
        raise RankingError(
            f"{where}: index {index} is not a row of {split} (rows 0..{total - 1}): the ranking comes from another "
            f"split. Rank {split} itself (run the callback on forget_split={split!r})."
        )
    return index
