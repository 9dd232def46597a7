"""Representation misdirection for unlearning (RMU)."""

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import IGNORE_INDEX, Batch
from lit_unlearn.modules.base import ReferenceOutputs, RetainLoss, UnlearningModule

RMURetainLoss = Literal[RetainLoss, "rmu"]
"""RMU's retain regularisers: the shared ones plus ``"rmu"``, activation matching against the frozen model."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama-style models)."""
    layers = model.get_decoder().layers
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"Cannot find the decoder layers of {type(model).__name__}; RMU needs `get_decoder().layers`.")
    return layers


class RMU(UnlearningModule):
    """RMU (Li et al. 2024, WMDP §5): steer forget activations at one layer to a fixed random direction.

    Forget term ``mean_{answer positions} mean_d (h_l(x_f) − c·u)²``; retain term (``retain_loss="rmu"``)
    ``mean (h_l^θ(x_r) − h_l^{θ_o}(x_r))²`` against the frozen model. ``h_l`` is the output of block ``layer``; only
    the parameters matching ``trainable_params`` train.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        layer: Index of the block whose output is steered (original RMU on 7B models: 7).
        trainable_params: Regex over parameter names selecting what trains (original RMU: the MLP down-projections
            of blocks layer−2..layer). With ``lora`` it selects among the adapter parameters only.
        steering_coeff: c, the norm scale of the control vector (TOFU setting: 2).
        control_vector: ``"unit"``: u uniform in [0,1)^d normalised to unit norm (original RMU); ``"uniform"``: not
            normalised (the G-effect paper's code).
        seed: Seed of the control vector, drawn once per run.
        retain_loss: ``"rmu"`` (activation matching, default), or ``"nll"``, ``"kl"``, ``"none"``.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments (``retain_weight`` is the
            original RMU's α, e.g. 100-1200 on WMDP).
    """

    retain_losses = get_args(RMURetainLoss)

    def __init__(
        self,
        model_name_or_path: str,
        layer: int = 7,
        trainable_params: str = r"layers\.(5|6|7)\.mlp\.down_proj\.weight",
        steering_coeff: float = 2.0,
        control_vector: Literal["unit", "uniform"] = "unit",
        seed: int = 0,
        retain_loss: RMURetainLoss = "rmu",
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.layer = layer
        n_layers = len(decoder_layers(self.model))
        if not 0 <= layer < n_layers:
            raise ValueError(f"RMU layer={layer} but the model has {n_layers} blocks (0..{n_layers - 1}).")
        # With LoRA only the adapters may train: the base weights, adapters disabled, are the frozen reference.
        names = [n for n, p in self.model.named_parameters() if p.requires_grad or not self.uses_lora]
        chosen = {n for n in names if re.search(trainable_params, n)}
        if not chosen:
            raise ValueError(
                f"trainable_params={trainable_params!r} matches no parameter that may train; names look like "
                f"{names[:4]}."
            )
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in chosen)
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(self.model.config.hidden_size, generator=generator)
        if control_vector == "unit":
            u = u / u.norm()
        # A buffer, so a resumed run steers toward the same direction.
        self.register_buffer("control", steering_coeff * u)

    @property
    @override
    def needs_reference(self) -> bool:
        return self.retain_loss in ("kl", "rmu")

    def hidden_states(self, model: nn.Module, part: Batch) -> Tensor:
        """Output of block :attr:`layer` for ``part``, (B, T, D), captured with a forward hook."""
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = decoder_layers(model)[self.layer].register_forward_hook(hook)
        try:
            model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
        finally:
            handle.remove()
        return captured[0]

    def _steer_loss(self, hidden: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        # Position t's state predicts label t+1: pair hidden[:, :-1] with the shifted answer mask.
        return losses.rmu(hidden[:, :-1].float(), target, labels[:, 1:] != IGNORE_INDEX)

    @override
    def forget_loss(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> Tensor:
        forget = batch["forget"]
        return self._steer_loss(self.hidden_states(self.model, forget), self.control.float(), forget["labels"])

    @override
    def retain_term(self, retain: Batch, reference_logits: Tensor | None) -> Tensor:
        if self.retain_loss != "rmu":
            return super().retain_term(retain, reference_logits)
        with self.frozen_reference() as reference:
            target = self.hidden_states(reference, retain)[:, :-1].float()
        return self._steer_loss(self.hidden_states(self.model, retain), target, retain["labels"])
