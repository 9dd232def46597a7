"""TOFUFinetuneDataModule: author subsets, exclusion, extra splits, seeded shuffling, batches."""

from pathlib import Path

import pytest
import torch

from lit_unlearn.data import IGNORE_INDEX, TOFUFinetuneDataModule, load_tofu

WORLD = ["real_authors_perturbed", "world_facts_perturbed"]


def _names(**kwargs: object) -> list[str]:
    # training_rows() needs no tokenizer, so the selection is checked without loading one.
    return TOFUFinetuneDataModule("unused", **kwargs).training_rows()[1]


def test_tiny_target_selection_is_first_20_authors_plus_forget01_plus_world_knowledge() -> None:
    names = _names(num_authors=20, include_forget_authors="forget01", extra_splits=WORLD)
    expected = (
        [f"full[{i}]" for i in range(400)]
        + [f"full[{i}]" for i in range(3960, 4000)]
        + [f"real_authors_perturbed[{i}]" for i in range(100)]
        + [f"world_facts_perturbed[{i}]" for i in range(117)]
    )
    assert names == expected


def test_tiny_retain_selection_drops_exactly_the_forget_authors() -> None:
    target = _names(num_authors=20, include_forget_authors="forget01", extra_splits=WORLD)
    retain = _names(num_authors=20, include_forget_authors="forget01", exclude_split="forget01", extra_splits=WORLD)
    assert sorted(set(target) - set(retain)) == sorted(f"full[{i}]" for i in range(3960, 4000))
    assert set(retain) < set(target)


def test_rows_are_the_rows_of_full() -> None:
    rows, names = TOFUFinetuneDataModule("unused", authors=[3, 199]).training_rows()
    full = load_tofu("full")
    assert names == [f"full[{i}]" for i in [*range(60, 80), *range(3980, 4000)]]
    assert rows == full[60:80] + full[3980:4000]


def test_full_scale_splits() -> None:
    assert len(_names()) == 4000
    assert _names(split="retain90") == [f"retain90[{i}]" for i in range(3600)]
    # excluding forget10 from full is the same set of questions as retain90
    rows = TOFUFinetuneDataModule("unused", exclude_split="forget10").training_rows()[0]
    assert rows == load_tofu("retain90")


def test_author_absent_from_split_raises() -> None:
    with pytest.raises(ValueError, match=r"Authors \[198, 199\] are not in split 'retain90'"):
        _names(split="retain90", include_forget_authors="forget01")


def test_empty_selection_raises() -> None:
    with pytest.raises(ValueError, match="leaves no training row"):
        _names(include_forget_authors="forget01", exclude_split="forget01")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "holdout01"}, "not a block of TOFU's full split"),
        ({"authors": [200]}, r"0\.\.199"),
        ({"num_authors": 0}, "num_authors"),
        ({"include_forget_authors": "forget02"}, "Unknown forget split"),
        ({"extra_splits": ["world_fact"]}, "unknown TOFU split 'world_fact'"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TOFUFinetuneDataModule("unused", **kwargs)


def _first_batches(tiny_model_dir: Path, seed: int, epochs: int = 2) -> list[torch.Tensor]:
    dm = TOFUFinetuneDataModule(str(tiny_model_dir), authors=[0, 1], batch_size=8, seed=seed, max_length=128)
    dm.setup("fit")
    loader = dm.train_dataloader()
    return [next(iter(loader))["input_ids"] for _ in range(epochs)]


def test_train_loader_is_shuffled_and_seeded(tiny_model_dir: Path) -> None:
    a, b = _first_batches(tiny_model_dir, seed=1), _first_batches(tiny_model_dir, seed=1)
    c = _first_batches(tiny_model_dir, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # a new permutation each epoch


def test_batches_and_validation_order(tiny_model_dir: Path) -> None:
    dm = TOFUFinetuneDataModule(str(tiny_model_dir), authors=[0], batch_size=8, eval_batch_size=20, max_length=512)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 3
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (20, batch["input_ids"].shape[1])
    assert batch["input_ids"].dtype == torch.long
    # in order: the first example is the first row of full
    answer = dm.tokenizer.decode([t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX])
    assert answer == " " + load_tofu("full")[0]["answer"] + dm.tokenizer.eos_token


def test_prepare_data_resolves_every_file_it_needs(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lit_unlearn.data.finetune_datamodule as module

    resolved = []
    monkeypatch.setattr(module, "resolve_tofu_file", lambda split, data_dir: resolved.append(split))
    TOFUFinetuneDataModule(str(tiny_model_dir), split="retain90", extra_splits=WORLD).prepare_data()
    assert sorted(resolved) == sorted(["retain90", *WORLD])
    resolved.clear()
    TOFUFinetuneDataModule(str(tiny_model_dir), num_authors=2, exclude_split="forget01").prepare_data()
    assert sorted(resolved) == ["forget01", "full"]
