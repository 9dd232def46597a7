"""Representation misdirection for unlearning (RMU)."""

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import IGNORE_INDEX, Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule

RMURetainLoss = Literal[RetainLoss, "rmu"]
"""RMU's retain regularisers: the shared ones plus ``"rmu"``, activation matching against the frozen model."""

LayerIndex = Literal["block", "hidden_states"]
"""How RMU's ``layer`` counts: ``"block"``, the output of transformer block ``layer`` (0-based); ``"hidden_states"``,
Hugging Face's ``output_hidden_states`` index (0 the embedding output, l the output of block l − 1, the last index
the output of the final norm), the G-effect paper's ``rmu_<l>``. Block ``l`` is hidden-states index ``l + 1`` for
every block but the last, whose output the hidden states only hold after the final norm."""

ControlVector = Literal["unit", "uniform"]
"""RMU's control direction u: ``"unit"``, uniform in [0,1)^d normalised to unit norm (original RMU); ``"uniform"``,
the same draw unnormalised (the G-effect paper's code), so the target ``c·u`` has norm ≈ ``c·√(d/3)``."""

_FINAL_NORMS = ("norm", "final_layernorm", "ln_f")
"""Attribute names of the final norm on a Hugging Face decoder (Llama-style, Phi, GPT-2-style)."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama-style models)."""
    layers = model.get_decoder().layers
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"Cannot find the decoder layers of {type(model).__name__}; RMU needs `get_decoder().layers`.")
    return layers


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block of a Hugging Face causal LM (the last ``output_hidden_states`` entry)."""
    decoder = model.get_decoder()
    for name in _FINAL_NORMS:
        norm = getattr(decoder, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise TypeError(
        f"Cannot find the final norm of {type(model).__name__} (looked for {_FINAL_NORMS} on its decoder); use a "
        "smaller hidden-states index or layer_index='block'."
    )


class RMU(UnlearningModule):
    """RMU (Li et al. 2024, WMDP §5): steer forget activations at one layer to a fixed random direction.

    Forget term ``mean_{answer positions} mean_d (h_l(x_f) − c·u)²``; retain term (``retain_loss="rmu"``)
    ``mean (h_l^θ(x_r) − h_l^{θ_o}(x_r))²`` against the frozen model. ``h_l`` is the output of block ``layer`` (or,
    with ``layer_index="hidden_states"``, Hugging Face's ``hidden_states[layer]``); only the parameters matching
    ``trainable_params`` train.

    The G-effect paper's variant (its code's ``rmu_<l>``): ``layer_index="hidden_states"`` with ``layer=l``,
    ``control_vector="uniform"`` (u ~ U[0,1)^d unnormalised, so ``‖c·u‖ ≈ c·√(d/3)``), ``steering_coeff=2``,
    ``trainable_params=".*"`` (every parameter trains) and ``retain_loss="none"`` (``rmu_<l>_kl``: ``"kl"``). This
    project's ``layer=9`` (block convention) is its ``rmu_10``.

    Per-example share (G-effect callback): a mean over the answer positions of the micro-batch, so forget example b's
    share of L_forget is ``(1/N) Σ_{t ∈ answer(b)} mean_d (h_t,d − c·u_d)²`` with N the answer positions of the whole
    micro-batch.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        layer: Which activation is steered: with ``layer_index="block"``, the output of this block (0-based; original
            RMU on 7B models: 7); with ``"hidden_states"``, this ``output_hidden_states`` index (0..number of blocks).
        layer_index: ``"block"`` (default) or ``"hidden_states"`` (the G-effect paper's convention), see
            :data:`LayerIndex`.
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
        layer_index: LayerIndex = "block",
        trainable_params: str = r"layers\.(5|6|7)\.mlp\.down_proj\.weight",
        steering_coeff: float = 2.0,
        control_vector: ControlVector = "unit",
        seed: int = 0,
        retain_loss: RMURetainLoss = "rmu",
        **kwargs: Any,
    ) -> None:
        if layer_index not in get_args(LayerIndex):
            raise ValueError(f"RMU layer_index={layer_index!r}; choose 'block' or 'hidden_states'.")
        if control_vector not in get_args(ControlVector):
            raise ValueError(
                f"RMU control_vector={control_vector!r}; choose 'unit' (original RMU) or 'uniform' (the G-effect "
                "paper's code)."
            )
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
        self.layer = layer
        self.layer_index = layer_index
        self.control_vector = control_vector
        n_layers = len(decoder_layers(self.model))
        if layer_index == "block" and not 0 <= layer < n_layers:
            raise ValueError(f"RMU layer={layer} but the model has {n_layers} blocks (0..{n_layers - 1}).")
        if layer_index == "hidden_states" and not 0 <= layer <= n_layers:
            raise ValueError(
                f"RMU layer={layer} with layer_index='hidden_states' but the model has {n_layers} blocks, so "
                f"hidden-states indices 0..{n_layers} (e.g. the G-effect paper's rmu_32 exists only for 32 blocks)."
            )
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
        """The steered activation for ``part``, (B, T, D), captured with a hook: the output of block :attr:`layer`,
        or with ``layer_index="hidden_states"`` ``hidden_states[layer]``: the input of block ``layer`` (what Hugging
        Face records before calling it), or the final norm's output for the last index."""
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])

        blocks = decoder_layers(model)
        if self.layer_index == "block":
            handle = blocks[self.layer].register_forward_hook(hook)
        elif self.layer < len(blocks):
            handle = blocks[self.layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            handle = final_norm(model).register_forward_hook(hook)
        try:
            model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
        finally:
            handle.remove()
        return captured[0]

    def _steer_loss(self, hidden: Tensor, target: Tensor, labels: Tensor, per_example: bool = False) -> Tensor:
        # Position t's state predicts label t+1: pair hidden[:, :-1] with the shifted answer mask. losses.rmu computes
        # in float32 (float64 stays float64).
        return losses.rmu(hidden[:, :-1], target, labels[:, 1:] != IGNORE_INDEX, per_example)

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        forget = batch["forget"]
        hidden = self.hidden_states(self.model, forget)
        return ForgetTerm(self._steer_loss(hidden, self.control, forget["labels"], per_example=True))

    @override
    def retain_term(self, retain: Batch, reference_logits: Tensor | None) -> Tensor:
        if self.retain_loss != "rmu":
            return super().retain_term(retain, reference_logits)
        with self.frozen_reference() as reference:
            target = self.hidden_states(reference, retain)[:, :-1]
        return self._steer_loss(self.hidden_states(self.model, retain), target, retain["labels"])
