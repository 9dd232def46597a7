"""Shared offline fixtures: the local TOFU copy and a tiny Llama saved with ``save_pretrained``."""

import json
import os
from collections.abc import Callable
from pathlib import Path

# Lightning adds a StreamHandler bound to the sys.stderr of the moment it is first imported. The package imports it
# lazily, so a test under capsys could be that moment; the captured stream closes with the test, and every later
# Lightning log line would end in "--- Logging error ---". Imported here, it binds the session's stream.
import lightning.pytorch  # noqa: F401
import pytest
import torch
import yaml

from lit_unlearn.config_hub import shipped_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# --doctest-modules would import every conftest.py as a module named "conftest"; two of them collide. They hold no
# doctests: pytest still loads them as conftests.
collect_ignore = ["conftest.py", "attacks/conftest.py", "modules/conftest.py"]


def _tofu_dir() -> Path:
    env = os.environ.get("LIT_UNLEARN_TOFU_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "tofu"
    return path.resolve()


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    """The local TOFU copy (``LIT_UNLEARN_TOFU_DIR`` or ``../shared/data/tofu``)."""
    path = _tofu_dir()
    if not (path / "full.json").is_file():
        pytest.fail(f"TOFU data not found at {path}; set LIT_UNLEARN_TOFU_DIR to the folder holding full.json.")
    return path


@pytest.fixture(autouse=True)
def _tofu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the library at the local copy and keep every test off the network."""
    monkeypatch.setenv("LIT_UNLEARN_TOFU_DIR", str(_tofu_dir()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once at import: patch the constant too, or a Hub id would hit the network.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _restore_torch_state() -> None:
    """Tests may change the default dtype or start process groups: undo both (litgpt's conftest)."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _texts(tofu: Path, limit: int) -> list[str]:
    texts = []
    for name in ("full.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        with open(tofu / name) as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                row = json.loads(line)
                texts += [row["question"], row["answer"]]
    return texts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama and a byte-level BPE tokenizer, saved like a Hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_texts(_tofu_dir(), 400), trainer)
    # BOS is prepended by the post-processor so that encode_prompt sees the same ids as a Llama tokenizer would.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture
def short_config(tmp_path: Path) -> Callable[..., str]:
    """Write a shipped tiny config cut to a few steps and a few evaluated rows into ``tmp_path``; returns its path.

    Called as ``short_config("tofu_tiny/wga", max_epochs=1, limit_train_batches=3)`` (trainer overrides).
    """

    def write(name: str, **trainer: int) -> str:
        raw = yaml.safe_load(shipped_config(name).read_text())
        raw["trainer"].update(trainer)
        evaluation = raw["model"]["init_args"].get("evaluation")
        if evaluation is not None:
            evaluation.update(max_items=3, max_new_tokens=4)
        path = tmp_path / f"{name.replace('/', '_')}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    return write
