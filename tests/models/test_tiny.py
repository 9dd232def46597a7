"""The embedded tiny TOFU model: deterministic, cached, and loadable like any Hub checkpoint."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.data import encode_pair, load_tofu
from lit_unlearn.models import load_causal_lm, load_tokenizer
from lit_unlearn.models.tiny import SPEC_FILE, TinyLlamaSpec, build_tiny_model
from lit_unlearn.modules.finetune import tiny_tokenizer_corpus

# Small enough that a build is about a second (the tokenizer is trained on the whole TOFU text either way).
SPEC = TinyLlamaSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)


@pytest.fixture(scope="module")
def texts(tofu_dir: Path) -> list[str]:
    """The tiny recipe's tokenizer corpus (``Finetune(tiny=...)`` builds from exactly this)."""
    return tiny_tokenizer_corpus(tofu_dir)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, SPEC)


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _fingerprint(path: Path) -> dict[str, str]:
    """Content digests of a build: tokenizer.json, config.json (less the library version) and every weight tensor.

    Digests of the parsed JSON and of the raw tensors (name, dtype, shape, bytes in name order), not of the files:
    they change when the model does, not when a library writes the same model with other whitespace or headers.
    """
    config = json.loads((path / "config.json").read_text())
    config.pop("transformers_version")
    state = load_file(path / "model.safetensors")
    weights = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.numpy().tobytes())
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    return {"tokenizer": _sha256(tokenizer), "config": _sha256(config), "weights": weights.hexdigest()}


# Recorded with the build procedure as it was when models/tiny.py still read the TOFU corpus itself (commit 477d1c6):
# moving the corpus to the caller must not change a byte of the tokenizer or the weights.
REFERENCE = {
    "small": {
        "tokenizer": "0f3016c4348a49cf5ba94581e3f35093cae65db5e44f61a427e8eaf5671849c3",
        "config": "d57f92a12a07e82aa48a5820c186f847f714c31e206408a70fe2f002e007193c",
        "weights": "1107690973fd0d34ed72bc9216e11825fc8ee74656153938629813bf591cddb5",
    },
    "default": {
        "tokenizer": "2633582d991d8c0ca46bcb90aa69c6c5000cc7500b12a48f5c594ad519161b68",
        "config": "c540933f67a2c84dce6748c607468b1af8ccbd8f0c50044363123fe83542d3ef",
        "weights": "df9f42e27913e78e977cbc54b3b81c12e85945b40318457662e05bf8e5152724",
    },
}


def test_build_matches_the_reference_build(built: Path) -> None:
    assert _fingerprint(built) == REFERENCE["small"]


def test_shipped_spec_matches_the_reference_build(texts: list[str], tmp_path: Path) -> None:
    """The spec of configs/tofu_tiny/finetune_*.yaml (the defaults): the tiny model every tiny run starts from."""
    path = build_tiny_model(tmp_path / "init", texts, TinyLlamaSpec())
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 2048
    assert _fingerprint(path) == REFERENCE["default"]


def test_build_is_deterministic(built: Path, texts: list[str], tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", texts, SPEC)
    assert (again / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    first = AutoModelForCausalLM.from_pretrained(built).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_seed_changes_weights_not_tokenizer(built: Path, texts: list[str], tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", texts, TinyLlamaSpec(**{**SPEC.__dict__, "seed": 4}))
    assert (other / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    a = AutoModelForCausalLM.from_pretrained(built).model.embed_tokens.weight
    b = AutoModelForCausalLM.from_pretrained(other).model.embed_tokens.weight
    assert not torch.equal(a, b)


def test_build_leaves_global_rng_alone(texts: list[str], tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", texts, SPEC)
    assert torch.equal(torch.rand(3), expected)


def test_cached_when_spec_and_texts_match(built: Path, texts: list[str]) -> None:
    weights = built / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_model(built, list(texts), SPEC) == built
    assert weights.stat().st_mtime_ns == stamp


def test_rebuilt_when_spec_differs(texts: list[str], tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m", texts, SPEC)
    bigger = TinyLlamaSpec(**{**SPEC.__dict__, "hidden_size": 48})
    build_tiny_model(path, texts, bigger)
    assert AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 48
    assert json.loads((path / SPEC_FILE).read_text())["spec"]["hidden_size"] == 48


def test_rebuilt_when_texts_differ(built: Path, texts: list[str], tmp_path: Path) -> None:
    """The texts come from the caller, so the cache records them (by SHA-256): other texts, another tokenizer."""
    path = tmp_path / "m"
    shutil.copytree(built, path)
    build_tiny_model(path, texts[: len(texts) // 2], SPEC)
    record = json.loads((path / SPEC_FILE).read_text())["texts_sha256"]
    assert record != json.loads((built / SPEC_FILE).read_text())["texts_sha256"]
    assert load_tokenizer(str(path)).get_vocab() != load_tokenizer(str(built)).get_vocab()


def test_refuses_to_overwrite_foreign_directory(texts: list[str], tmp_path: Path) -> None:
    (tmp_path / "precious.bin").write_bytes(b"\x00")
    with pytest.raises(FileExistsError, match=r"not written by build_tiny_model"):
        build_tiny_model(tmp_path, texts, SPEC)
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


def test_no_texts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no texts"):
        build_tiny_model(tmp_path / "m", [], SPEC)
    assert not (tmp_path / "m").exists()
