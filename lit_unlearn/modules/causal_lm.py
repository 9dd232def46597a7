"""``CausalLMModule``: what every lit-unlearn LightningModule shares around a Hugging Face causal LM.

Loading the model and its tokenizer, the TOFU evaluation loops, the default AdamW (or an injected optimiser) over the
trainable parameters, and saving a ``from_pretrained``-loadable directory when ``fit`` ends.
"""

import copy
from collections.abc import Iterable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch.optim import Optimizer
from typing_extensions import override

from lit_unlearn.eval.mixin import TOFUEvalMixin
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.models import DType, LoraSettings, load_causal_lm, load_tokenizer


class CausalLMModule(TOFUEvalMixin, LightningModule):
    """Base of :class:`~lit_unlearn.modules.finetune.Finetune` and every unlearning objective.

    Subclasses call ``super().__init__(...)`` with these arguments (documented on the subclasses, where the CLI shows
    them) and implement ``training_step``.
    """

    def __init__(
        self,
        model_name_or_path: str,
        lr: float,
        weight_decay: float,
        optimizer: OptimizerCallable | None = None,
        dtype: DType = "auto",
        attn_implementation: str | None = None,
        lora: LoraSettings | None = None,
        output_dir: str | None = None,
        evaluation: EvalSettings | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_factory = optimizer
        self.output_dir = output_dir
        self.eval_settings = evaluation or EvalSettings()
        self.uses_lora = lora is not None
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.model = load_causal_lm(model_name_or_path, dtype=dtype, attn_implementation=attn_implementation, lora=lora)
        # from_pretrained returns eval mode and Lightning (>= 2.2) keeps submodule modes as found at fit start:
        # without this, dropout would silently stay off during training.
        self.model.train()

    def build_optimizer(self, **adamw_kwargs: float | tuple[float, float]) -> Optimizer:
        """The injected optimiser, or AdamW(lr, weight_decay, **adamw_kwargs), over the model's trainable parameters."""
        params: Iterable[torch.nn.Parameter] = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameter; check the lora / trainable settings.")
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **adamw_kwargs)

    @override
    def on_fit_end(self) -> None:
        if not self.output_dir or not self.trainer.is_global_zero:
            return
        model = self.model
        if self.uses_lora:
            # A merged copy loads with AutoModelForCausalLM alone; the training module keeps its adapters.
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(self.output_dir)
        self.tokenizer.save_pretrained(self.output_dir)
