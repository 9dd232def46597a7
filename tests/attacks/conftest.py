"""Fixtures of the attack tests: three distinct tiny models (target, unlearned, retain) saved like Hub models."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM


def _noisy_copy(source: Path, out: Path, seed: int, scale: float) -> Path:
    """``source`` plus Gaussian noise of std ``scale`` on every parameter, saved (with its tokenizer) to ``out``."""
    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="session")
def attack_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``target``, ``unlearned`` and ``retain``: the tiny fixture model and two noisy copies of it, so that every
    metric differs between them."""
    root = tmp_path_factory.mktemp("attack_models")
    return {
        "unlearned": tiny_model_dir,
        "target": _noisy_copy(tiny_model_dir, root / "target", seed=1, scale=0.05),
        "retain": _noisy_copy(tiny_model_dir, root / "retain", seed=2, scale=0.05),
    }


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny models' matrices are so small that torch's intra-op threads cost more than they save (five times
    slower with two threads on a busy two-core machine); restored afterwards, as the CLI's ``--threads`` sets it for
    the whole process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
