"""The evaluation step shared by the Lightning mixin and the plain runner.

For a batch of one split: one teacher-forced forward per answer variant (answer, paraphrased, perturbed) gives the
average answer NLLs (probability, truth ratio), the argmax predictions (extraction strength, exact memorisation) and
the token log-probs (min-k% membership score); one batched greedy generation gives the ROUGE-L recall. The results
are per-item records; aggregation happens once at the end (``lit_unlearn.eval.aggregate``).
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_unlearn.batch import IGNORE_INDEX
from lit_unlearn.eval.aggregate import Records, summarize_records
from lit_unlearn.eval.data import pad_token_id_of
from lit_unlearn.eval.io import load_eval
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.metrics.functional.memorization import exact_memorization, extraction_strength
from lit_unlearn.metrics.functional.mia import min_k_scores
from lit_unlearn.metrics.functional.rouge import rouge_l_recall_batch

Record = dict[str, Any]
"""One evaluated item: ``index``, ``question``, ``answer``, ``answer_loss``, ``num_answer_tokens``, and where the split
has them ``paraphrased_loss``, ``perturbed_losses``, ``extraction_strength``, ``exact_memorization``,
``min_k_score``, ``generation``, ``rouge_l_recall``. Losses are average NLLs per answer token (EOS included)."""


def _drop_last_label(labels: Tensor) -> Tensor:
    """``labels`` with each row's final label (the EOS) set to ignore: OpenUnlearning scores ES, EM and min-k on the
    answer tokens without the EOS prediction."""
    valid = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[-1], device=labels.device).expand_as(labels)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1, keepdim=True)
    return torch.where(positions == last, torch.full_like(labels, IGNORE_INDEX), labels)


def teacher_forced_stats(
    model: PreTrainedModel, part: Mapping[str, Tensor], chunk_size: int, token_stats: bool = False, min_k: float = 0.4
) -> dict[str, Tensor]:
    """Average answer NLL per row (and, with ``token_stats``, ES, EM and min-k scores) of one right-padded part.

    Rows are forwarded ``chunk_size`` at a time so that the (rows, T, vocab) logits of the perturbed part (K answers
    per question) never exceed those of the answer part. Rows are grouped by length and each chunk is cut to its
    longest row: the collator pads the whole part to its longest sequence, and forwarding that padding costs about a
    third of the teacher-forced compute on TOFU. Results come back in the original row order.
    """
    lengths = part["attention_mask"].sum(dim=-1)
    order = torch.argsort(lengths, descending=True, stable=True)
    outputs: dict[str, list[Tensor]] = {"loss": [], "num_tokens": []}
    if token_stats:
        outputs.update(extraction_strength=[], exact_memorization=[], min_k_score=[])
    for start in range(0, order.numel(), chunk_size):
        rows = order[start : start + chunk_size]
        width = int(lengths[rows].max())  # right padding: every column past the longest row is padding
        input_ids = part["input_ids"][rows, :width]
        logits = model(input_ids=input_ids, attention_mask=part["attention_mask"][rows, :width]).logits
        # Position t predicts token t+1; reductions in float32 whatever the weights' dtype.
        logits = logits[:, :-1].float()
        labels = part["labels"][rows, 1:width]
        mask = labels != IGNORE_INDEX
        # log p(label) = logit[label] - logsumexp(logits): no (rows, T, vocab) log-softmax tensor is written.
        picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
        num_tokens = mask.sum(dim=-1)
        outputs["loss"].append(-token_logps.sum(dim=-1) / num_tokens)
        outputs["num_tokens"].append(num_tokens)
        if token_stats:
            preds = logits.argmax(dim=-1)
            no_eos = _drop_last_label(labels)
            outputs["extraction_strength"].append(extraction_strength(preds, no_eos))
            outputs["exact_memorization"].append(exact_memorization(preds, no_eos))
            outputs["min_k_score"].append(min_k_scores(token_logps, no_eos != IGNORE_INDEX, min_k))
    inverse = torch.argsort(order)
    return {k: torch.cat(v)[inverse].cpu() for k, v in outputs.items()}


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


def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: Mapping[str, Tensor], max_new_tokens: int
) -> list[str]:
    """Greedy answers to left-padded prompts, cut at the first EOS, decoded without special tokens and stripped."""
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
    new_tokens = out[:, prompt["input_ids"].shape[1] :].tolist()
    texts = []
    for ids in new_tokens:
        cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
        texts.append(tokenizer.decode(ids[:cut], skip_special_tokens=True).strip())
    return texts


def _float(value: Tensor) -> float | None:
    x = float(value)
    return None if math.isnan(x) else x


class TOFUEvaluator:
    """Accumulates per-item records of TOFU evaluation batches, split by split.

    Args:
        tokenizer: the model's tokenizer (decoding generations).
        settings: generation budget and min-k fraction.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: EvalSettings | None = None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or EvalSettings()
        self.records: dict[str, list[Record]] = {}
        self._reference: tuple[str, Records] | None = None

    def reset(self) -> None:
        """Forget every record (start of an evaluation epoch)."""
        self.records = {}

    @torch.no_grad()
    def evaluate_batch(self, model: PreTrainedModel, batch: Mapping[str, Any]) -> list[Record]:
        """Evaluate one collated batch (see ``TOFUEvalCollator``) and return its per-item records."""
        parts = batch["teacher_forced"]
        size = len(batch["question"])
        answer = teacher_forced_stats(model, parts["answer"], size, token_stats=True, min_k=self.settings.min_k)
        records = [
            {
                "index": int(batch["index"][i]),
                "question": batch["question"][i],
                "answer": batch["answer"][i],
                "answer_loss": float(answer["loss"][i]),
                "num_answer_tokens": int(answer["num_tokens"][i]),
                "extraction_strength": _float(answer["extraction_strength"][i]),
                "exact_memorization": _float(answer["exact_memorization"][i]),
                "min_k_score": _float(answer["min_k_score"][i]),
            }
            for i in range(size)
        ]
        if "paraphrased" in parts:
            losses = teacher_forced_stats(model, parts["paraphrased"], size)["loss"]
            for record, loss in zip(records, losses.tolist(), strict=True):
                record["paraphrased_loss"] = loss
        if "perturbed" in parts:
            losses = teacher_forced_stats(model, parts["perturbed"], size)["loss"].view(size, -1)
            for record, row in zip(records, losses.tolist(), strict=True):
                record["perturbed_losses"] = row
        if self.settings.generate and "prompt" in batch:
            generations = generate_answers(model, self.tokenizer, batch["prompt"], self.settings.max_new_tokens)
            scores = rouge_l_recall_batch(generations, batch["answer"])
            for record, text, score in zip(records, generations, scores, strict=True):
                record["generation"] = text
                record["rouge_l_recall"] = score
        return records

    def update(self, model: PreTrainedModel, batch: Mapping[str, Any]) -> list[Record]:
        """Evaluate a batch and keep its records under its split (only rows below ``settings.max_items``)."""
        cap = self.settings.max_items
        # The cap holds whatever loader feeds the evaluator (e.g. a DataModule built without it); batches wholly past
        # it are not even run.
        if cap is not None and int(batch["index"].min()) >= cap:
            return []
        records = self.evaluate_batch(model, batch)
        if cap is not None:
            records = [r for r in records if r["index"] < cap]
        self.records.setdefault(batch["split"], []).extend(records)
        return records

    def gathered(self) -> dict[str, list[Record]]:
        """Records of every process, sorted by index with duplicates dropped.

        ``DistributedSampler`` repeats items to even out shards; keying by the TOFU row index makes the result
        exactly the single-process one.
        """
        local = self.records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(world, local)
        else:
            world = [local]
        merged: dict[str, dict[int, Record]] = {}
        for part in world:
            for split, records in part.items():
                by_index = merged.setdefault(split, {})
                for record in records:
                    by_index.setdefault(record["index"], record)
        return {split: [by_index[i] for i in sorted(by_index)] for split, by_index in merged.items()}

    def reference(self) -> Records | None:
        """Per-item records of the retain model (``settings.retain_eval_path``), read once and cached."""
        path = self.settings.retain_eval_path
        if path is None:
            return None
        if self._reference is None or self._reference[0] != path:
            self._reference = (path, load_eval(path)[0])
        return self._reference[1]

    def compute(self) -> tuple[dict[str, list[Record]], dict[str, Any]]:
        """Gather the records of every process and aggregate them: ``(records, summary)``."""
        records = self.gathered()
        summary = summarize_records(records, self.reference(), self.settings.privleak_reference_auc)
        return records, summary
