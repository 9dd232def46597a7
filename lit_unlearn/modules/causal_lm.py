"""``CausalLMModule``: what every lit-unlearn LightningModule shares around a Hugging Face causal LM.

Loading the model and its tokenizer, the TOFU evaluation loops, the optimiser and its learning-rate schedule, and
saving a ``from_pretrained``-loadable directory when ``fit`` ends.

Fine-tuning and unlearning share one set of optimisation options. The default optimiser is AdamW
(:class:`AdamWSettings`: ``lr``, ``weight_decay``, ``betas``) and the default schedule a linear warm-up followed by a
linear or cosine decay (:class:`ScheduleSettings`: ``warmup_epochs``, ``warmup_from_zero``, ``decay``,
``min_lr_ratio``). Each module class states its own defaults (:attr:`CausalLMModule.default_adamw`,
:attr:`CausalLMModule.default_schedule`); an option left at ``None`` takes the class default. An injected
``optimizer`` (or ``scheduler``) replaces the default one, so giving it together with an option of the default one is
an error rather than a setting silently ignored.
"""

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForCausalLM, PreTrainedModel
from typing_extensions import override

from lit_unlearn.eval.mixin import TOFUEvalMixin
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.models import DType, LoraSettings, apply_lora, load_causal_lm, load_tokenizer
from lit_unlearn.models.hub import tokenizer_source
from lit_unlearn.models.sharding import fully_shard_causal_lm, mixed_precision_policy, sharding_mesh

Decay = Literal["linear", "cosine"]


