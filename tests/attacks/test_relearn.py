"""The relearning attack: the 50/50 split, the retain control rows, the fine-tuning loop (instrumented: which rows
reach the optimiser), the recovery ratio, stored evaluations, and the attack end to end on tiny models."""

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import lit_unlearn.attacks.relearn as relearn_module
from lit_unlearn.attacks import (
    EvalOptions,
    RelearnSettings,
    recovery_ratio,
    relearn_attack,
    relearn_finetune,
    retain_control_rows,
    split_forget_set,
)
from lit_unlearn.attacks.common import (
    FORGET_METRICS,
    eval_plan,
    evaluate_model,
    load_model,
    stored_evaluation,
)
from lit_unlearn.data import QADataset, encode_pair, load_tofu
from lit_unlearn.data.subsets import FORGET_AUTHORS, author_of, full_indices
from lit_unlearn.eval.summarize import summarize
from lit_unlearn.models import load_tokenizer
from lit_unlearn.report.numbers import fmt_number


@pytest.mark.parametrize("forget_split", list(FORGET_AUTHORS))
def test_split_is_per_author_half_and_half_disjoint_and_seeded(forget_split: str) -> None:
    halves = split_forget_set(forget_split, seed=0)
    rows = load_tofu(forget_split)
    # Independent of the split's own arithmetic: each row's author, from its position in TOFU's full split.
    authors = [author_of(i) for i in full_indices(forget_split, rows, load_tofu("full"))]
    assert [a.author for a in halves.authors] == sorted(set(authors))
    for part in halves.authors:
        own = {i for i, author in enumerate(authors) if author == part.author}
        assert len(part.relearn_rows) == len(part.eval_rows) == len(own) // 2
        assert set(part.relearn_rows) | set(part.eval_rows) == own
        assert not set(part.relearn_rows) & set(part.eval_rows)
    assert sorted(halves.relearn_rows + halves.eval_rows) == list(range(len(rows)))
    assert split_forget_set(forget_split, seed=0) == halves
    other = split_forget_set(forget_split, seed=1)
    assert other.relearn_rows != halves.relearn_rows
    assert all(a.relearn_rows != b.relearn_rows for a, b in zip(halves.authors, other.authors, strict=True))


def test_retain_control_rows_avoid_the_evaluated_retain_rows() -> None:
    picked = retain_control_rows("forget01", 20, seed=0)
    assert len(set(picked)) == 20
    assert list(picked) == sorted(picked)
    retain = load_tofu("retain99")
    evaluated = {row["question"] for row in load_tofu("retain_perturbed")}
    assert all(retain[i]["question"] not in evaluated for i in picked)
    assert min(picked) >= 400  # retain_perturbed is the first 400 rows of full (20 authors)
    assert retain_control_rows("forget01", 20, seed=0) == picked
    assert retain_control_rows("forget01", 20, seed=1) != picked


def test_recovery_ratio_by_hand() -> None:
    # The unlearned model's forget probability fell from 0.8 to 0.2; the attack brought it back to 0.5: half of it.
    assert recovery_ratio(0.5, 0.2, 0.8, min_gap=1e-3) == pytest.approx(0.5)
    assert recovery_ratio(0.9, 0.2, 0.8, min_gap=1e-3) == pytest.approx(7 / 6)  # past the target
    assert recovery_ratio(0.1, 0.2, 0.8, min_gap=1e-3) == pytest.approx(-1 / 6)  # further away
    # Truth ratio rose under unlearning (0.4 → 0.7) and the attack lowered it to 0.61: 0.3 of the way back.
    assert recovery_ratio(0.61, 0.7, 0.4, min_gap=1e-3) == pytest.approx(0.3)
    assert recovery_ratio(0.5, 0.2, 0.2005, min_gap=1e-3) is None  # unlearning moved it by less than min_gap
    assert recovery_ratio(0.5, 0.2, 0.2, min_gap=0.0) is None  # not at all: no division by zero
    assert recovery_ratio(None, 0.2, 0.8, min_gap=1e-3) is None
    assert recovery_ratio(float("nan"), 0.2, 0.8, min_gap=1e-3) is None
    with pytest.raises(ValueError, match="min_gap"):
        recovery_ratio(0.5, 0.2, 0.8, min_gap=-1.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [(-0.0, "0"), (0.0, "0"), (0.98, "0.98"), (-4.79e-4, "-4.79e-04"), (None, "–"), (float("nan"), "–")],
)
def test_table_numbers(value: float | None, text: str) -> None:
    # A zero recovery over a negative gap is -0.0, which printed as "-0" in relearn.md.
    assert fmt_number(value) == text


