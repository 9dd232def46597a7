"""The embedded tiny TOFU model: a byte-level BPE tokenizer trained on given texts and a small random-init Llama.

No model hub is reachable on the machines this project is developed on, so the default pipeline trains its own
model from scratch. ``build_tiny_model`` writes a directory with ``save_pretrained`` (tokenizer + random weights)
that every later stage loads exactly like a Hub checkpoint; fine-tuning it on TOFU (``Finetune``) then gives the
target and retain models. The tokenizer's texts come from the caller (``Finetune`` passes the TOFU text of
``lit_unlearn.modules.finetune.tiny_tokenizer_corpus``): models load and build models, they never read data sets.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPEC_FILE = "tiny_llama_spec.json"
"""Written into the model directory; the build is reused only when the recorded spec matches exactly."""

RECIPE_VERSION = 1
"""Bump when the build procedure changes, so cached directories are rebuilt (the texts are fingerprinted anyway)."""

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape of the tiny Llama and of its tokenizer.

    The defaults are the tiny-TOFU recipe (2.1M parameters, 1.7M without the input embedding): large enough to
    memorise the ~650 question/answer pairs of the tiny scale in 16 epochs, small enough to train on two CPU cores.
    A narrower model (hidden 128, MLP 384) learned clearly slower per epoch (answer accuracy 0.62 vs 0.75 after 8
    epochs) without being proportionally faster.

    Args:
        vocab_size: Byte-level BPE vocabulary size, special tokens included.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads (``hidden_size`` must be divisible by it).
        num_kv_heads: Key/value heads for grouped-query attention; ``None`` means ``num_heads``.
        intermediate_size: Width of the SwiGLU MLP.
        max_positions: Longest sequence the rotary embedding is configured for.
        tie_word_embeddings: Share the input embedding and the LM head.
        seed: Seed of the weight initialisation (the tokenizer training is deterministic by itself).
    """

    vocab_size: int = 2048
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 512
    max_positions: int = 512
    tie_word_embeddings: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinyLlamaSpec.{name} must be positive, got {getattr(self, name)}.")
        if self.vocab_size < 300:
            raise ValueError(
                f"TinyLlamaSpec.vocab_size={self.vocab_size} is too small: the 256 byte symbols and 3 special "
                "tokens alone need 259 entries; use at least 300."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinyLlamaSpec.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"TinyLlamaSpec.num_heads={self.num_heads} is not divisible by num_kv_heads={kv}.")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, with ``<pad>``, ``<s>`` (prepended) and ``</s>``.

    Args:
        texts: The training texts.
        vocab_size: Vocabulary size, special tokens included (fewer when the texts hold fewer distinct merges).

    Returns:
        A ``PreTrainedTokenizerFast`` whose ids 0, 1, 2 are pad, BOS and EOS.

    Example:
        >>> tokenizer = train_tokenizer(["the cat sat on the mat", "the cat ate"], vocab_size=300)
        >>> tokenizer("the cat")["input_ids"][0] == tokenizer.bos_token_id
        True
        >>> tokenizer.decode(tokenizer("the cat")["input_ids"], skip_special_tokens=True)
        'the cat'
    """
    tok = Tokenizer(models.BPE())
    # No prefix space: encode_answer already puts the space before the first answer word.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # BOS comes from the post-processor, as with Llama tokenizers, so encode_prompt sees it with add_special_tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )


def _texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] and ["a", "bc"] differ
        digest.update(data)
    return digest.hexdigest()


def _record(spec: TinyLlamaSpec, texts: Sequence[str]) -> dict:
    return {"recipe_version": RECIPE_VERSION, "spec": asdict(spec), "texts_sha256": _texts_sha256(texts)}


def _holds(output_dir: Path, record: dict) -> bool:
    path = output_dir / SPEC_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()) == record
    except json.JSONDecodeError:
        return False


def tiny_model_is_built(output_dir: str | Path, texts: Sequence[str], spec: TinyLlamaSpec) -> bool:
    """Whether ``output_dir`` holds a build of exactly ``spec`` from exactly ``texts`` (same recipe version)."""
    return _holds(Path(output_dir), _record(spec, texts))


def build_tiny_model(output_dir: str | Path, texts: Sequence[str], spec: TinyLlamaSpec | None = None) -> Path:
    """Build (or reuse) the tiny model directory: a tokenizer trained on ``texts`` + a random-init ``LlamaForCausalLM``.

    The build is deterministic given ``texts`` and ``spec.seed``. It is cached: a directory that records the same
    spec and texts (by their SHA-256) is returned untouched; one recording anything else is rebuilt. A non-empty
    directory that this function did not write is never overwritten. The directory is written under a temporary name
    and renamed into place, so concurrent builders (e.g. several DDP ranks) never see a half-written model.

    Args:
        output_dir: Where to save; later load it with ``load_causal_lm`` / ``load_tokenizer``.
        texts: The tokenizer's training texts (the tiny TOFU recipe:
            ``lit_unlearn.modules.finetune.tiny_tokenizer_corpus``); their SHA-256, order included, keys the cache.
        spec: Model and tokenizer shape; ``None`` means the default ``TinyLlamaSpec()``.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        ValueError: ``texts`` is empty.
        FileExistsError: ``output_dir`` is a non-empty directory without a tiny-model spec record.
    """
    if not texts:
        raise ValueError("build_tiny_model got no texts to train the tokenizer on; pass tiny_tokenizer_corpus(...).")
    spec = spec or TinyLlamaSpec()
    output_dir = Path(output_dir)
    record = _record(spec, texts)
    if _holds(output_dir, record):
        return output_dir
    if output_dir.exists() and not (output_dir / SPEC_FILE).is_file() and any(output_dir.iterdir()):
        raise FileExistsError(
            f"{str(output_dir)!r} is not empty and was not written by build_tiny_model (no {SPEC_FILE}); refusing "
            "to overwrite it. Choose another directory for the tiny model or delete this one."
        )

    tokenizer = train_tokenizer(texts, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    # fork_rng: seeding must not disturb the caller's RNG stream (e.g. after seed_everything).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp creates 0700; the model directory should be as readable as any other output
    try:
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        (staging / SPEC_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if output_dir.exists():
            if _holds(output_dir, record):  # another process finished the same build meanwhile
                return output_dir
            shutil.rmtree(output_dir)  # an older build of ours (checked above): safe to replace
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir
