"""TOFUUnlearnDataModule: retain pool (hold-out, subset), paired epochs, idk alignment, seeding, Trainer wiring, and
the evaluation item cap linked from the model through the CLI."""

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from trainers import quiet_trainer

from lit_unlearn.data import IGNORE_INDEX, TOFUUnlearnDataModule, idk_answers, load_tofu
from lit_unlearn.data.evaluation import EVAL_SPLITS
from lit_unlearn.lightning_cli import run_lightning_cli


def _retain_names(**kwargs: object) -> list[str]:
    # retain_rows() needs no tokenizer.
    return TOFUUnlearnDataModule("unused", **kwargs).retain_rows()[1]


def test_retain_split_is_derived_from_the_forget_split() -> None:
    assert TOFUUnlearnDataModule("unused", forget_split="forget01").retain_split == "retain99"
    assert TOFUUnlearnDataModule("unused", forget_split="forget05").retain_split == "retain95"
    assert TOFUUnlearnDataModule("unused").retain_split == "retain90"
    assert TOFUUnlearnDataModule("unused", forget_split="forget01", retain_split="retain90").retain_split == "retain90"


def test_retain_split_holding_forget_authors_raises() -> None:
    with pytest.raises(
        ValueError, match=r"retain_split='retain99' holds authors 180\.\.197 of forget_split='forget10'"
    ):
        _retain_names(forget_split="forget10", retain_split="retain99")
    assert len(_retain_names(forget_split="forget01", retain_split="retain90", hold_out_retain_eval=False)) == 3600


def test_hold_out_drops_exactly_the_first_400_rows_of_full() -> None:
    held = _retain_names(forget_split="forget10", hold_out_retain_eval=True)
    kept = _retain_names(forget_split="forget10", hold_out_retain_eval=False)
    assert held == [f"retain90[{i}]" for i in range(400, 3600)]
    assert kept == [f"retain90[{i}]" for i in range(3600)]
    assert len(_retain_names(forget_split="forget01")) == 3960 - 400


def test_held_out_rows_are_the_retain_evaluation_rows() -> None:
    dm = TOFUUnlearnDataModule("unused", forget_split="forget05")
    pool = {(r["question"], r["answer"]) for r in dm.retain_rows()[0]}
    evaluation = {(r["question"], r["answer"]) for r in load_tofu("retain_perturbed")}
    assert not pool & evaluation
    assert len(pool) == 3800 - 400


