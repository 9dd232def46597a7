"""Both attacks on one unlearned model with one call, cached by the weights they attack.

The quickstart and the results benchmark attack every unlearned model the same way: a relearning attack at one
budget and a 4-bit quantization attack. Both are deterministic given the weights, the data and the settings (one
pinned torch thread, seeded splits and shuffles), so their reports are cached under a key made of exactly those: a
rerun on the same weights reuses them instead of spending minutes on evaluations whose numbers cannot change.
"""

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lit_unlearn.attacks.common import EvalOptions
from lit_unlearn.attacks.quantize import REPORT_JSON as QUANTIZE_JSON
from lit_unlearn.attacks.quantize import QuantSpec, quantization_attack
from lit_unlearn.attacks.relearn import REPORT_JSON as RELEARN_JSON
from lit_unlearn.attacks.relearn import RelearnSettings, relearn_attack

SAFETENSORS = "model.safetensors"


@dataclass(frozen=True)
class AttackSuite:
    """The attacks' settings, the same for every model attacked.

    Args:
        relearn: fine-tuning of the relearning attack (its budgets, lr, batch, seed).
        quantize: the quantization grid.
        evaluation: how every model is evaluated.
        forget_split: the forget split attacked.
    """

    relearn: RelearnSettings
    quantize: QuantSpec
    evaluation: EvalOptions
    forget_split: str


@dataclass(frozen=True)
class SuiteResult:
    """The two reports as JSON, where they are, and whether they came from the cache."""

    relearn: dict[str, Any]
    quantize: dict[str, Any]
    out_dir: Path
    reused: bool


def _weights_digest(model_dir: Path) -> str:
    file = model_dir / SAFETENSORS
    if not file.is_file():
        raise FileNotFoundError(f"{model_dir} holds no {SAFETENSORS}; attack a model saved with save_pretrained.")
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def suite_key(
    suite: AttackSuite, unlearned: Path, target: Path, retain: Path, retain_eval: Path, data_fingerprint: str
) -> str:
    """Cache key: the three models' weights, the retain model's evaluation, the data, the settings, the torch build."""
    parts = [
        _weights_digest(unlearned),
        _weights_digest(target),
        _weights_digest(retain),
        hashlib.sha256((retain_eval / "eval_items.json").read_bytes()).hexdigest(),
        data_fingerprint,
        json.dumps(asdict(suite), sort_keys=True, default=str),
        torch.__version__,
        str(torch.get_num_threads()),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def attack_suite(
    suite: AttackSuite,
    unlearned: Path,
    target: Path,
    target_eval: Path,
    retain: Path,
    retain_eval: Path,
    out_dir: Path,
    cache_dir: Path,
    data_dir: str,
    data_fingerprint: str,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Run (or reuse) the relearning and the quantization attack on ``unlearned``; results go to ``out_dir``.

    Args:
        suite: the attacks' settings.
        unlearned: the unlearned model's folder.
        target: the target model's folder (quantized beside the unlearned one).
        target_eval: the target's stored evaluation on the forget split (the relearning attack's target numbers).
        retain: the retain model's folder: the relearning attack's retain-model baseline starts from it.
        retain_eval: the retain model's stored evaluation (forget quality's reference).
        out_dir: where ``relearn/`` and ``quantize/`` are written (must not hold them yet).
        cache_dir: the attacks' cache (``<cache_dir>/<key>/``).
        data_dir: the TOFU folder.
        data_fingerprint: its fingerprint (part of the cache key).
        log: progress lines.

    Returns:
        Both reports, read back from ``out_dir``.
    """
    key = suite_key(suite, unlearned, target, retain, retain_eval, data_fingerprint)
    cached = cache_dir / key
    # Written last: an interrupted run leaves no entry that looks complete. The reports' evaluation paths point into
    # the cache entry, which stays where it is.
    complete = cached / "complete"
    done = complete.is_file()
    if not done:
        shutil.rmtree(cached, ignore_errors=True)
        relearn_attack(
            str(unlearned),
            cached / "relearn",
            target_eval=str(target_eval),
            retain=str(retain),
            forget_split=suite.forget_split,
            settings=suite.relearn,
            evaluation=suite.evaluation,
            data_dir=data_dir,
            dtype="float32",
            device="cpu",
            log=log,
        )
        quantization_attack(
            str(unlearned),
            cached / "quantize",
            suite.quantize,
            target=str(target),
            forget_split=suite.forget_split,
            retain_eval=str(retain_eval),
            evaluation=suite.evaluation,
            data_dir=data_dir,
            dtype="float32",
            device="cpu",
            log=log,
        )
        complete.write_text(key + "\n", encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("relearn", "quantize"):
        shutil.copytree(cached / name, out_dir / name)
    return SuiteResult(
        relearn=json.loads((out_dir / "relearn" / RELEARN_JSON).read_text(encoding="utf-8")),
        quantize=json.loads((out_dir / "quantize" / QUANTIZE_JSON).read_text(encoding="utf-8")),
        out_dir=out_dir,
        reused=done,
    )
