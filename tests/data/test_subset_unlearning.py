"""Subset unlearning from a G-effect ranking: exact selections (worked out by hand), the random control, and the
validation of ranking files."""

import csv
import logging
import random
from pathlib import Path

import pytest
from trainers import quiet_trainer

from lit_unlearn.data import TOFUUnlearnDataModule, load_tofu
from lit_unlearn.data.ranking import select_subset, subset_size

QUESTIONS = [row["question"] for row in load_tofu("forget01")]  # 40 rows
KEY = [(i * 17) % 40 for i in range(40)]
"""A permutation of 0..39 over the forget01 rows: row 7 holds 39, row 14 holds 38, ..., row 0 holds 0."""
TOP_10 = [2, 7, 9, 14, 16, 21, 23, 28, 30, 35]
"""The rows holding KEY values 30..39 (39 at row 7, 38 at 14, 37 at 21, 36 at 28, 35 at 35, 34 at 2, 33 at 9, 32 at 16,
31 at 23, 30 at 30)."""
BOTTOM_10 = [0, 5, 12, 17, 19, 24, 26, 31, 33, 38]
"""The rows holding KEY values 0..9 (0 at row 0, 1 at 33, 2 at 26, 3 at 19, 4 at 12, 5 at 5, 6 at 38, 7 at 31, 8 at 24,
9 at 17)."""