@dataclass(frozen=True)
class AdamWSettings:
    """The default optimiser: ``torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)``.

    Args:
        lr: Peak learning rate, > 0 and finite.
        weight_decay: Decoupled weight decay, ≥ 0.
        betas: Adam's moment decay rates, each in [0, 1).

    Raises:
        ValueError: a value outside its range, named in the message.
    """

    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be positive and finite, got {self.lr}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}.")
        # YAML gives a list; a tuple keeps the record hashable and equal to AdamW's own param-group value.
        object.__setattr__(self, "betas", tuple(self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}.")


@dataclass(frozen=True)
class ScheduleSettings:
    """The default learning-rate schedule: linear warm-up, then a linear or cosine decay to ``min_lr_ratio · lr``.

    With ``T`` optimiser steps in the run and ``W = min(T, ceil(warmup_epochs · T / max_epochs))`` warm-up steps, the
    learning rate of optimiser step ``s`` (0-based) is ``lr`` times :meth:`factor`:

    * warm-up, ``s < W``: ``s / W`` with ``warmup_from_zero`` (the first step runs at 0, as in transformers'
      ``get_*_schedule_with_warmup``; the TOFU and G-effect code), else ``(s + 1) / W`` (the first step runs at
      ``lr / W``, the W-th at ``lr``);
    * decay, ``s ≥ W``: with ``m = min_lr_ratio`` and ``p = min(1, (s − W) / max(1, T − W))``, ``linear``:
      ``m + (1 − m) · max(0, T − s) / max(1, T − W)``; ``cosine``: ``m + (1 − m) · (1 + cos(π p)) / 2``.

    The TOFU/G-effect unlearning protocol is ``ScheduleSettings(1.0, True, "linear", 0.0)``; the tiny fine-tuning
    recipe (5% warm-up of 16 epochs, cosine to 0.1 · lr) is ``ScheduleSettings(0.8, False, "cosine", 0.1)``.

    Args:
        warmup_epochs: Warm-up length in epochs (fractions allowed), ≥ 0. Without ``max_epochs`` (a ``max_steps``
            run) one epoch means the whole run.
        warmup_from_zero: Whether the warm-up starts at 0 (``s / W``) or one step in (``(s + 1) / W``).
        decay: ``"linear"`` or ``"cosine"`` decay after the warm-up.
        min_lr_ratio: Where the decay ends, as a fraction of ``lr``, in [0, 1].

    Raises:
        ValueError: a value outside its range, named in the message.

    Example:
        >>> schedule = ScheduleSettings(warmup_epochs=1.0, warmup_from_zero=True, decay="linear", min_lr_ratio=0.0)
        >>> schedule.warmup_steps(total=10, epochs=5)
        2
        >>> [schedule.factor(s, total=10, warmup=2) for s in range(10)]
        [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    """

    warmup_epochs: float
    warmup_from_zero: bool
    decay: Decay
    min_lr_ratio: float

    def __post_init__(self) -> None:
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise ValueError(f"warmup_epochs must be a finite number ≥ 0, got {self.warmup_epochs}.")
        if self.decay not in get_args(Decay):
            raise ValueError(f"decay={self.decay!r}; choose one of {get_args(Decay)}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")

    def warmup_steps(self, total: int, epochs: int) -> int:
        """``W``: the warm-up length in optimiser steps of a run of ``total`` steps over ``epochs`` epochs."""
        return min(total, math.ceil(self.warmup_epochs * total / epochs))

    def factor(self, step: int, total: int, warmup: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) as a fraction of the peak ``lr``."""
        if step < warmup:
            return (step if self.warmup_from_zero else step + 1) / max(1, warmup)
        m = self.min_lr_ratio
        if self.decay == "linear":
            return m + (1.0 - m) * max(0, total - step) / max(1, total - warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def scheduler(self, optimizer: Optimizer, total: int, epochs: int) -> LambdaLR:
        """This schedule over ``total`` optimiser steps and ``epochs`` epochs, to be stepped after every step."""
        return LambdaLR(optimizer, partial(self.factor, total=total, warmup=self.warmup_steps(total, epochs)))


_S = TypeVar("_S", AdamWSettings, ScheduleSettings)


def check_output_dir(output_dir: str | None, overwrite: bool, owner: str) -> None:
    """Refuse a ``fit`` whose ``output_dir`` already holds a saved model, unless told to overwrite it.

    Raises:
        FileExistsError: ``output_dir`` holds ``config.json`` and ``overwrite`` is False.
    """
    if output_dir and (Path(output_dir) / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{owner}: output_dir {output_dir!r} already holds a saved model (config.json), which this fit would "
            "replace when it ends. Pass another output_dir, or --model.overwrite_output_dir=true to replace it."
        )


class CausalLMModule(TOFUEvalMixin, LightningModule):
    """Base of :class:`~lit_unlearn.modules.finetune.Finetune` and every unlearning objective.

    Subclasses call ``super().__init__(...)`` with these arguments (documented on the subclasses, where the CLI shows
    them; ``tokenizer_name=None`` loads the tokenizer from ``model_name_or_path``), set
    :attr:`default_adamw` and :attr:`default_schedule`, and implement ``training_step``.

    Raises:
        ValueError: an option of the default optimiser (``lr``, ``weight_decay``, ``betas``) given together with
            ``optimizer``, or one of the default schedule (``warmup_epochs``, ``warmup_from_zero``, ``decay``,
            ``min_lr_ratio``) together with ``scheduler``; or a value out of range.
    """

    default_adamw: ClassVar[AdamWSettings]
    """The AdamW settings used for the options left at ``None``."""
    default_schedule: ClassVar[ScheduleSettings]
    """The schedule settings used for the options left at ``None``."""

    def __init__(
        self,
        model_name_or_path: str,
        lr: float | None,
        weight_decay: float | None,
        betas: tuple[float, float] | None,
        optimizer: OptimizerCallable | None,
        warmup_epochs: float | None,
        warmup_from_zero: bool | None,
        decay: Decay | None,
        min_lr_ratio: float | None,
        scheduler: LRSchedulerCallable | None,
        dtype: DType = "auto",
        attn_implementation: str | None = None,
        lora: LoraSettings | None = None,
        output_dir: str | None = None,
        evaluation: EvalSettings | None = None,
        tokenizer_name: str | None = None,
        gradient_checkpointing: bool = False,
        overwrite_output_dir: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.adamw: AdamWSettings | None = _settings(
            name, self.default_adamw, "optimizer", optimizer, lr=lr, weight_decay=weight_decay, betas=betas
        )
        """The default optimiser's settings; ``None`` when ``optimizer`` replaces it."""
        self.schedule: ScheduleSettings | None = _settings(
            name,
            self.default_schedule,
            "scheduler",
            scheduler,
            warmup_epochs=warmup_epochs,
            warmup_from_zero=warmup_from_zero,
            decay=decay,
            min_lr_ratio=min_lr_ratio,
        )
        """The default schedule's settings; ``None`` when ``scheduler`` replaces it."""
        if output_dir and Path(output_dir).exists() and not Path(output_dir).is_dir():
            # save_pretrained would only log an error at the end of training and save nothing.
            raise ValueError(
                f"{name}: output_dir {output_dir!r} is a file; the trained model is saved there as a directory "
                "(save_pretrained). Pass a directory path, new or existing."
            )
        self.output_dir = output_dir
        self.overwrite_output_dir = overwrite_output_dir
        self.eval_settings = evaluation or EvalSettings()
        self.uses_lora = lora is not None
        self.lora_settings = lora
        self.tokenizer = load_tokenizer(tokenizer_source(model_name_or_path, tokenizer_name))
        self.model = load_causal_lm(model_name_or_path, dtype=dtype, attn_implementation=attn_implementation, lora=lora)
        if gradient_checkpointing:
            # Non-reentrant: the checkpointed blocks stay in the autograd graph of their inputs and parameters, so
            # torch.autograd.grad (the G-effect callback) and forward-mode JVPs see through them.
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            # transformers also hooks the embedding to make its output require grad, which only reentrant
            # checkpointing needs (non-reentrant reaches the parameters of a block whose input needs no grad, LoRA's
            # adapters included), and whose requires_grad_ call inside forward breaks forward-mode JVPs.
            self.model.disable_input_require_grads()
        # from_pretrained returns eval mode and Lightning (>= 2.2) keeps submodule modes as found at fit start:
        # without this, dropout would silently stay off during training.
        self.model.train()

    def models_to_shard(self) -> list[nn.Module]:
        """The causal LMs :meth:`configure_model` shards: the trained model (subclasses add their frozen ones)."""
        return [self.model]

    @override
    def configure_model(self) -> None:
        """Shard every model of :meth:`models_to_shard` with FSDP2 when the strategy provides a device mesh.

        Under ``strategy=ModelParallelStrategy(...)`` Lightning sets :attr:`device_mesh` before this hook:
        ``fully_shard`` then wraps each decoder block and the root (:func:`~lit_unlearn.models.sharding.
        fully_shard_causal_lm`), with FSDP2's mixed precision for ``precision="bf16-mixed"`` (bfloat16 compute,
        float32 sharded weights and gradient reduction). Without a mesh (single device, DDP) nothing happens.
        """
        if self.device_mesh is None:
            return
        mesh = sharding_mesh(self.device_mesh)
        policy = mixed_precision_policy(str(self.trainer.precision))
        for model in self.models_to_shard():
            fully_shard_causal_lm(model, mesh, policy)

    @override
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """The optimiser over the model's trainable parameters and its schedule, stepped every optimiser step."""
        params: Iterable[torch.nn.Parameter] = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameter; check the lora / trainable settings.")
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params)
        else:
            adamw = self.adamw
            optimizer = torch.optim.AdamW(params, lr=adamw.lr, betas=adamw.betas, weight_decay=adamw.weight_decay)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            max_epochs = self.trainer.max_epochs
            epochs = max_epochs if max_epochs is not None and max_epochs > 0 else 1
            scheduler = self.schedule.scheduler(optimizer, total, epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_fit_start(self) -> None:
        # Checked when fit starts, not at construction: `validate`/`test` build the module from the same config and
        # save nothing. (The command line checks it before building anything: LitUnlearnCLI.)
        check_output_dir(self.output_dir, self.overwrite_output_dir, type(self).__name__)

    @override
    def on_fit_end(self) -> None:
        if not self.output_dir:
            # Say so: a user who meant to keep the model learns it now, not when looking for it.
            rank_zero_info("No output_dir: the trained model was not saved (--model.output_dir DIR keeps it).")
            return
        if isinstance(self.model, FSDPModule):
            # Every rank takes part in gathering the shards; rank 0 alone receives the full tensors and saves them.
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(self.model, options=options)
            if self.trainer.is_global_zero:
                self._save(self._unsharded_copy(state))
            return
        if not self.trainer.is_global_zero:
            return
        model = self.model
        if self.uses_lora:
            # A merged copy loads with AutoModelForCausalLM alone; the training module keeps its adapters.
            model = copy.deepcopy(model).merge_and_unload()
        self._save(model)

    def _save(self, model: PreTrainedModel) -> None:
        model.save_pretrained(self.output_dir)
        self.tokenizer.save_pretrained(self.output_dir)
        # The one place a fit's product lands: say where, as the evaluation says where it wrote.
        rank_zero_info(
            f"Model and tokenizer saved to {self.output_dir} (AutoModelForCausalLM.from_pretrained loads it)"
        )

    def _unsharded_copy(self, state: dict[str, torch.Tensor]) -> PreTrainedModel:
        """A plain model holding the gathered full ``state`` of the sharded :attr:`model` (LoRA: merged).

        Built on the meta device and filled with the gathered tensors themselves (``assign=True``), so no second
        copy of the weights is allocated; the sharded model's class is FSDP's, which ``save_pretrained`` would record
        in ``config.json`` as the architecture.
        """
        config = self.model.get_base_model().config if self.uses_lora else self.model.config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        if self.uses_lora:
            model = apply_lora(model, self.lora_settings)
        model.load_state_dict(state, assign=True)
        model.tie_weights()
        return model.merge_and_unload() if self.uses_lora else model


def _settings(owner: str, default: _S, replacement: str, injected: object | None, **given: Any) -> _S | None:
    """``default`` updated with the options given (not ``None``); ``None`` when ``injected`` replaces what it sets."""
    given = {key: value for key, value in given.items() if value is not None}
    if injected is None:
        return dataclasses.replace(default, **given)
    if given:
        raise ValueError(
            f"{owner}: the given `{replacement}` replaces the default one, so {', '.join(given)} (options of the "
            f"default {replacement}) would be ignored. Remove them and set the {replacement}'s own arguments in its "
            "init_args."
        )
    return None
