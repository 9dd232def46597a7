"""Loading causal language models and tokenizers from a Hub id or a local directory, with optional LoRA.

Every stage of the pipeline (fine-tuning, unlearning, evaluation) loads its model through these two functions,
so a model trained here and saved with ``save_pretrained`` is loaded exactly like a Hub checkpoint.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import is_offline_mode
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DType = Literal["auto", "float32", "bfloat16", "float16"]
"""Weight dtype: ``auto`` keeps the dtype recorded in the checkpoint's config (float32 when none is recorded)."""

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA adapter settings (Hu et al. 2022), applied with ``peft``; only the adapter weights are trained.

    Args:
        r: Rank of the low-rank update.
        alpha: Scaling numerator; the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter input.
        target_modules: Names of the linear layers that get an adapter (Llama naming by default).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoraSettings.r must be a positive integer, got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout}.")
        if not self.target_modules:
            raise ValueError(
                "LoraSettings.target_modules is empty; name at least one linear layer, e.g. ['q_proj', 'v_proj']."
            )


def _looks_local(name_or_path: str) -> bool:
    """A path-like string is never a Hub id: absolute, ``./``/``~`` prefixed, existing, or with two or more ``/``
    (Hub ids are ``name`` or ``owner/name``)."""
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") >= 2
        or Path(name_or_path).expanduser().exists()
    )


def _check_local(name_or_path: str, required: tuple[str, ...], what: str) -> None:
    """Fail early with a precise message when a local directory lacks the files ``from_pretrained`` needs."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist (the {what.lower()} loads from model_name_or_path, or from tokenizer_name "
            "when given). Pass "
            "an existing directory written by save_pretrained (the tiny TOFU models under outputs/tofu_tiny/: run "
            "`lit-unlearn quickstart` first), or a Hugging Face Hub id."
        )
    if not path.is_dir():
        raise NotADirectoryError(f"{what} path {str(path)!r} is a file; pass the directory that contains it.")
    if not any((path / name).exists() for name in required):
        present = sorted(p.name for p in path.iterdir())[:10]
        raise FileNotFoundError(
            f"{what} directory {str(path)!r} has none of {list(required)} (it holds {present}). Point at the "
            "directory written by save_pretrained (model: config.json + weights; tokenizer: tokenizer files)."
        )


def _hub_error(name_or_path: str, what: str, error: Exception) -> OSError:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: ask it rather than the environment.
    mode = "HF_HUB_OFFLINE is set, so only the local Hub cache is used. " if is_offline_mode() else ""
    return OSError(
        f"Could not load the {what} {name_or_path!r} ({type(error).__name__}: {error}). No local directory of that "
        f"name exists, so it was looked up as a Hugging Face Hub id. {mode}Either pass a local directory written "
        "by save_pretrained, download the model while online "
        f"(`hf download {name_or_path}`) so it is in the Hub cache, or check the id for typos. "
        "Without any network, use the embedded tiny models: `lit-unlearn quickstart` builds them and the configs of "
        "configs/tofu_tiny/ use them (from Python: lit_unlearn.models.build_tiny_model)."
    )


def tokenizer_source(model_name_or_path: str, tokenizer_name: str | None = None) -> str:
    """Where a model's tokenizer is loaded from: ``tokenizer_name`` when given, else the weights' own location.

    A fine-tuned checkpoint may ship without a tokenizer (TOFU's released Phi-1.5 targets use the base model's); the
    modules and the command line's data-module link both resolve it here.

    Example:
        >>> tokenizer_source("outputs/target")
        'outputs/target'
        >>> tokenizer_source("outputs/target", "outputs/base")
        'outputs/base'
    """
    return tokenizer_name or model_name_or_path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a Hub id or a local directory; set ``pad_token = eos_token`` when there is none.

    Args:
        name_or_path: Hub id (``meta-llama/Llama-3.2-1B-Instruct``) or a directory written by ``save_pretrained``.

    Returns:
        The tokenizer, always with a pad token.

    Raises:
        FileNotFoundError: a local path that does not exist or holds no tokenizer files.
        OSError: a Hub id that cannot be resolved (offline, not cached, or misspelt).
        ValueError: the tokenizer has neither a pad nor an EOS token.
    """
    if _looks_local(name_or_path):
        _check_local(
            name_or_path, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"), "Tokenizer"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        if _looks_local(name_or_path):
            raise
        raise _hub_error(name_or_path, "tokenizer", error) from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer {name_or_path!r} has neither a pad nor an EOS token; add one "
                "(tokenizer.add_special_tokens) and save it again."
            )
        # Padding positions are masked out by the attention mask and -100 labels, so reusing EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    dtype: DType = "auto",
    attn_implementation: str | None = None,
    lora: LoraSettings | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a Hub id or a local directory, optionally wrapped with LoRA adapters.

    Args:
        name_or_path: Hub id or a directory written by ``save_pretrained``.
        dtype: Weight dtype; ``auto`` keeps the checkpoint's own dtype.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``...; ``None`` lets transformers choose.
        lora: When given, freeze the base weights and add trainable LoRA adapters (needs ``peft``).

    Returns:
        The model (a ``peft.PeftModel`` when ``lora`` is given), in eval mode as ``from_pretrained`` returns it;
        Lightning switches it to train mode at the start of ``fit``.

    Raises:
        FileNotFoundError: a local path that does not exist or holds no ``config.json``.
        OSError: a Hub id that cannot be resolved (offline, not cached, or misspelt).
        ValueError: an unknown ``dtype``.
        ImportError: ``lora`` given but ``peft`` is not installed.
    """
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of 'auto', {', '.join(map(repr, _DTYPES))}.")
    if _looks_local(name_or_path):
        _check_local(name_or_path, ("config.json",), "Model")
    kwargs: dict = {"dtype": "auto" if dtype == "auto" else _DTYPES[dtype]}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        if _looks_local(name_or_path):
            raise
        raise _hub_error(name_or_path, "model", error) from error
    if lora is not None:
        model = apply_lora(model, lora)
    return model


def apply_lora(model: PreTrainedModel, lora: LoraSettings) -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters; only adapter weights keep ``requires_grad``.

    Raises:
        ImportError: ``peft`` is not installed.
    """
    try:
        # peft is an optional extra: import it only when LoRA is requested.
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError(
            "LoRA needs the optional dependency peft: pip install 'lit-unlearn[lora]' (or set lora: null)."
        ) from error
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