def _write(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _ranking(path: Path, retain: list[float], forget: list[float] | None = None, order: list[int] | None = None) -> str:
    """A ranking file in the callback's format (rows in any order: the callback sorts by its first risk)."""
    forget = forget if forget is not None else [-v for v in retain]
    rows = [
        {
            "index": i,
            "question": QUESTIONS[i],
            "g_effect_forget": forget[i],
            "g_effect_retain": retain[i],
            "measurements": 5,
        }
        for i in (order if order is not None else range(40))
    ]
    return _write(path, rows)


def _selected(**kwargs: object) -> list[int]:
    dm = TOFUUnlearnDataModule("unused", forget_split="forget01", **kwargs)
    return dm.forget_rows().indices


def test_top_and_bottom_select_exactly_the_ranked_rows(tmp_path: Path) -> None:
    # Negative retaining G-effects are collateral damage: shift the permutation so both signs occur.
    ranking = _ranking(tmp_path / "r.csv", [k - 20.5 for k in KEY], order=list(reversed(range(40))))
    assert _selected(ranking_file=ranking, subset="top", subset_fraction=0.25) == TOP_10
    assert _selected(ranking_file=ranking, subset="bottom", subset_fraction=0.25) == BOTTOM_10
    # By the forget column (here minus the retain one), top and bottom swap.
    common = {"ranking_file": ranking, "ranking_column": "g_effect_forget", "subset_fraction": 0.25}
    assert _selected(subset="top", **common) == BOTTOM_10
    assert _selected(subset="bottom", **common) == TOP_10
    rows = TOFUUnlearnDataModule(
        "unused", forget_split="forget01", ranking_file=ranking, subset="top", subset_fraction=0.25
    ).forget_rows()
    assert rows.names == [f"forget01[{i}]" for i in TOP_10]
    assert [r["question"] for r in rows.rows] == [QUESTIONS[i] for i in TOP_10]
    assert len(_selected(ranking_file=ranking, subset="top", subset_fraction=1.0)) == 40


def test_a_subset_run_says_which_rows_it_unlearns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ranking = _ranking(tmp_path / "r.csv", [float(k) for k in KEY])
    with caplog.at_level(logging.INFO):
        _selected(ranking_file=ranking, subset="bottom", subset_fraction=0.25)
        _selected(ranking_file=ranking, subset="random", subset_fraction=0.5, subset_seed=3)
    assert f"Unlearning 10 of the 40 forget01 rows: the bottom by g_effect_retain of {ranking}." in caplog.text
    assert "Unlearning 20 of the 40 forget01 rows: a random draw (seed 3)." in caplog.text


def test_a_tie_at_the_cut_goes_to_the_smaller_row(tmp_path: Path) -> None:
    key = list(KEY)
    key[30] = 29  # row 30 (was 30, the 10th largest) now ties with row 37 (29)
    ranking = _ranking(tmp_path / "r.csv", [float(k) for k in key])
    assert _selected(ranking_file=ranking, subset="top", subset_fraction=0.25) == TOP_10
    key[10] = 9  # row 10 (was 10) now ties with row 17 (9, the 10th smallest): the smaller row, 10, is kept
    ranking = _ranking(tmp_path / "r2.csv", [float(k) for k in key])
    expected = sorted([*(i for i in BOTTOM_10 if i != 17), 10])
    assert _selected(ranking_file=ranking, subset="bottom", subset_fraction=0.25) == expected


def test_random_is_seeded_and_ignores_the_ranking_values(tmp_path: Path) -> None:
    ranked = _ranking(tmp_path / "a.csv", [float(k) for k in KEY])
    reversed_values = _ranking(tmp_path / "b.csv", [-float(k) for k in KEY])
    draws = [
        _selected(subset="random", subset_fraction=0.25, subset_seed=3),
        _selected(subset="random", subset_fraction=0.25, subset_seed=3, ranking_file=ranked),
        _selected(subset="random", subset_fraction=0.25, subset_seed=3, ranking_file=reversed_values),
    ]
    assert draws[0] == draws[1] == draws[2]
    assert len(draws[0]) == 10
    assert len(set(draws[0])) == 10
    assert all(0 <= i < 40 for i in draws[0])
    assert draws[0] == sorted(draws[0])
    others = {tuple(_selected(subset="random", subset_fraction=0.25, subset_seed=s)) for s in range(4, 8)}
    assert tuple(draws[0]) not in others
    assert len(others) > 1
    # Neither the top nor the bottom of the ranking: a control, not another ranking.
    assert draws[0] not in (TOP_10, BOTTOM_10)
    assert draws[0] == sorted(random.Random(3).sample(range(40), 10))


def test_subset_size_is_the_floor_of_the_fraction() -> None:
    assert [subset_size(f, 40) for f in (0.25, 0.26, 0.5, 1.0)] == [10, 10, 20, 40]
    assert subset_size(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in binary


def test_the_idk_part_keeps_the_subset_and_the_whole_splits_refusals(tiny_model_dir: Path, tmp_path: Path) -> None:
    ranking = _ranking(tmp_path / "r.csv", [float(k) for k in KEY])
    kwargs = {"forget_split": "forget01", "with_idk": True, "num_authors": 1, "hold_out_retain_eval": False}
    whole = TOFUUnlearnDataModule(str(tiny_model_dir), **kwargs)
    whole.setup("fit")
    dm = TOFUUnlearnDataModule(
        str(tiny_model_dir), ranking_file=ranking, subset="bottom", subset_fraction=0.25, **kwargs
    )
    dm.setup("fit")
    assert len(dm.forget_dataset) == 10
    for item in (dm.forget_dataset[j] for j in range(10)):
        assert item["forget"]["index"] == item["idk"]["index"]
        assert item["forget"]["question"] == item["idk"]["question"] == QUESTIONS[item["forget"]["index"]]
        assert item["idk"] == whole.forget_dataset[item["forget"]["index"]]["idk"]  # same refusal as in the split
    assert sorted(dm.forget_dataset[j]["forget"]["index"] for j in range(10)) == BOTTOM_10
    batch = next(iter(dm.train_dataloader()))[0]
    assert set(batch["forget"]["index"].tolist()) <= set(BOTTOM_10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subset": "top", "subset_fraction": 0.0, "ranking_file": "r.csv"}, r"subset_fraction=0\.0.*in \(0, 1\]"),
        ({"subset": "top", "subset_fraction": 1.5, "ranking_file": "r.csv"}, r"subset_fraction=1\.5"),
        ({"subset": "random", "subset_fraction": None}, "subset_fraction=None"),
        ({"subset": "middle", "subset_fraction": 0.5}, "subset='middle'"),
        ({"subset": "top", "subset_fraction": 0.5}, "set ranking_file"),
        ({"subset_fraction": 0.5}, "set subset"),
        ({"ranking_file": "r.csv"}, "set subset"),
        ({"subset": "top", "subset_fraction": 0.5, "ranking_file": "r.csv", "ranking_column": "index"}, "<risk>"),
    ],
)
def test_bad_subset_options_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TOFUUnlearnDataModule("unused", forget_split="forget01", **kwargs)


def test_ranking_files_that_do_not_fit_the_split_name_file_row_and_fix(tmp_path: Path) -> None:
    good = [float(k) for k in KEY]
    top = {"subset": "top", "subset_fraction": 0.25}

    def fails(path: str, match: str, **kwargs: object) -> None:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            _selected(ranking_file=path, **{**top, **kwargs})

    fails(
        _ranking(tmp_path / "ok.csv", good),
        r"no column 'g_effect_holdout'.*g_effect_forget, g_effect_retain",
        ranking_column="g_effect_holdout",
    )
    fails(str(tmp_path / "missing.csv"), "does not exist")
    # A row of another split: index 40 is not a row of forget01 (rows 0..39).
    rows = [
        {"index": i, "question": QUESTIONS[i % 40], "g_effect_forget": 0.0, "g_effect_retain": 0.0, "measurements": 1}
        for i in range(41)
    ]
    fails(_write(tmp_path / "beyond.csv", rows), r"beyond\.csv, line 42: index 40 is not a row of forget01")
    rows[40]["index"] = "x"
    fails(_write(tmp_path / "text.csv", rows), r"text\.csv, line 42: index 'x'")
    # forget05's first 40 rows: indices in range, questions of other authors.
    forget05 = load_tofu("forget05")
    rows = [
        {
            "index": i,
            "question": forget05[i]["question"],
            "g_effect_forget": 0.0,
            "g_effect_retain": 0.0,
            "measurements": 1,
        }
        for i in range(40)
    ]
    fails(_write(tmp_path / "f05.csv", rows), r"f05\.csv, line 2: the question of row 0 .* another split")
    fails(
        _ranking(tmp_path / "part.csv", good, order=list(range(39))),
        r"1 of the 40 rows of forget01 are not ranked "
        r"\(first: row 39\).*every_n_steps=1",
    )
    fails(_ranking(tmp_path / "twice.csv", good, order=[*range(40), 3]), r"twice\.csv, line 42: row 3 .* ranked twice")
    no_question = [{"index": i, "g_effect_retain": 0.0, "measurements": 1} for i in range(40)]
    fails(_write(tmp_path / "ids.csv", no_question), r"no \['question'\] column")
    # An empty subset: 1% of 40 rows.
    fails(
        _ranking(tmp_path / "ok2.csv", good),
        r"subset_fraction=0\.01 of the 40 rows of forget01 keeps no example.*"
        r"at least 0\.025",
        subset_fraction=0.01,
    )


def test_select_subset_needs_no_data_module() -> None:
    assert select_subset(["a", "b", "c", "d"], "toy", "random", 0.5, seed=0) == sorted(
        random.Random(0).sample(range(4), 2)
    )


def test_a_ranking_written_by_the_callback_selects_its_own_extremes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The workflow end to end: one epoch of GA over forget01 with the objective-side G-effect ranks every forget row;
    the data module then keeps exactly the rows with the largest / smallest values of the chosen column, read here
    from the file with the csv module."""
    import torch

    from callbacks import GEffectCallback
    from lit_unlearn import GradAscent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = {"forget_split": "forget01", "num_authors": 1, "hold_out_retain_eval": False, "max_length": 128}
        module = GradAscent(model_name_or_path=str(tiny_model_dir), lr=1e-3, warmup_epochs=0.0)
        cb = GEffectCallback(per_instance="objective", group_by="none", save_plot=False, output_dir=str(tmp_path))
        trainer = quiet_trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
        trainer.fit(module, datamodule=TOFUUnlearnDataModule(str(tiny_model_dir), batch_size=20, **data))
    finally:
        torch.set_num_threads(threads)
    ranking = tmp_path / "g_effect_ranking.csv"
    with open(ranking, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(40))
    for column in ("g_effect_retain", "g_effect_forget"):
        by_value = sorted(rows, key=lambda r: float(r[column]))
        assert len({float(r[column]) for r in rows}) == 40  # no ties: the cut is unambiguous
        expected = {
            "top": sorted(int(r["index"]) for r in by_value[-10:]),
            "bottom": sorted(int(r["index"]) for r in by_value[:10]),
        }
        for subset, indices in expected.items():
            selected = TOFUUnlearnDataModule(
                str(tiny_model_dir),
                ranking_file=str(ranking),
                ranking_column=column,
                subset=subset,
                subset_fraction=0.25,
                **data,
            ).forget_rows()
            assert selected.indices == indices, (column, subset)
            assert [r["question"] for r in selected.rows] == [QUESTIONS[i] for i in indices]


def test_a_missing_ranking_file_fails_at_construction(tmp_path: Path) -> None:
    # Before any model trains: LightningCLI builds the data module before fitting.
    with pytest.raises(FileNotFoundError, match=r"ranking_file='.*missing\.csv' does not exist.*g_effect_ranking\.csv"):
        TOFUUnlearnDataModule(
            "unused",
            forget_split="forget01",
            subset="top",
            subset_fraction=0.25,
            ranking_file=str(tmp_path / "missing.csv"),
        )


def test_a_local_tofu_folder_without_a_needed_split_fails_at_construction(tmp_path: Path) -> None:
    from lit_unlearn.data.tofu import TOFU_SPLITS

    for split in TOFU_SPLITS:  # every file but the retain split's (existence is checked, not content)
        if split != "retain99":
            (tmp_path / f"{split}.json").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=r"TOFU split 'retain99': .*retain99\.json does not exist"):
        TOFUUnlearnDataModule("unused", forget_split="forget01", data_dir=str(tmp_path))


def test_a_ranking_at_learning_rate_zero_measures_every_row_at_the_target_weights(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    """The README's ranking command: the paper preset with SGD at rate 0 in place of AdamW ranks every forget row once
    and leaves the weights bit for bit as they were (so no row's value depends on when it was seen)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from lit_unlearn.lightning_cli import run_lightning_cli

    sgd = json.dumps({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0}})
    cli = run_lightning_cli(
        ["fit", "--config", str(Path(__file__).parents[2] / "configs" / "tofu_paper" / "tiny_ga.yaml")]
        + [f"--model.model_name_or_path={tiny_model_dir}", f"--data.data_dir={tofu_dir}", "--model.output_dir=null"]
        + ["--model.evaluation.retain_eval_path=null", "--data.max_length=128", "--trainer.max_epochs=1"]
        + ["--model.lr=null", "--model.weight_decay=null", f"--model.optimizer={sgd}"]
        + [f"--trainer.callbacks.output_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
        + ["--trainer.callbacks.save_plot=false", "--trainer.enable_progress_bar=false"]
        + ["--trainer.callbacks.coarse_boundaries=[1]"]  # the fixture model has 2 blocks, the preset names 3
        + ["--data.batch_size=10", "--trainer.accumulate_grad_batches=1"]  # 4 steps: the test stays short
    )
    assert cli.trainer.global_step > 1  # several optimiser steps ran, each at rate 0
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, p), (_, q) in zip(cli.model.model.named_parameters(), initial.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    with open(tmp_path / "g_effect_ranking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["question"] for r in rows) == sorted(QUESTIONS)
    assert {r["measurements"] for r in rows} == {"1"}
