"""Per-item records of a TOFU evaluation (what ``eval_items.json`` holds) and ``ItemDetails``, the values a record
keeps that no metric aggregates.

A record's metric values (answer loss, probability, truth ratio, ROUGE-L recall, ES, EM) are the per-item values of the
``lit_unlearn.metrics`` Metric objects that produced the summary. The rest (token counts, the losses of the other
answer variants, min-k scores, the generated tokens) is kept by ``ItemDetails``, a Metric only for its list states:
torchmetrics gathers them from every process like the metrics' own, so rank 0 can write the file of all items.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lit_unlearn.metrics.item_metric import first_occurrences


class ItemRecord(TypedDict, total=False):
    """One evaluated item. Losses are average NLLs per answer token (EOS included); ``perturbed_losses`` has one
    per perturbed answer. Records read from original TOFU logs carry a subset (no token statistics)."""

    index: int
    question: str
    answer: str
    answer_loss: float
    num_answer_tokens: int | None
    extraction_strength: float | None
    exact_memorization: float | None
    min_k_score: float | None
    paraphrased_loss: float
    perturbed_losses: list[float]
    generation: str
    rouge_l_recall: float
    probability: float
    truth_ratio: float


Records = Mapping[str, Sequence[Mapping[str, Any]]]
"""Per-item records keyed by evaluation split (``ItemRecord`` fields; read-back files may hold more)."""


@dataclass
class DetailValues:  # not frozen: torchmetrics rebuilds what compute returns, field by field
    """``ItemDetails.compute()``: one row per item, in increasing index order (None: the split has no such value).

    Attributes:
        index: TOFU row numbers, shape (N,).
        num_answer_tokens: answer tokens scored per item (EOS included), shape (N,).
        min_k_score: min-k% membership scores, shape (N,).
        paraphrased_loss: average NLL of the paraphrased answer, shape (N,).
        perturbed_losses: average NLLs of the perturbed answers, shape (N, K).
        generation_ids: greedy answer token ids, cut before the first EOS, right-filled with -1, shape (N, W).
    """

    index: Tensor
    num_answer_tokens: Tensor
    min_k_score: Tensor
    paraphrased_loss: Tensor | None
    perturbed_losses: Tensor | None
    generation_ids: Tensor | None


GENERATION_FILL = -1
"""Fill value of ``generation_ids`` past the end of an answer (not a token id)."""


class ItemDetails(Metric):
    """Per-item values of one evaluation split kept for the per-item file, as list states gathered across processes.

    Every item counts once: its first occurrence after the gather, in increasing index order (``DistributedSampler``
    repeats items to even out shards), as in ``lit_unlearn.metrics.ItemMetric``.
    """

    is_differentiable = False
    full_state_update = False
    index: list[Tensor]
    num_answer_tokens: list[Tensor]
    min_k_score: list[Tensor]
    paraphrased_loss: list[Tensor]
    perturbed_losses: list[Tensor]
    generation_ids: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("index", "num_answer_tokens", "min_k_score", "paraphrased_loss", "perturbed_losses"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("generation_ids", default=[], dist_reduce_fx="cat")

    def update(
        self,
        index: Tensor,
        num_answer_tokens: Tensor,
        min_k_score: Tensor,
        paraphrased_loss: Tensor | None = None,
        perturbed_losses: Tensor | None = None,
        generation_ids: Tensor | None = None,
    ) -> None:
        """Add a batch of B items; every tensor has B rows."""
        self.index.append(index.long())
        self.num_answer_tokens.append(num_answer_tokens.long())
        self.min_k_score.append(min_k_score.double())
        if paraphrased_loss is not None:
            self.paraphrased_loss.append(paraphrased_loss.double())
        if perturbed_losses is not None:
            self.perturbed_losses.append(perturbed_losses.double())
        if generation_ids is not None:
            self.generation_ids.append(generation_ids.long())

    @staticmethod
    def _rows(state: list[Tensor] | Tensor, positions: Tensor, num_items: int, name: str) -> Tensor | None:
        # An unused state is an empty list before the gather and an empty tensor after it.
        if (state.numel() == 0) if isinstance(state, Tensor) else not any(t.numel() for t in state):
            return None
        values = dim_zero_cat(state)
        if values.shape[0] != num_items:
            raise ValueError(
                f"ItemDetails holds {num_items} items but {values.shape[0]} rows of {name!r}: a split's batches must "
                "all carry the same answer variants."
            )
        return values[positions]

    def compute(self) -> DetailValues:
        """The values of every item once, in increasing index order."""
        keys = dim_zero_cat(self.index)
        index, positions = first_occurrences(keys)
        n = keys.shape[0]
        return DetailValues(
            index=index,
            num_answer_tokens=self._rows(self.num_answer_tokens, positions, n, "num_answer_tokens"),
            min_k_score=self._rows(self.min_k_score, positions, n, "min_k_score"),
            paraphrased_loss=self._rows(self.paraphrased_loss, positions, n, "paraphrased_loss"),
            perturbed_losses=self._rows(self.perturbed_losses, positions, n, "perturbed_losses"),
            generation_ids=self._rows(self.generation_ids, positions, n, "generation_ids"),
        )


def token_lists(ids: Tensor) -> list[list[int]]:
    """The rows of a ``generation_ids`` tensor without their ``GENERATION_FILL`` tail."""
    return [[int(t) for t in row if t != GENERATION_FILL] for row in ids.tolist()]


def _none_if_nan(x: float) -> float | None:
    return None if x != x else x


def build_records(
    split: str,
    rows: Sequence[Mapping[str, Any]],
    metric_values: Mapping[str, tuple[Tensor, Tensor]],
    details: DetailValues,
    generations: Sequence[str] | None,
) -> list[ItemRecord]:
    """Per-item records of one split, in increasing index order.

    Args:
        split: the split name (for error messages).
        rows: the split's dataset rows (``question``, ``answer``), indexed by the items' ``index``.
        metric_values: per-item ``(indices, values)`` of the split's metrics, keyed by record field
            (``answer_loss``, ``probability``, ``truth_ratio``, ``extraction_strength``, ...).
        details: the split's ``ItemDetails`` values.
        generations: decoded ``details.generation_ids`` (None without generation).

    Raises:
        ValueError: when a metric saw other items than ``details`` or an index is not a row of ``rows``.
    """
    index = details.index.cpu()
    for key, (ids, _) in metric_values.items():
        if not torch.equal(ids.cpu(), index):
            raise ValueError(f"The {key!r} metric of split {split!r} saw other items than the split's details.")
    if index.numel() and int(index.max()) >= len(rows):
        raise ValueError(
            f"Split {split!r} evaluated row {int(index.max())} but its dataset has {len(rows)} rows; pass the datasets "
            "the evaluation loaders were built from."
        )
    values = {key: v.cpu().tolist() for key, (_, v) in metric_values.items()}
    tokens = details.num_answer_tokens.cpu().tolist()
    min_k = details.min_k_score.cpu().tolist()
    paraphrased = details.paraphrased_loss.cpu().tolist() if details.paraphrased_loss is not None else None
    perturbed = details.perturbed_losses.cpu().tolist() if details.perturbed_losses is not None else None
    records: list[ItemRecord] = []
    for pos, i in enumerate(index.tolist()):
        record: ItemRecord = {
            "index": i,
            "question": rows[i]["question"],
            "answer": rows[i]["answer"],
            "answer_loss": values["answer_loss"][pos],
            "num_answer_tokens": tokens[pos],
            "extraction_strength": _none_if_nan(values["extraction_strength"][pos]),
            "exact_memorization": _none_if_nan(values["exact_memorization"][pos]),
            "min_k_score": _none_if_nan(min_k[pos]),
        }
        if paraphrased is not None:
            record["paraphrased_loss"] = paraphrased[pos]
        if perturbed is not None:
            record["perturbed_losses"] = perturbed[pos]
        if generations is not None:
            record["generation"] = generations[pos]
            record["rouge_l_recall"] = values["rouge_l_recall"][pos]
        record["probability"] = values["probability"][pos]
        if "truth_ratio" in values:
            record["truth_ratio"] = values["truth_ratio"][pos]
        records.append(record)
    return records
