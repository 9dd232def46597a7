"""Causal LMs from the Hub or a local directory, LoRA, and the embedded tiny TOFU model."""

from lit_unlearn.models.hub import DType, LoraSettings, apply_lora, load_causal_lm, load_tokenizer

__all__ = ["DType", "LoraSettings", "apply_lora", "load_causal_lm", "load_tokenizer"]