def test_settings_validation() -> None:
    assert RelearnSettings(budgets=(30, 15)).budgets == (0, 15, 30)  # 0 (the model itself) always included, sorted
    with pytest.raises(ValueError, match="budgets"):
        RelearnSettings(budgets=(0, -5))
    with pytest.raises(ValueError, match="budgets"):
        RelearnSettings(budgets=(15, 15))
    with pytest.raises(ValueError, match="no positive step"):
        RelearnSettings(budgets=(0,))
    with pytest.raises(ValueError, match="lr must be positive"):
        RelearnSettings(lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        RelearnSettings(batch_size=0)


def _recorder(seen: list[tuple[int, ...]]) -> Callable:
    """A forward pre-hook that keeps every unpadded input sequence of a forward in train mode (the optimiser's)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training:
            for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
                seen.append(tuple(ids[mask.bool()].tolist()))

    return hook


def _encodings(tokenizer, rows: list[dict], ids: tuple[int, ...]) -> dict[tuple[int, ...], int]:
    return {tuple(encode_pair(tokenizer, rows[i]["question"], rows[i]["answer"])["input_ids"]): i for i in ids}


def test_finetune_feeds_exactly_the_relearn_half(tiny_model_dir: Path) -> None:
    """Instrumented: the sequences the optimiser's forwards see are the relearn rows, each once per epoch, never an
    evaluation row; the loss is the token-mean answer NLL of the batch."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    halves = split_forget_set("forget01", seed=0)
    rows = load_tofu("forget01")
    examples = QADataset([rows[i] for i in halves.relearn_rows], tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(_recorder(seen), with_kwargs=True)
    settings = RelearnSettings(budgets=(1, 10), lr=1e-3, batch_size=4, seed=0)
    states = relearn_finetune(model, examples, halves.relearn_rows, settings, tokenizer.pad_token_id)

    relearn = _encodings(tokenizer, rows, halves.relearn_rows)
    held_out = _encodings(tokenizer, rows, halves.eval_rows)
    assert Counter(seen) == dict.fromkeys(relearn, 2)  # 10 steps × 4 rows = two epochs of the 20 relearn rows
    assert not set(seen) & set(held_out)
    assert [s.steps for s in states] == [1, 10]
    assert states[-1].rows_fed == halves.relearn_rows
    assert (states[0].examples_fed, states[-1].examples_fed) == (4, 40)
    # The first step's loss is the mean NLL over every answer token of its batch, at the initial weights.
    token_nlls = []
    for sequence in seen[:4]:
        labels = encode_pair(tokenizer, rows[relearn[sequence]]["question"], rows[relearn[sequence]]["answer"])[
            "labels"
        ]
        with torch.no_grad():
            logps = torch.log_softmax(initial(input_ids=torch.tensor([sequence])).logits[0].double(), dim=-1)
        token_nlls += [-logps[t - 1, sequence[t]].item() for t in range(1, len(sequence)) if labels[t] != -100]
    assert states[0].train_loss == pytest.approx(sum(token_nlls) / len(token_nlls), abs=1e-5)


def test_one_run_through_the_budgets_equals_a_run_to_the_last(tiny_model_dir: Path) -> None:
    """The schedule is constant, so stopping at 4 steps to evaluate and going on to 8 gives the 8-step model."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = load_tofu("forget01")
    halves = split_forget_set("forget01", seed=0)
    examples = QADataset([rows[i] for i in halves.relearn_rows], tokenizer)
    prompt = torch.tensor([examples[0]["input_ids"]])
    results = []
    for budgets in ((4, 8), (8,)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

        def evaluate_in_between(state: object, model: torch.nn.Module = model) -> None:
            model.eval()
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            model.train()

        settings = RelearnSettings(budgets=budgets, lr=1e-3, batch_size=4, seed=5)
        relearn_finetune(model, examples, halves.relearn_rows, settings, tokenizer.pad_token_id, evaluate_in_between)
        results.append(model.state_dict())
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_stored_evaluations_are_cut_to_the_plan_rows(attack_models: dict[str, Path], tmp_path: Path) -> None:
    """A stored full evaluation cut to the held-out half equals evaluating the held-out half; an evaluation lacking
    rows, generated with another budget, or of another forget split is refused."""
    options = EvalOptions(max_new_tokens=4, batch_size=8, max_items=6)
    halves = split_forget_set("forget01", seed=0)
    plan = eval_plan("forget01", options, forget_rows=halves.eval_rows)
    assert plan.indices["forget"] == tuple(i for i in halves.eval_rows if i < 6)
    model, tokenizer = load_model(str(attack_models["target"]), "auto", torch.device("cpu"))
    evaluate_model(model, tokenizer, eval_plan("forget01", options), None, tmp_path / "full", {"model": "target"})
    live = evaluate_model(model, tokenizer, plan, None, None, {})
    cut = stored_evaluation(str(tmp_path / "full"), plan, None)
    assert [r["index"] for r in cut.records["forget"]] == list(plan.indices["forget"])
    assert cut.metrics.num_forget_items == live.metrics.num_forget_items == len(plan.indices["forget"])
    for name in FORGET_METRICS:
        assert cut.metrics.forget_metric(name) == pytest.approx(live.metrics.forget_metric(name), abs=1e-6)
    assert cut.metrics.model_utility == pytest.approx(live.metrics.model_utility, abs=1e-6)
    with pytest.raises(ValueError, match=r"lacks rows \[6, 7"):
        stored_evaluation(str(tmp_path / "full"), eval_plan("forget01", EvalOptions(4, 8, max_items=8)), None)
    with pytest.raises(ValueError, match="max_new_tokens=4"):
        stored_evaluation(str(tmp_path / "full"), eval_plan("forget01", EvalOptions(5, 8, max_items=6)), None)
    with pytest.raises(ValueError, match="evaluation of forget05"):
        stored_evaluation(str(tmp_path / "full"), eval_plan("forget05", options), None)


def test_relearn_attack_end_to_end(
    attack_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole attack on tiny models, with every loaded model instrumented: who trains on what, what is evaluated,
    what the report says."""
    loads: list[tuple[str, list[tuple[int, ...]]]] = []
    load = relearn_module.load_model

    def instrumented(source: str, dtype: str, device: torch.device) -> tuple:
        model, tokenizer = load(source, dtype, device)
        seen: list[tuple[int, ...]] = []
        model.register_forward_pre_hook(_recorder(seen), with_kwargs=True)
        loads.append((source, seen))
        return model, tokenizer

    monkeypatch.setattr(relearn_module, "load_model", instrumented)
    out = tmp_path / "relearn"
    paths = {k: str(v) for k, v in attack_models.items()}
    settings = RelearnSettings(budgets=(5,), lr=1e-3, batch_size=4, seed=6)
    evaluation = EvalOptions(max_new_tokens=4, batch_size=8, max_items=2)
    kwargs = {"target": paths["target"], "retain": paths["retain"], "forget_split": "forget01"}
    kwargs |= {"settings": settings, "evaluation": evaluation, "device": "cpu", "min_gap": 0.0}
    report = relearn_attack(paths["unlearned"], out, **kwargs)

    halves = split_forget_set("forget01", seed=6)
    assert report.halves == halves
    assert (report.seed, report.budgets) == (6, (0, 5))
    # Who trained on what: retain (baseline), target (evaluated only), unlearned (attack), unlearned (control).
    assert [source for source, _ in loads] == [paths["retain"], paths["target"], paths["unlearned"], paths["unlearned"]]
    tokenizer = load_tokenizer(paths["unlearned"])
    forget_rows = load_tofu("forget01")
    relearn = set(_encodings(tokenizer, forget_rows, halves.relearn_rows))
    control = set(_encodings(tokenizer, load_tofu("retain99"), report.control_rows))
    held_out = set(_encodings(tokenizer, forget_rows, halves.eval_rows))
    trained = [Counter(seen) for _, seen in loads]
    assert trained == [dict.fromkeys(relearn, 1), {}, dict.fromkeys(relearn, 1), dict.fromkeys(control, 1)]
    assert not held_out & {s for _, seen in loads for s in seen}
    # What was evaluated: the held-out rows among the first max_items, for every model.
    expected_rows = [i for i in halves.eval_rows if i < 2]
    assert expected_rows == [0, 1]
    folders = sorted(p.parent for p in (out / "evals").rglob("eval_items.json"))
    assert [f.name for f in folders] == sorted(
        ["retain", "retain_baseline_5", "target", "unlearned", "attack_5", "retain_control_5"]
    )
    for folder in folders:
        items = json.loads((folder / "eval_items.json").read_text())
        assert [r["index"] for r in items["splits"]["forget"]] == expected_rows, folder.name
    # Forget quality is against the retain model's records on the same rows.
    assert report.retain.forget_quality == 1.0
    reference = summarize(out / "evals" / "target", out / "evals" / "retain")["forget_quality"]
    assert report.target.forget_quality == pytest.approx(reference)
    # The arms, their rows and their recovery ratios.
    arms = {arm.name: arm for arm in report.arms}
    assert list(arms) == ["attack", "retain_control", "retain_baseline"]
    assert arms["attack"].rows_fed == arms["retain_baseline"].rows_fed == halves.relearn_rows
    assert arms["retain_control"].rows_fed == report.control_rows
    assert arms["attack"].points[0].metrics == report.unlearned
    assert arms["retain_baseline"].points[0].metrics == report.retain
    for arm in report.arms:
        assert [p.steps for p in arm.points] == [0, 5]
        assert arm.points[1].metrics != arm.points[0].metrics  # fine-tuning moved the model
        for p in arm.points:
            for name in FORGET_METRICS:
                expected = recovery_ratio(
                    p.metrics.forget_metric(name),
                    report.unlearned.forget_metric(name),
                    report.target.forget_metric(name),
                    0.0,
                )
                assert p.recovery[name] == pytest.approx(expected)
    # The written report names the seed, the budgets and the split.
    saved = json.loads((out / "relearn.json").read_text())
    assert (saved["seed"], saved["budgets"]) == (6, [0, 5])
    assert saved["halves"]["relearn_rows"] == list(halves.relearn_rows)
    assert saved["halves"]["eval_rows"] == list(halves.eval_rows)
    assert saved["settings"]["lr"] == 1e-3
    markdown = (out / "relearn.md").read_text()
    assert "Seed 6; budgets 0, 5 optimiser steps" in markdown
    # The evaluation cap keeps 2 of the held-out half's rows: the report says so once.
    assert report.unlearned.num_forget_items == 2
    assert f"evaluated on 2 of the {len(halves.eval_rows)} rows of the other half (forget quality" in markdown
    # A second run into the same folder is refused before any model is loaded.
    before = len(loads)
    with pytest.raises(FileExistsError, match="--output-dir"):
        relearn_attack(paths["unlearned"], out, **kwargs)
    assert len(loads) == before

    # The target and retain models given as their stored evaluations (here: this run's): the same numbers, the same
    # (seeded, deterministic) attack, and the retain baseline reported as not run.
    again = relearn_attack(
        paths["unlearned"],
        tmp_path / "from_evals",
        target_eval=str(out / "evals" / "target"),
        retain_eval=str(out / "evals" / "retain"),
        forget_split="forget01",
        settings=settings,
        evaluation=evaluation,
        device="cpu",
        min_gap=0.0,
    )
    assert (again.target, again.retain, again.unlearned) == (report.target, report.retain, report.unlearned)
    assert [arm.name for arm in again.arms] == ["attack", "retain_control"]
    assert again.arms[0].points[1].metrics == arms["attack"].points[1].metrics
    assert len(again.notes) == 1
    assert again.notes[0].startswith("retain baseline not run")
