"""The embedded tiny TOFU model: deterministic, cached, and loadable like any Hub checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.data import encode_pair, load_tofu
from lit_unlearn.models import load_causal_lm, load_tokenizer
from lit_unlearn.models.tiny import SPEC_FILE, TinyLlamaSpec, build_tiny_model

# Small enough that a build is about a second (the tokenizer is trained on the whole TOFU text either way).
SPEC = TinyLlamaSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tofu_dir: Path) -> Path:
    # Module scope runs before conftest's function-scoped LIT_UNLEARN_TOFU_DIR: pass the data directory explicitly.
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", SPEC, data_dir=tofu_dir)


def test_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", SPEC)
    assert (again / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    first = AutoModelForCausalLM.from_pretrained(built).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_seed_changes_weights_not_tokenizer(built: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", TinyLlamaSpec(**{**SPEC.__dict__, "seed": 4}))
    assert (other / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    a = AutoModelForCausalLM.from_pretrained(built).model.embed_tokens.weight
    b = AutoModelForCausalLM.from_pretrained(other).model.embed_tokens.weight
    assert not torch.equal(a, b)


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", SPEC)
    assert torch.equal(torch.rand(3), expected)


def test_cached_when_spec_matches(built: Path) -> None:
    weights = built / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_model(built, SPEC) == built
    assert weights.stat().st_mtime_ns == stamp


def test_rebuilt_when_spec_differs(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m", SPEC)
    bigger = TinyLlamaSpec(**{**SPEC.__dict__, "hidden_size": 48})
    build_tiny_model(path, bigger)
    assert AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 48
    assert json.loads((path / SPEC_FILE).read_text())["spec"]["hidden_size"] == 48


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.bin").write_bytes(b"\x00")
    with pytest.raises(FileExistsError, match=r"not written by build_tiny_model"):
        build_tiny_model(tmp_path, SPEC)
    assert (tmp_path / "precious.bin").exists()


def test_round_trip(built: Path, tofu_dir: Path) -> None:
    tokenizer = load_tokenizer(str(built))
    model = load_causal_lm(str(built))
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 1, 64)
    assert config.vocab_size == len(tokenizer) == 512
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    # Same tokenizer through the plain transformers entry point: nothing project-specific is needed to load it.
    assert AutoTokenizer.from_pretrained(built)("Hello")["input_ids"] == tokenizer("Hello")["input_ids"]

    row = load_tofu("full", tofu_dir)[0]
    ids = tokenizer(row["answer"])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # prepended by the post-processor, like Llama's tokenizer
    assert tokenizer.decode(ids, skip_special_tokens=True) == row["answer"]
    pair = encode_pair(tokenizer, row["question"], row["answer"], "qa")
    logits = model(input_ids=torch.tensor([pair["input_ids"]])).logits
    assert logits.shape == (1, len(pair["input_ids"]), 512)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 100}, "vocab_size=100 is too small"),
        ({"hidden_size": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, "not divisible by num_kv_heads"),
        ({"num_layers": 0}, "num_layers must be positive"),
    ],
)
def test_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TinyLlamaSpec(**kwargs)