def test_num_authors_keeps_the_first_authors_of_the_pool() -> None:
    assert _retain_names(num_authors=20, hold_out_retain_eval=False) == [f"retain90[{i}]" for i in range(400)]
    # with the hold-out the pool starts at author 20
    assert _retain_names(num_authors=2, hold_out_retain_eval=True) == [f"retain90[{i}]" for i in range(400, 440)]
    with pytest.raises(ValueError, match=r"num_authors=170 but the retain pool \(retain90 without the held-out"):
        _retain_names(num_authors=170)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forget_split": "forget20"}, "forget_split='forget20'"),
        ({"retain_split": "full"}, "retain_split='full'"),
        ({"num_authors": 0}, "num_authors"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_max_items": 0}, "eval_max_items"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TOFUUnlearnDataModule("unused", **kwargs)


def test_prepare_data_resolves_every_file_it_needs(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lit_unlearn.data.unlearn_datamodule as module

    resolved = []
    monkeypatch.setattr(module, "resolve_tofu_file", lambda split, data_dir: resolved.append(split))
    TOFUUnlearnDataModule(str(tiny_model_dir), forget_split="forget05").prepare_data()
    assert sorted(resolved) == sorted(
        [
            "forget05",
            "retain95",
            "full",
            "forget05_perturbed",
            "retain_perturbed",
            "real_authors_perturbed",
            "world_facts_perturbed",
            "holdout05",
        ]
    )


def test_shipped_refusals() -> None:
    refusals = idk_answers()
    assert len(refusals) >= 40
    assert len(set(refusals)) == len(refusals)


def _datamodule(tiny_model_dir: Path, **kwargs: object) -> TOFUUnlearnDataModule:
    settings = {"forget_split": "forget01", "num_authors": 1, "hold_out_retain_eval": False, "batch_size": 8}
    dm = TOFUUnlearnDataModule(str(tiny_model_dir), **{**settings, **kwargs})
    dm.setup("fit")
    return dm


def _epoch(dm: TOFUUnlearnDataModule) -> list[dict]:
    return [batch for batch, _, _ in dm.train_dataloader()]


def test_epoch_is_one_pass_over_the_forget_set_even_with_a_smaller_retain_pool(tiny_model_dir: Path) -> None:
    # forget01: 40 rows in batches of 16 -> 3 batches; the retain pool (1 author) has only 20 rows.
    dm = _datamodule(tiny_model_dir, batch_size=16)
    loader = dm.train_dataloader()
    iter(loader)
    assert len(loader) == math.ceil(40 / 16) == 3
    batches = [batch for batch, _, _ in loader]
    assert len(batches) == 3
    assert [b["forget"]["input_ids"].shape[0] for b in batches] == [16, 16, 8]
    assert all(b["retain"]["input_ids"].shape[0] == 16 for b in batches)
    # every forget row exactly once per epoch
    forget_ids = sorted(
        tuple(row[row != dm.tokenizer.pad_token_id].tolist()) for b in batches for row in b["forget"]["input_ids"]
    )
    assert forget_ids == sorted(tuple(e["forget"]["input_ids"]) for e in dm.forget_dataset)


def test_larger_retain_pool_does_not_lengthen_the_epoch(tiny_model_dir: Path) -> None:
    dm = _datamodule(tiny_model_dir, num_authors=5, batch_size=8)  # 100 retain rows, 40 forget rows
    assert len(_epoch(dm)) == 5


def test_batch_parts_are_right_padded_long_tensors(tiny_model_dir: Path) -> None:
    dm = _datamodule(tiny_model_dir, with_idk=True)
    batch = _epoch(dm)[0]
    assert set(batch) == {"forget", "retain", "idk"}
    for part in batch.values():
        assert set(part) == {"input_ids", "attention_mask", "labels", "index", "question"}
        tensors = [part[k] for k in ("input_ids", "attention_mask", "labels")]
        assert all(t.dtype == torch.long and t.shape == part["input_ids"].shape for t in tensors)
        assert (part["attention_mask"][:, 0] == 1).all()  # right padding: real tokens first
        assert (part["labels"][part["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert part["index"].dtype == torch.long
        assert part["index"].shape == (part["input_ids"].shape[0],)


def test_every_part_carries_its_rows_file_index_and_question(tiny_model_dir: Path) -> None:
    """The ids the unlearning modules name their forget examples by: row of the split file, and its question."""
    dm = _datamodule(tiny_model_dir, with_idk=True)
    forget_file, retain_file = load_tofu("forget01"), load_tofu("retain99")
    seen = []
    for batch in _epoch(dm):
        assert torch.equal(batch["forget"]["index"], batch["idk"]["index"])
        assert batch["forget"]["question"] == batch["idk"]["question"]
        for i, q in zip(batch["forget"]["index"].tolist(), batch["forget"]["question"], strict=True):
            assert forget_file[i]["question"] == q
            seen.append(i)
        for i, q in zip(batch["retain"]["index"].tolist(), batch["retain"]["question"], strict=True):
            assert retain_file[i]["question"] == q
            assert i < 20  # num_authors=1 without the hold-out: the pool is author 0, rows 0..19 of retain99
    assert sorted(seen) == list(range(40))


def test_idk_part_is_aligned_with_the_forget_part(tiny_model_dir: Path) -> None:
    dm = _datamodule(tiny_model_dir, with_idk=True)
    refusals = set(idk_answers())
    for batch in _epoch(dm):
        forget, idk = batch["forget"], batch["idk"]
        for i in range(forget["input_ids"].shape[0]):
            # same question: the masked prompts have the same length and the same tokens
            n_prompt = int((forget["labels"][i][: forget["attention_mask"][i].sum()] == IGNORE_INDEX).sum())
            assert n_prompt == int((idk["labels"][i][: idk["attention_mask"][i].sum()] == IGNORE_INDEX).sum())
            assert torch.equal(forget["input_ids"][i, :n_prompt], idk["input_ids"][i, :n_prompt])
            answer = idk["labels"][i][idk["labels"][i] != IGNORE_INDEX].tolist()
            assert dm.tokenizer.decode(answer[:-1]).strip() in refusals
            assert answer[-1] == dm.tokenizer.eos_token_id


def test_refusal_draws_are_seeded(tiny_model_dir: Path) -> None:
    dm = TOFUUnlearnDataModule(str(tiny_model_dir), forget_split="forget01", with_idk=True, seed=3)
    forget = dm.forget_rows()[0]
    again = TOFUUnlearnDataModule(str(tiny_model_dir), forget_split="forget01", with_idk=True, seed=3)
    other = TOFUUnlearnDataModule(str(tiny_model_dir), forget_split="forget01", with_idk=True, seed=4)
    assert dm.idk_rows(forget) == again.idk_rows(forget)
    assert dm.idk_rows(forget) != other.idk_rows(forget)
    assert [r["question"] for r in dm.idk_rows(forget)] == [r["question"] for r in forget]
    assert len({r["answer"] for r in dm.idk_rows(forget)}) > 10  # varied, not one refusal for all


def test_shuffles_are_seeded(tiny_model_dir: Path) -> None:
    def two_epochs(seed: int) -> list[torch.Tensor]:
        dm = _datamodule(tiny_model_dir, seed=seed)
        loader = dm.train_dataloader()
        out = []
        for _ in range(2):
            batch = next(iter(loader))[0]
            out += [batch["forget"]["input_ids"], batch["retain"]["input_ids"]]
        return out

    a, b, c = two_epochs(0), two_epochs(0), two_epochs(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[2])  # a new forget permutation each epoch


class _Recorder(LightningModule):
    """Records what ``training_step`` receives; one parameter so the optimiser has something to step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append({name: tuple(part["input_ids"].shape) for name, part in batch.items()})
        return self.weight.square().sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_sees_flat_paired_batches_one_per_forget_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    dm = TOFUUnlearnDataModule(
        str(tiny_model_dir),
        forget_split="forget01",
        num_authors=1,
        hold_out_retain_eval=False,
        with_idk=True,
        batch_size=16,
    )
    model = _Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 2 * 3
    assert all(set(s) == {"forget", "idk", "retain"} for s in model.seen)
    assert [s["forget"][0] for s in model.seen[:3]] == [16, 16, 8]


def test_evaluation_loaders_are_the_tofu_evaluation_sets(tiny_model_dir: Path) -> None:
    dm = TOFUUnlearnDataModule(str(tiny_model_dir), forget_split="forget01", eval_max_items=2, eval_batch_size=2)
    dm.setup("validate")
    loaders = dm.val_dataloader()
    assert isinstance(loaders, dict)
    assert set(loaders) == set(EVAL_SPLITS)
    assert all(len(loader.dataset) == 2 for loader in loaders.values())
    assert set(dm.test_dataloader()) == set(loaders)


FORGET01_EVAL_ROWS = {"forget": 40, "retain": 400, "real_authors": 100, "world_facts": 117, "holdout": 40}
"""Rows of the forget01 evaluation files (forget01_perturbed, retain_perturbed, ..., holdout01)."""


def _eval_rows_through_the_cli(args: list[str]) -> tuple[int | None, dict[str, int]]:
    """The model's evaluation cap and the rows of every evaluation loader of the data module the CLI builds."""
    cli = run_lightning_cli([*args, "--trainer.logger=false"], run=False)
    cli.datamodule.setup("validate")
    rows = {split: len(loader.dataset) for split, loader in cli.datamodule.val_dataloader().items()}
    assert {split: len(loader.dataset) for split, loader in cli.datamodule.test_dataloader().items()} == rows
    return cli.model.eval_settings.max_items, rows


@pytest.mark.parametrize("cap", [50, None])
def test_the_cli_builds_the_evaluation_loaders_with_the_models_item_cap(tiny_model_dir: Path, cap: int | None) -> None:
    args = [
        "--model=lit_unlearn.GradAscent",
        f"--model.model_name_or_path={tiny_model_dir}",
        "--data=lit_unlearn.TOFUUnlearnDataModule",
        "--data.forget_split=forget01",
    ]
    if cap is not None:
        args.append(f"--model.evaluation.max_items={cap}")
    model_cap, rows = _eval_rows_through_the_cli(args)
    assert model_cap == cap
    # Exactly the cap per split, fewer where the split is smaller (forget01 and holdout01 have 40 rows).
    expected = {split: n if cap is None else min(n, cap) for split, n in FORGET01_EVAL_ROWS.items()}
    assert rows == expected
    if cap is not None:
        assert rows == {"forget": 40, "retain": 50, "real_authors": 50, "world_facts": 50, "holdout": 40}


def test_a_shipped_config_with_an_evaluation_block_gets_the_cap_too(tiny_model_dir: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "tofu_tiny" / "grad_ascent.yaml"
    args = ["--config", str(config), f"--model.model_name_or_path={tiny_model_dir}", "--model.evaluation.max_items=3"]
    model_cap, rows = _eval_rows_through_the_cli(args)
    assert model_cap == 3
    assert rows == dict.fromkeys(FORGET01_EVAL_ROWS, 3)
