"""Causal LMs from the Hub or a local directory, LoRA, and the embedded tiny TOFU model."""

from lit_unlearn.models.hub import DType, LoraSettings, apply_lora, load_causal_lm, load_tokenizer
from lit_unlearn.models.tiny import TinyLlamaSpec, build_tiny_model, tiny_model_is_built, train_tokenizer

__all__ = [
    "DType",
    "LoraSettings",
    "TinyLlamaSpec",
    "apply_lora",
    "build_tiny_model",
    "load_causal_lm",
    "load_tokenizer",
    "tiny_model_is_built",
    "train_tokenizer",
]
