"""``load_causal_lm`` / ``load_tokenizer``: local directories, dtype, attention, LoRA, and the errors."""

import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoTokenizer

from lit_unlearn.models import LoraSettings, load_causal_lm, load_tokenizer


def test_loads_local_directory(tiny_model_dir: Path) -> None:
    model = load_causal_lm(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert model.config.vocab_size == len(tokenizer)
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token == "<pad>"


@pytest.mark.parametrize(("dtype", "expected"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_dtype_and_attention(tiny_model_dir: Path, dtype: str, expected: torch.dtype) -> None:
    model = load_causal_lm(str(tiny_model_dir), dtype=dtype, attn_implementation="eager")
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.config._attn_implementation == "eager"


def test_unknown_dtype(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown dtype 'float8'.*'bfloat16'"):
        load_causal_lm(str(tiny_model_dir), dtype="float8")


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_missing_local_directory(tmp_path: Path, loader) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*does not exist.*save_pretrained"):
        loader(str(missing))


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_relative_path_is_not_taken_for_a_hub_id(loader) -> None:
    # Two slashes cannot be a Hub id ("owner/name"): the error must be about the directory, not the network.
    with pytest.raises(FileNotFoundError, match="outputs/tofu_tiny/nothing_here"):
        loader("outputs/tofu_tiny/nothing_here")


def test_directory_without_model_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=r"config\.json.*notes\.txt"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_uncached_hub_id_offline(loader, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub read HF_HUB_OFFLINE when it was imported, before conftest set it: force offline mode here so
    # nothing is even attempted over the network. The message must say what to do instead.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"(?s)lit-unlearn-test/no-such-model.*HF_HUB_OFFLINE.*local directory"):
        loader("lit-unlearn-test/no-such-model")


def test_tokenizer_without_pad_gets_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.pad_token_id == loaded.eos_token_id


def test_lora_trains_adapters_only(tiny_model_dir: Path) -> None:
    model = load_causal_lm(str(tiny_model_dir), lora=LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    # 2 layers x 2 target modules x (A, B)
    assert len(trainable) == 8
    assert all("lora_" in name for name in trainable)


def test_lora_without_peft(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'lit-unlearn\[lora\]'"):
        load_causal_lm(str(tiny_model_dir), lora=LoraSettings())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"r": 0}, "r must be a positive"), ({"dropout": 1.0}, "dropout"), ({"target_modules": []}, "target_modules")],
)
def test_lora_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoraSettings(**kwargs)
