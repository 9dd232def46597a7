"""The evaluation step shared by the Lightning mixin and the plain runner.

For a batch of one split: one teacher-forced forward per answer variant (answer, paraphrased, perturbed) gives the
average answer NLLs (probability, truth ratio), the argmax predictions (extraction strength, exact memorisation) and
the token log-probs (min-k% membership score); one batched greedy generation gives the ROUGE-L recall. Each batch
updates the ``lit_unlearn.metrics`` Metric objects of its split, keyed by the TOFU row index: their list states are
gathered across processes by torchmetrics, and each row counts once, so a DDP evaluation equals a single-process one.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.data.evaluation import GENERATION_SPLITS, PARAPHRASED_SPLITS, TOFUEvalDataset, pad_token_id_of
from lit_unlearn.eval.aggregate import OPTION_NORMALISED_SPLITS, headline_numbers, truth_ratio_aggregation
from lit_unlearn.eval.io import load_eval
from lit_unlearn.eval.items import GENERATION_FILL, ItemDetails, ItemRecord, Records, build_records, token_lists
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.losses import token_logps
from lit_unlearn.metrics import (
    AnswerProbability,
    ExactMemorization,
    ExtractionStrength,
    ItemMean,
    ItemMetric,
    MinKMembershipAUC,
    ROUGELRecall,
    TruthRatio,
    min_k_scores,
)

MEMBERSHIP_SPLITS: dict[str, bool] = {"forget": True, "holdout": False}
"""Splits of the min-k% membership AUC and whether their items are members (trained on)."""


def _drop_last_label(labels: Tensor) -> Tensor:
    """``labels`` with each row's final label (the EOS) set to ignore: OpenUnlearning scores ES, EM and min-k on the
    answer tokens without the EOS prediction."""
    valid = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[-1], device=labels.device).expand_as(labels)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1, keepdim=True)
    return torch.where(positions == last, torch.full_like(labels, IGNORE_INDEX), labels)


@dataclass(frozen=True)
class TeacherForced:
    """``teacher_forced_stats`` of R rows padded to width T, in the part's row order.

    Attributes:
        loss: average NLL of each row's answer tokens (EOS included), shape (R,).
        num_tokens: answer tokens per row, shape (R,).
        labels: the labels each position predicts (shifted by one), -100 off the answer, shape (R, T-1).
        logps: log-probability of each label, 0.0 where it is -100, shape (R, T-1); None without ``token_stats``.
        preds: argmax prediction at each position, shape (R, T-1); None without ``token_stats``.
    """

    loss: Tensor
    num_tokens: Tensor
    labels: Tensor
    logps: Tensor | None
    preds: Tensor | None


def teacher_forced_stats(
    model: PreTrainedModel, part: Mapping[str, Tensor], chunk_size: int, token_stats: bool = False
) -> TeacherForced:
    """Teacher-forced statistics of one right-padded part (``input_ids``, ``attention_mask``, ``labels``).

    Rows are forwarded ``chunk_size`` at a time so that the (rows, T, vocab) logits of the perturbed part (K answers
    per question) never exceed those of the answer part. Rows are grouped by length and each chunk is cut to its
    longest row: the collator pads the whole part to its longest sequence, and forwarding that padding costs about a
    third of the teacher-forced compute on TOFU. Log-probs come from ``lit_unlearn.losses.token_logps``, the helper
    training uses (float32 log-softmax one chunk of rows at a time). Results come back in the original row order.
    """
    lengths = part["attention_mask"].sum(dim=-1)
    order = torch.argsort(lengths, descending=True, stable=True)
    labels = part["labels"][:, 1:]  # (R, T-1): position t predicts token t+1
    losses: list[Tensor] = []
    counts: list[Tensor] = []
    logps_all = preds_all = None
    for start in range(0, order.numel(), chunk_size):
        rows = order[start : start + chunk_size]
        width = int(lengths[rows].max())  # right padding: every column past the longest row is padding
        input_ids, attention_mask = part["input_ids"][rows, :width], part["attention_mask"][rows, :width]
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (r, width, V)
        logps, mask = token_logps(logits, part["labels"][rows, :width])  # (r, width-1) each
        num_tokens = mask.sum(dim=-1)
        losses.append(-logps.sum(dim=-1) / num_tokens)
        counts.append(num_tokens)
        if token_stats:
            if logps_all is None:
                logps_all = torch.zeros(labels.shape, dtype=logps.dtype, device=logps.device)
                preds_all = torch.zeros_like(labels)
            # Columns past this chunk's width stay 0: their labels are -100, so no statistic reads them.
            logps_all[rows, : width - 1] = logps
            preds_all[rows, : width - 1] = logits[:, :-1].argmax(dim=-1)
    inverse = torch.argsort(order)
    loss, num_tokens = torch.cat(losses)[inverse], torch.cat(counts)[inverse]
    return TeacherForced(loss=loss, num_tokens=num_tokens, labels=labels, logps=logps_all, preds=preds_all)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids that end a generation: the tokenizer's and the model's (chat models may add e.g. ``<|eot_id|>``)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(int(i) for i in (configured if isinstance(configured, Iterable) else [configured]))
    if not ids:
        raise ValueError(f"Neither the tokenizer {tokenizer.name_or_path!r} nor the model defines an EOS token.")
    return sorted(ids)


def generate_answer_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: Mapping[str, Tensor], max_new_tokens: int
) -> Tensor:
    """Greedy answers to left-padded prompts as token ids, cut before the first EOS.

    Returns:
        Shape (B, max_new_tokens), long; ``GENERATION_FILL`` (-1) from each answer's first EOS on.

    Raises:
        ValueError: when the model returns more than ``max_new_tokens`` new tokens.
    """
    stop = _stop_ids(model, tokenizer)
    # A fresh config: sampling settings shipped with a checkpoint (temperature, top_p, ...) must not leak in.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop,
        pad_token_id=pad_token_id_of(tokenizer),
    )
    out = model.generate(
        input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], generation_config=config
    )
    new = out[:, prompt["input_ids"].shape[1] :]
    if new.shape[1] > max_new_tokens:
        raise ValueError(f"{type(model).__name__}.generate returned {new.shape[1]} > {max_new_tokens} new tokens.")
    ended = torch.isin(new, torch.tensor(stop, device=new.device)).cumsum(dim=-1) > 0
    ids = new.masked_fill(ended, GENERATION_FILL)
    # A fixed width, so that the answers of every batch and process concatenate into one state.
    return torch.nn.functional.pad(ids, (0, max_new_tokens - ids.shape[1]), value=GENERATION_FILL)


def decode_answers(tokenizer: PreTrainedTokenizerBase, ids: Tensor) -> list[str]:
    """Answers from ``generate_answer_ids``, decoded without special tokens and stripped."""
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in token_lists(ids)]


def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: Mapping[str, Tensor], max_new_tokens: int
) -> list[str]:
    """Greedy answers to left-padded prompts, cut at the first EOS, decoded without special tokens and stripped."""
    return decode_answers(tokenizer, generate_answer_ids(model, tokenizer, prompt, max_new_tokens))


def eval_datasets(loaders: Mapping[str, DataLoader] | Iterable[DataLoader] | DataLoader) -> dict[str, TOFUEvalDataset]:
    """The TOFU evaluation dataset behind each loader, keyed by split (the rows the records' questions come from).

    Raises:
        ValueError: when a loader's dataset is not a ``TOFUEvalDataset``.
    """
    if isinstance(loaders, DataLoader):
        loaders = [loaders]
    elif isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    datasets = {}
    for loader in loaders:
        dataset = loader.dataset
        if not isinstance(dataset, TOFUEvalDataset):
            raise ValueError(
                "TOFU evaluation loaders must iterate a lit_unlearn.data.TOFUEvalDataset (build them with "
                f"lit_unlearn.data.tofu_eval_dataloaders); got a {type(dataset).__name__}."
            )
        datasets[dataset.split] = dataset
    return datasets


class SplitMetrics(torch.nn.Module):
    """The Metric objects of one evaluation split: the summary's numbers and the per-item file's details.

    Args:
        split: the evaluation split (decides option-normalised probability, truth-ratio aggregation, generation).
        generate: whether ROUGE-L is measured (generation splits only).
    """

    def __init__(self, split: str, generate: bool) -> None:
        super().__init__()
        self.answer_loss = ItemMean()
        self.probability = AnswerProbability(normalized=split in OPTION_NORMALISED_SPLITS)
        self.truth_ratio = TruthRatio(truth_ratio_aggregation(split)) if split != "holdout" else None
        self.rouge_l_recall = ROUGELRecall() if generate and split in GENERATION_SPLITS else None
        self.extraction_strength = ExtractionStrength()
        self.exact_memorization = ExactMemorization()
        self.details = ItemDetails()

    def summary(self) -> dict[str, float]:
        """The split's aggregates, in the order of ``lit_unlearn.eval.aggregate.split_metrics``."""
        out = {"probability": float(self.probability.compute()), "answer_loss": float(self.answer_loss.compute())}
        if self.truth_ratio is not None:
            out["truth_ratio"] = float(self.truth_ratio.compute())
        if self.rouge_l_recall is not None:
            out["rouge_l_recall"] = float(self.rouge_l_recall.compute())
        out["extraction_strength"] = float(self.extraction_strength.compute())
        out["exact_memorization"] = float(self.exact_memorization.compute())
        # A mean of NaN-skipping metrics is NaN when no item had a value (no answer token besides EOS): absent then,
        # as for stored records.
        return {k: v for k, v in out.items() if k in ("probability", "truth_ratio") or not math.isnan(v)}

    def per_item(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-item ``(indices, values)`` of every metric, keyed by record field."""
        metrics: dict[str, ItemMetric] = {
            "answer_loss": self.answer_loss,
            "probability": self.probability,
            "extraction_strength": self.extraction_strength,
            "exact_memorization": self.exact_memorization,
        }
        if self.truth_ratio is not None:
            metrics["truth_ratio"] = self.truth_ratio
        if self.rouge_l_recall is not None:
            metrics["rouge_l_recall"] = self.rouge_l_recall
        return {key: metric.per_item() for key, metric in metrics.items()}


class TOFUEvaluator:
    """Accumulates TOFU evaluation batches, split by split, into ``lit_unlearn.metrics`` Metric objects.

    ``update`` evaluates a batch; ``compute`` returns the flat summary and ``records`` the per-item records. Under
    ``torch.distributed`` both gather the states of every process, so every process must call them, in the same
    order; every process must also have evaluated the same splits (``DistributedSampler`` gives each at least one
    item of every split).

    Args:
        tokenizer: the model's tokenizer (generation and decoding).
        settings: generation budget, item cap, min-k fraction, retain reference.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: EvalSettings | None = None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or EvalSettings()
        self.metrics = torch.nn.ModuleDict()
        self.membership = MinKMembershipAUC(k=self.settings.min_k)
        self._reference: tuple[str, Records] | None = None
        self.reference()  # a missing or broken reference fails now, not after the whole evaluation

    @property
    def splits(self) -> list[str]:
        """The splits evaluated since the last ``reset``, in evaluation order."""
        return list(self.metrics)

    def reset(self) -> None:
        """Forget every evaluated item (start of an evaluation epoch)."""
        self.metrics = torch.nn.ModuleDict()
        self.membership.reset()

    def _check_cap(self, split: str, index: Tensor) -> None:
        cap = self.settings.max_items
        if cap is not None and int(index.max()) >= cap:
            beyond = sorted(i for i in index.tolist() if i >= cap)
            raise ValueError(
                f"TOFU evaluation of split {split!r} got rows {beyond} beyond the evaluation cap max_items={cap} "
                "(EvalSettings.max_items, `--model.evaluation.max_items` on the command line): its loader was built "
                f"without that cap. Build the evaluation loaders with the same cap: TOFUUnlearnDataModule("
                f"eval_max_items={cap}) (`data.eval_max_items`, which LitUnlearnCLI links to "
                f"`model.evaluation.max_items`) or tofu_eval_dataloaders(..., max_items={cap})."
            )

    def _split_metrics(self, split: str, device: torch.device) -> SplitMetrics:
        if split not in self.metrics:
            self.metrics[split] = SplitMetrics(split, self.settings.generate).to(device)
        return self.metrics[split]

    @torch.no_grad()
    def update(self, model: PreTrainedModel, batch: Mapping[str, Any]) -> None:
        """Evaluate one collated batch (see ``lit_unlearn.data.TOFUEvalCollator``) and add it to its split.

        Raises:
            ValueError: on a row beyond ``settings.max_items`` or a batch without the answer variants of its split.
        """
        split, index = batch["split"], batch["index"]
        self._check_cap(split, index)
        parts = batch["teacher_forced"]
        device = parts["answer"]["input_ids"].device
        index = index.to(device)
        size = index.shape[0]
        metrics = self._split_metrics(split, device)

        answer = teacher_forced_stats(model, parts["answer"], size, token_stats=True)
        no_eos = _drop_last_label(answer.labels)
        scored = no_eos != IGNORE_INDEX
        paraphrased = teacher_forced_stats(model, parts["paraphrased"], size).loss if "paraphrased" in parts else None
        perturbed = None
        if "perturbed" in parts:
            perturbed = teacher_forced_stats(model, parts["perturbed"], size).loss.view(size, -1)  # (B, K)

        metrics.answer_loss.update(answer.loss, index)
        metrics.probability.update(answer.loss, perturbed, index)
        metrics.extraction_strength.update(answer.preds, no_eos, index)
        metrics.exact_memorization.update(answer.preds, no_eos, index)
        if metrics.truth_ratio is not None:
            correct = paraphrased if split in PARAPHRASED_SPLITS else answer.loss
            if correct is None or perturbed is None:
                raise ValueError(
                    f"A {split!r} batch needs the paraphrased (forget/retain) and perturbed answers for the truth "
                    f"ratio; got parts {sorted(parts)} (build it with lit_unlearn.data.TOFUEvalCollator)."
                )
            metrics.truth_ratio.update(correct, perturbed, index)
        if split in MEMBERSHIP_SPLITS:
            if self.membership.device != device:
                self.membership.to(device)
            self.membership.update(answer.logps, scored, MEMBERSHIP_SPLITS[split], index)
        generation_ids = None
        if metrics.rouge_l_recall is not None:
            generation_ids = generate_answer_ids(model, self.tokenizer, batch["prompt"], self.settings.max_new_tokens)
            metrics.rouge_l_recall.update(decode_answers(self.tokenizer, generation_ids), batch["answer"], index)
        min_k = min_k_scores(answer.logps, scored, self.settings.min_k)
        metrics.details.update(index, answer.num_tokens, min_k, paraphrased, perturbed, generation_ids)

    def reference(self) -> Records | None:
        """Per-item records of the retain model (``settings.retain_eval_path``), read once and cached."""
        path = self.settings.retain_eval_path
        if path is None:
            return None
        if self._reference is None or self._reference[0] != path:
            try:
                self._reference = (path, load_eval(path)[0])
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"retain_eval_path (--model.evaluation.retain_eval_path): {err} Evaluate the retain model first "
                    "(lit-unlearn test on it writes eval_items.json), or unset it with "
                    "--model.evaluation.retain_eval_path=null (no forget quality then)."
                ) from err
        return self._reference[1]

    def compute(self) -> dict[str, Any]:
        """Every TOFU number of the evaluated items (gathered from every process).

        Returns:
            The flat summary of ``lit_unlearn.eval.aggregate.summarize_records``: ``<split>/<metric>``,
            ``num_items/<split>``, ``model_utility``, ``forget_quality`` (with a retain reference), membership AUC and
            privleak (with forget and holdout).
        """
        summary: dict[str, Any] = {"model_utility": None, "forget_quality": None}
        for split, metrics in self.metrics.items():
            summary[f"num_items/{split}"] = int(metrics.answer_loss.per_item()[0].numel())
            for key, value in metrics.summary().items():
                summary[f"{split}/{key}"] = value
        forget_ratios = self.metrics["forget"].truth_ratio.ratios().cpu() if "forget" in self.metrics else None
        auc = float(self.membership.compute()) if set(MEMBERSHIP_SPLITS) <= set(self.metrics) else None
        summary.update(
            headline_numbers(summary, forget_ratios, auc, self.reference(), self.settings.privleak_reference_auc)
        )
        return summary

    def records(self, datasets: Mapping[str, TOFUEvalDataset]) -> dict[str, list[ItemRecord]]:
        """Per-item records of every evaluated split (gathered from every process), in increasing index order.

        The metric values of a record are the per-item values its split's metrics aggregated. Questions and answers
        are strings, which processes cannot gather as tensors: they come from ``datasets`` by row index. Generations
        were gathered as token ids and are decoded here.

        Args:
            datasets: the evaluation datasets keyed by split (see :func:`eval_datasets`).

        Raises:
            ValueError: when an evaluated split has no dataset.
        """
        missing = [split for split in self.metrics if split not in datasets]
        if missing:
            raise ValueError(f"No evaluation dataset for splits {missing}; pass those the loaders iterate.")
        out = {}
        for split, metrics in self.metrics.items():
            details = metrics.details.compute()
            ids = details.generation_ids
            generations = decode_answers(self.tokenizer, ids.cpu()) if ids is not None else None
            out[split] = build_records(split, datasets[split].rows, metrics.per_item(), details, generations)
        return out
