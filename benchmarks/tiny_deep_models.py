"""The deep tiny models of the results benchmark: one target and a retain model per forget split, built through the
model cache (``lit_unlearn.model_cache``), two at a time on one pinned thread each.

The target (configs/tofu_tiny_deep/finetune_target.yaml) knows authors 0-29 and the forget10 authors; the retain
model of forget01/05/10 is configs/tofu_tiny_deep/finetune_retain.yaml with that split's authors excluded. They are
not evaluated here: ``benchmarks/tofu_tiny.py`` evaluates them as references with the same evaluation as every
unlearned model.

Usage::

    python benchmarks/tiny_deep_models.py                       # build what is missing into outputs/tofu_tiny_deep
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from lit_unlearn.data import TOFU_SPLITS
from lit_unlearn.data.tofu import TOFU_DIR_ENV
from lit_unlearn.model_cache import ModelJob, PreparedModel, prepare_models, tofu_fingerprint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tofu_tiny_deep"
FORGET_SPLITS = ("forget01", "forget05", "forget10")


def deep_model_jobs(
    cache_dir: Path, data_dir: str, rebuild: bool = False, splits: Sequence[str] = FORGET_SPLITS
) -> list[ModelJob]:
    """The target and the retain model of each forget split in ``splits``."""
    fingerprint = tofu_fingerprint(data_dir, TOFU_SPLITS)
    target = (CONFIGS / "finetune_target.yaml").read_text(encoding="utf-8")
    retain = (CONFIGS / "finetune_retain.yaml").read_text(encoding="utf-8")
    common = {"cache_dir": str(cache_dir), "data_dir": data_dir, "data_fingerprint": fingerprint}
    common |= {"evaluations": (), "rebuild": rebuild}
    jobs = [ModelJob("target", target, **common)]
    for split in splits:
        overrides = (f"--data.exclude_split={split}",)
        jobs.append(ModelJob(f"retain{split[-2:]}", retain, overrides=overrides, **common))
    return jobs


def build(
    cache_dir: Path, data_dir: str, rebuild: bool = False, workers: int = 2, splits: Sequence[str] = FORGET_SPLITS
) -> dict[str, PreparedModel]:
    """Build every deep model of ``splits`` that the cache does not hold yet."""
    return prepare_models(deep_model_jobs(cache_dir, data_dir, rebuild, splits), workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / "outputs" / "tofu_tiny_deep")
    parser.add_argument("--data-dir", default=os.environ.get(TOFU_DIR_ENV))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--splits", nargs="+", default=list(FORGET_SPLITS), choices=FORGET_SPLITS)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error(f"pass --data-dir or set {TOFU_DIR_ENV}")
    for name, model in build(args.cache_dir, args.data_dir, args.rebuild, args.workers, args.splits).items():
        print(name, model.model_dir, f"fit {model.fit_seconds:.0f} s, eval {model.eval_seconds:.0f} s")


if __name__ == "__main__":
    main()
