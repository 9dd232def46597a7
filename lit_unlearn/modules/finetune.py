"""``Finetune``: supervised fine-tuning on answer tokens, which builds TOFU's target and retain models.

TOFU's protocol (Maini et al. 2024, §3) fine-tunes a model on every fictitious author (the *target*) and, separately,
on all authors except the forget set (the *retain* model, the gold standard of unlearning). This module does both;
only the training data differ. With ``tiny`` set, the model is the embedded tiny Llama, built from scratch, so the
whole pipeline runs offline.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.data import load_tofu
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.models import DType, LoraSettings
from lit_unlearn.models.tiny import TinyLlamaSpec, build_tiny_model
from lit_unlearn.modules.causal_lm import AdamWSettings, CausalLMModule, Decay, ScheduleSettings

TINY_CORPUS_SPLITS = (
    "full",
    "retain_perturbed",
    "forget10_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
"""TOFU splits whose text trains the tiny model's tokenizer.

Every fictitious author (``full``), the real authors and the world facts (their perturbed files are supersets of the
plain ones). Paraphrased and perturbed answers are included so that the evaluation texts tokenize into the same merges
as the training texts; without them, rare names in perturbed answers fall back to byte pieces and their per-token NLL
is not comparable with the true answers'.
"""


def tiny_tokenizer_corpus(data_dir: str | Path | None = None) -> list[str]:
    """The texts the tiny model's tokenizer is trained on, in a fixed order (their digest keys the build cache).

    For each row of :data:`TINY_CORPUS_SPLITS`, in file order: the question, the answer, the paraphrased answer (when
    the split has one) and the perturbed answers.

    Args:
        data_dir: Local TOFU directory (``None``: ``LIT_UNLEARN_TOFU_DIR``, then the Hub, as ``load_tofu`` resolves).

    Returns:
        The texts, about 20k strings for TOFU.
    """
    texts: list[str] = []
    for split in TINY_CORPUS_SPLITS:
        for row in load_tofu(split, data_dir):
            texts += [row["question"], row["answer"]]
            if "paraphrased_answer" in row:
                texts.append(row["paraphrased_answer"])
            texts += row.get("perturbed_answer", [])
    return texts


class Finetune(CausalLMModule):
    """Plain SFT: minimise the mean NLL of the answer tokens (prompt tokens are masked with -100).

    The loss is the token mean over the whole batch, like Hugging Face's ``outputs.loss``: logits at position t
    predict the label at t + 1. Logged: ``train/loss`` and ``train/answer_accuracy`` (teacher-forced argmax accuracy
    on answer tokens). Validation on plain QA batches (``TOFUFinetuneDataModule``'s val loader: the training pairs)
    logs ``val/loss``, ``val/answer_accuracy`` and ``val/answer_probability`` (TOFU's probability: exp of minus the
    mean answer NLL of each example, averaged over examples);
    on TOFU evaluation batches it runs the TOFU evaluation (``TOFUEvalMixin``).

    Args:
        model_name_or_path: Hub id or local directory of the model to fine-tune. With ``tiny``, the directory where
            the random-init tiny model is built (or reused when it already holds the same spec); the DataModule's
            tokenizer is linked to this path, so it must be a path that holds (or will hold) a tokenizer.
        tiny: Build the embedded tiny Llama (tokenizer trained on TOFU + random weights) at ``model_name_or_path``
            before loading it. ``None``: load an existing model.
        tiny_data_dir: TOFU directory whose text (:func:`tiny_tokenizer_corpus`) trains the tiny tokenizer
            (``None``: ``LIT_UNLEARN_TOFU_DIR``, then the Hub).
        lr: Peak learning rate of the default AdamW optimiser; ``None``: 2e-5.
        weight_decay: Weight decay of the default AdamW optimiser; ``None``: 0. The tiny recipe uses 0: decay fights
            the memorisation that fine-tuning on TOFU is for.
        betas: Adam betas of the default optimiser; ``None``: (0.9, 0.999).
        optimizer: Replaces the default AdamW when given; receives the trainable parameters. Giving ``lr``,
            ``weight_decay`` or ``betas`` with it is an error.
        warmup_epochs: Length of the linear warm-up in epochs; ``None``: 1 (TOFU's recipe: 1 warm-up epoch of 5).
        warmup_from_zero: Whether the warm-up starts at 0 (the first step does not move the weights, as in
            transformers' schedules) or at ``lr / W``, reaching ``lr`` at step ``W``; ``None``: ``False``.
        decay: Decay after the warm-up, ``"linear"`` or ``"cosine"``; ``None``: ``"cosine"``.
        min_lr_ratio: Where the decay ends, as a fraction of ``lr``; ``None``: 0.1.
        scheduler: Replaces the default warm-up/decay schedule when given; stepped every optimiser step. Giving
            ``warmup_epochs``, ``warmup_from_zero``, ``decay`` or ``min_lr_ratio`` with it is an error.
        dtype: Weights dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        attn_implementation: Attention kernel passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``, ...).
        lora: Train LoRA adapters only (needs ``pip install 'lit-unlearn[lora]'``).
        output_dir: Where the fine-tuned model and tokenizer are saved with ``save_pretrained`` when ``fit`` ends
            (LoRA: the adapters merged into the base weights, so the directory loads as a plain model).
        overwrite_output_dir: Let ``fit`` replace a model already saved in ``output_dir``; ``False``: ``fit`` refuses
            to start there, so an earlier run's model is never lost by running again.
        evaluation: TOFU evaluation settings for ``validate``/``test``.
        gradient_checkpointing: Recompute each decoder block's activations in the backward pass instead of
            storing them (non-reentrant activation checkpointing): activation memory falls from every block's
            to about one block's, for roughly one extra forward pass per step.
        rows_per_forward: Forward each training batch in length-sorted chunks of at most this many rows, each cut to
            its own longest row; ``None``: the whole batch at once. The loss is still the token mean over the whole
            batch (chunk NLL sums over the batch's answer-token count), so loss and gradient are the same up to float
            rounding, while no compute is spent on padding columns: on the tiny TOFU recipe, where world-fact answers
            of a few tokens share batches with author answers of a hundred, padding is 45% of a batch.
        tokenizer_name: Hub id or local directory of the tokenizer when the weights ship without one;
            ``None``: ``model_name_or_path`` (with ``tiny``, the tokenizer built there). The command line links the
            data module's tokenizer to it.
    """

    default_adamw = AdamWSettings(lr=2.0e-5, weight_decay=0.0)
    default_schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=False, decay="cosine", min_lr_ratio=0.1)

    def __init__(
        self,
        model_name_or_path: str,
        tiny: TinyLlamaSpec | None = None,
        tiny_data_dir: str | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_epochs: float | None = None,
        warmup_from_zero: bool | None = None,
        decay: Decay | None = None,
        min_lr_ratio: float | None = None,
        scheduler: LRSchedulerCallable | None = None,
        dtype: DType = "auto",
        attn_implementation: str | None = None,
        lora: LoraSettings | None = None,
        output_dir: str | None = None,
        overwrite_output_dir: bool = False,
        evaluation: EvalSettings | None = None,
        gradient_checkpointing: bool = False,
        rows_per_forward: int | None = None,
        tokenizer_name: str | None = None,
    ) -> None:
        if rows_per_forward is not None and rows_per_forward < 1:
            raise ValueError(f"rows_per_forward must be ≥ 1 or None (the whole batch), got {rows_per_forward}.")
        if tiny is not None:
            # Built here, not in setup(): the CLI instantiates the DataModule, which loads the tokenizer from this
            # same path, right after the model.
            build_tiny_model(model_name_or_path, tiny_tokenizer_corpus(tiny_data_dir), tiny)
        super().__init__(
            model_name_or_path=model_name_or_path,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            optimizer=optimizer,
            warmup_epochs=warmup_epochs,
            warmup_from_zero=warmup_from_zero,
            decay=decay,
            min_lr_ratio=min_lr_ratio,
            scheduler=scheduler,
            dtype=dtype,
            attn_implementation=attn_implementation,
            lora=lora,
            output_dir=output_dir,
            overwrite_output_dir=overwrite_output_dir,
            evaluation=evaluation,
            tokenizer_name=tokenizer_name,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.rows_per_forward = rows_per_forward

    # -------------------------------------------------------------------------------------------------- loss
    def answer_nll(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mean answer-token NLL over the batch (scalar, with gradient) and teacher-forced answer accuracy (scalar,
        detached), forwarding ``rows_per_forward`` rows at a time (see the class docstring)."""
        rows = batch["input_ids"].shape[0]
        chunk = self.rows_per_forward or rows
        if chunk >= rows:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps, mask = losses.token_logps(logits, batch["labels"])  # (B, T-1) each
            with torch.no_grad():
                hits = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
                accuracy = hits.sum() / mask.sum().clamp(min=1)
            return losses.nll(logps, mask), accuracy
        attention = batch["attention_mask"]
        if bool((attention[:, 1:] > attention[:, :-1]).any()):  # a 0 followed by a 1: not right padding
            raise ValueError("rows_per_forward needs right-padded batches (the attention mask ones first, then zeros).")
        lengths = attention.sum(dim=-1)  # (B,)
        order = torch.argsort(lengths, descending=True, stable=True)
        nll_sum, hit_sum, count = 0.0, 0.0, 0
        for start in range(0, rows, chunk):
            idx = order[start : start + chunk]
            width = int(lengths[idx].max())  # right padding: every column past the longest row is padding
            logits = self.model(
                input_ids=batch["input_ids"][idx, :width], attention_mask=batch["attention_mask"][idx, :width]
            ).logits  # (b, width, V)
            labels = batch["labels"][idx, :width]
            logps, mask = losses.token_logps(logits, labels)  # (b, width-1) each
            nll_sum = nll_sum - torch.where(mask, logps, 0.0).sum()
            with torch.no_grad():
                hit_sum = hit_sum + ((logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask).sum()
            count += int(mask.sum())
        if count == 0:
            raise ValueError(
                "Every label of the batch is -100: there is no answer token to train on. Check the label masking "
                "(an answer truncated away by max_length?)."
            )
        return nll_sum / count, hit_sum / count

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, accuracy = self.answer_nll(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Finetune: non-finite loss at global step {self.global_step}. Lower lr or raise warmup_epochs, "
                "or train in float32/bf16 instead of fp16."
            )
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/answer_accuracy", accuracy, prog_bar=True, batch_size=batch_size)
        return loss

    @override
    def validation_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Memorisation metrics on plain QA batches; the TOFU evaluation on evaluation batches (which carry
        ``split``), so the same module validates with ``TOFUFinetuneDataModule`` or ``tofu_eval_dataloaders``."""
        if "split" in batch:
            super().validation_step(batch, batch_idx, dataloader_idx)
            return
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, mask = losses.token_logps(logits, batch["labels"])  # (B, T-1) each
        hits = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
        item_nll = -(logps * mask).sum(-1) / mask.sum(-1)  # (B,) mean answer NLL of each example
        batch_size = batch["input_ids"].shape[0]
        self.log("val/loss", losses.nll(logps, mask), batch_size=batch_size)
        self.log("val/answer_accuracy", hits.sum() / mask.sum(), prog_bar=True, batch_size=batch_size)
        # TOFU's "probability": exp(-mean answer NLL) per example, averaged over examples (batch-size weighted).
        self.log("val/answer_probability", torch.exp(-item_nll).mean(), batch_size=batch_size)

    def risk_losses(self, batches: Sequence[Batch]) -> dict[str, Tensor]:
        """The training risk for ``GEffectCallback``: the mean answer NLL, averaged over the micro-batches."""
        return {"train": torch.stack([self.answer_nll(b)[0] for b in batches]).mean()}
