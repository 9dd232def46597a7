"""docs/results.md is generated from docs/figures/tofu_tiny.json alone, and its verdicts follow the measured direction.

The first test regenerates the committed page from the committed JSON (no training) and compares them byte for byte;
the others feed the report synthetic results whose direction is known by construction and check each verdict flips
with it.
"""

import json
import math
from pathlib import Path
from typing import Any

import benchmark_scripts
import pytest

from lit_unlearn.data.ranking import select_subset

REPO = Path(__file__).resolve().parents[1]


report = benchmark_scripts.load("tofu_tiny_report")


def test_page_regenerates_from_the_committed_json() -> None:
    result = json.loads((REPO / "docs" / "figures" / "tofu_tiny.json").read_text())
    assert report.render_page(result) == (REPO / "docs" / "results.md").read_text(encoding="utf-8")


def test_json_holds_per_seed_per_step_histories_per_term() -> None:
    result = json.loads((REPO / "docs" / "figures" / "tofu_tiny.json").read_text())
    runs = result["runs"]
    assert {r["spec"]["seed"] for r in runs} == set(result["setup"]["seeds"])
    for run in runs:
        g = run["g_effect"]
        assert len(g["steps"]) >= 2
        for term in ("unlearn", "total"):
            for risk in ("forget", "retain"):
                assert len(g[f"{risk}/{term}/total"]) == len(g["steps"])
        if result["variants"][run["spec"]["variant"]]["form"] != "paper":
            for risk in ("forget", "retain"):
                # The terms add up to what the optimiser applied (linearity of the G-effect in the gradient).
                parts = zip(g[f"{risk}/unlearn/total"], g[f"{risk}/regularizer/total"], strict=True)
                for total, (unlearn, regularizer) in zip(g[f"{risk}/total/total"], parts, strict=True):
                    assert total == pytest.approx(unlearn + regularizer, rel=1e-4, abs=1e-6)
        else:  # no regulariser: the unlearning term is the whole objective
            assert g["forget/unlearn/total"] == g["forget/total/total"]


# ------------------------------------------------------------------------------------ synthetic, known direction
def _run(variant: str, split: str, seed: int, fq: float, mu: float, forget_unlearn: dict[str, list[float]]) -> dict:
    history: dict[str, Any] = {"steps": list(range(len(forget_unlearn["total"])))}
    history |= {f"forget/unlearn/{group}": values for group, values in forget_unlearn.items()}
    summary = {"forget_quality": fq, "model_utility": mu}
    return {
        "spec": {"variant": variant, "split": split, "seed": seed, "lr": 1e-3},
        "summary": summary,
        "g_effect": history,
    }


def _result(kl_better: bool, shallow_largest: bool, ga_grows: bool) -> dict[str, Any]:
    """Two families (GA, WGA) in the three forms on one split, three seeds."""
    variants = {}
    for family in ("GA", "NPO", "WGA", "WTNPO"):
        for form, suffix in (("paper", ""), ("GD", "+GD"), ("KL", "+KL")):
            variants[family + suffix] = {"family": family, "form": form}
    runs = []
    for name, v in variants.items():
        for seed in range(3):
            fq, mu = (0.5, 0.85) if v["family"] in ("WGA", "WTNPO") else (0.05, 0.85)
            if v["form"] == "KL":
                fq, mu = (fq * 2, mu + 0.01) if kl_better else (fq / 2, mu - 0.01)
            big, small = (-2.0, -0.1) if shallow_largest else (-0.1, -2.0)
            growth = [1.0, 1.0, 4.0, 4.0, 9.0, 9.0] if (ga_grows and v["family"] == "GA") else [1.0] * 6
            curve = {"total": [-g for g in growth], "shallow": [big] * 6, "middle": [small] * 6, "deep": [small] * 6}
            runs.append(_run(name, "forget01", seed, fq, mu, curve))
    return {
        "setup": {"forget_splits": ["forget01"], "seeds": [0, 1, 2], "mu_keep": 0.9},
        "references": {"forget01": {"target": {"model_utility": 0.9}, "retain": {"model_utility": 0.9}}},
        "variants": variants,
        "selection": {name: {"lr": 1e-3} for name in variants},
        "runs": runs,
    }


def _verdict(result: dict[str, Any], claim: str) -> str:
    (line,) = [v for v in report.verdicts(result) if claim in v]
    return line


@pytest.mark.parametrize("kl_better", [True, False])
def test_kl_vs_gd_verdict_follows_the_pairs(kl_better: bool) -> None:
    line = _verdict(_result(kl_better, True, True), "KL is a better regulariser")
    # 4 families x 3 seeds, every pair decided the same way: sign test p = 2 / 2**12.
    assert ("than GD: holds." in line) is kl_better
    assert ("than GD: the reverse holds" in line) is (not kl_better)
    assert "p = 4.9e-04" in line


@pytest.mark.parametrize("shallow", [True, False])
def test_shallow_verdict_follows_the_depth_counts(shallow: bool) -> None:
    line = _verdict(_result(True, shallow, True), "Shallow layers are affected most")
    assert ("affected most: holds among the blocks" in line) is shallow
    assert ("affected most: does not hold" in line) is (not shallow)
    counts = report.claim_shallow(_result(True, shallow, True))["counts"]
    assert counts == ({"shallow": 36, "middle": 0, "deep": 0} if shallow else {"shallow": 0, "middle": 36, "deep": 0})


@pytest.mark.parametrize("grows", [True, False])
def test_runaway_verdict_follows_the_ratio(grows: bool) -> None:
    result = _result(True, True, grows)
    # Late third mean |e| 9 over early third 1 for GA when it grows; 1 otherwise, as WGA.
    assert report.claim_runaway(result)["forget01"]["GA"] == (9.0 if grows else 1.0)
    line = _verdict(result, "runaway")
    assert ("than WGA's): holds." in line) is grows
    assert ("than WGA's): does not hold." in line) is (not grows)


def test_runaway_verdict_names_the_splits_when_they_disagree() -> None:
    grows, flat = _result(True, True, True), _result(True, True, False)
    for run in flat["runs"]:
        run["spec"]["split"] = "forget05"
    both = grows | {"runs": grows["runs"] + flat["runs"]}
    both["setup"] = grows["setup"] | {"forget_splits": ["forget01", "forget05"]}
    both["references"] = {split: grows["references"]["forget01"] for split in ("forget01", "forget05")}
    line = _verdict(both, "runaway")
    assert "than WGA's): holds on forget01, not on forget05." in line
    assert "forget01: GA 9 vs WGA 1; forget05: GA 1 vs WGA 1" in line


def test_rate_note_counts_the_collapsed_cells_of_the_larger_splits() -> None:
    result = _result(True, True, True)
    larger = []
    for run in result["runs"]:
        bigger = dict(run, spec=run["spec"] | {"split": "forget05"}, steps=65)
        if run["spec"]["variant"] == "GA":  # utility 0.85 -> 0.3: below half of the target's 0.9
            bigger["summary"] = run["summary"] | {"model_utility": 0.3}
        larger.append(bigger)
    result["runs"] = [run | {"steps": 15} for run in result["runs"]] + larger
    result["setup"]["forget_splits"] = ["forget01", "forget05"]
    result["references"]["forget05"] = result["references"]["forget01"]
    (note, _) = report.rate_note(result)
    assert "forget01: 15, forget05: 65." in note
    assert (
        "1 of the 12 cells of the larger splits keep less than half of the target's model utility: GA (forget05);"
        in note
    )
    assert report.rate_note(_result(True, True, True)) == []  # forget01 alone: nothing to say


def test_trade_off_verdict_reports_a_level_cell_as_a_tie() -> None:
    result = _result(True, True, True)
    for run in result["runs"]:  # the paper form: WGA and WTNPO on GA's and NPO's rung
        if run["spec"]["variant"] in ("WGA", "WTNPO"):
            run["summary"] = {"forget_quality": 0.05, "model_utility": 0.85}
    line = _verdict(result, "best trade-off")
    assert "In 2 of 3 (split, form) cells" in line
    assert "median; above in: forget01 GD, forget01 KL; level with the better of them in: forget01 paper)" in line


def test_trade_off_verdict_breaks_a_forget_quality_tie_by_utility_as_the_rule_does() -> None:
    # The selection rule: at equal forget quality, the higher model utility. WGA on GA's and NPO's rung (0.05) with
    # more utility (0.86 against 0.85) ranks above both.
    result = _result(True, True, True)
    for run in result["runs"]:
        if run["spec"]["variant"] in ("WGA", "WTNPO"):
            run["summary"] = {"forget_quality": 0.05, "model_utility": 0.86}
    line = _verdict(result, "best trade-off")
    assert (
        "best trade-off: holds, 3 of 3 cells (2 of them on forget quality above the utility bar).** In 3 of 3" in line
    )
    assert "In forget01 paper both sides reach the same forget-quality rung, so the rule's tie-break" in line
    assert "decides (0.86 against 0.85: the better of WGA and WTNPO against the better of GA and NPO" in line
    assert "without it" not in line  # 2 of 2 without the tie-break cell: the same word
    for run in result["runs"]:  # WGA+GD and WTNPO+GD now forget nothing: the word rests on the tie-break cell
        if run["spec"]["variant"] in ("WGA+GD", "WTNPO+GD"):
            run["summary"]["forget_quality"] = 1e-6
    line = _verdict(result, "best trade-off")
    headline = (
        'holds in part, 2 of 3 cells (1 of them on forget quality above the utility bar); "does not hold" without'
    )
    assert f"best trade-off: {headline} the tie-break cell.** In 2 of 3 (split, form) cells" in line
    assert 'means over seeds); without it, 1 of 2 cells, which reads "does not hold".' in line


def test_trade_off_verdict_names_cells_the_utility_bar_decides() -> None:
    # GA+KL and NPO+KL forget more but keep under 90% of the target's utility; WGA+KL and WTNPO+KL keep it.
    result = _result(True, True, True)
    for run in result["runs"]:
        if run["spec"]["variant"] in ("GA+KL", "NPO+KL"):
            run["summary"] = {"forget_quality": 1.0, "model_utility": 0.5}
        if run["spec"]["variant"] in ("WGA+KL", "WTNPO+KL"):
            run["summary"] = {"forget_quality": 0.5, "model_utility": 0.86}
    line = _verdict(result, "best trade-off")
    assert "above in: forget01 paper, forget01 GD, forget01 KL" in line
    assert (
        "In forget01 KL only one side keeps 90% of the target's model utility, so the bar decides whatever the forget "
        "quality (median forget quality 0.5 against 1: the better of WGA and WTNPO against the better of GA and NPO)."
    ) in line


@pytest.mark.parametrize(("retain_mu", "said"), [(0.3, True), (0.5, False)])
def test_rate_note_says_where_the_oracle_itself_is_below_the_collapse_bar(retain_mu: float, said: bool) -> None:
    result = _result(True, True, True)
    result["runs"] += [{**r, "spec": {**r["spec"], "split": "forget10"}, "steps": 5} for r in result["runs"]]
    for run in result["runs"]:
        run.setdefault("steps", 2)
    result["references"]["forget10"] = {"target": {"model_utility": 0.9}, "retain": {"model_utility": retain_mu}}
    result["setup"]["forget_splits"] = ["forget01", "forget10"]
    note = " ".join(report.rate_note(result))
    assert "0 of the 12 cells of the larger splits keep less than half" in note
    assert ("On forget10 the retain model itself keeps 0.3, below that bar" in note) is said


def test_shallow_verdict_counts_cells_as_well_as_runs() -> None:
    claim = report.claim_shallow(_result(True, True, True))
    assert (claim["cells"], claim["shallow_cells"]) == (12, 12)
    assert "in 12 of the 12 cells every seed ranks the shallow blocks first" in _verdict(
        _result(True, True, True), "Shallow layers"
    )


def test_trade_off_verdict_counts_cells_where_the_paper_methods_rank_first() -> None:
    result = _result(True, True, True)
    assert report.claim_trade_off(result)["wins"] == 3  # paper, GD and KL forms on forget01
    for run in result["runs"]:  # WGA and WTNPO now forget nothing
        if run["spec"]["variant"].startswith("W"):
            run["summary"]["forget_quality"] = 1e-6
    assert report.claim_trade_off(result)["wins"] == 0
    assert "does not hold" in _verdict(result, "best trade-off")


@pytest.mark.parametrize("predicts", [True, False])
def test_instance_verdict_follows_the_quarters(predicts: bool, tmp_path: Path) -> None:
    # A ranking file as the callback writes it; the quarters are chosen by the data module's own selection.
    values = [0.5, -3.0, 2.0, -1.0, 4.0, 1.0, -2.0, 3.0]
    csv = tmp_path / "g_effect_ranking.csv"
    lines = ["index,question,g_effect_forget,g_effect_retain,measurements"]
    lines += [f"{i},q{i},0.0,{v},1" for i, v in enumerate(values)]
    csv.write_text("\n".join(lines) + "\n")
    questions = [f"q{i}" for i in range(len(values))]
    kept = {q: select_subset(questions, "forget10", q, 0.25, str(csv), seed=1) for q in ("top", "bottom", "random")}
    assert kept["top"] == [4, 7]  # the largest retaining G-effects: the most benign
    assert kept["bottom"] == [1, 6]  # the most negative: the most damaging
    nll = {"bottom": 3.0, "random": 2.0, "top": 1.0} if predicts else {"bottom": 1.0, "random": 2.0, "top": 3.0}
    runs = {
        q: [
            {
                "retain_answer_loss": nll[q] + 0.1 * s,
                "forget_answer_loss": 2 * nll[q],
                "model_utility": 1 / nll[q] + 0.01 * s,
                "forget_quality": 0.1,
                "kept_rows": kept[q],
            }
            for s in range(3)
        ]
        for q in kept
    }
    ranking = [{"index": i, "forget": 0.0, "retain": v} for i, v in enumerate(values)]
    target = {"model_utility": 0.5}  # every quarter keeps more than half of it (MU ≥ 1/3)
    result = {
        "instances": {"ranking_column": "g_effect_retain", "ranking": ranking, "runs": runs},
        "references": {"forget10": {"target": target, "retain": {"model_utility": 0.3}}},
    }
    summary = report.instance_summary(result)
    assert summary["top"]["ranking_mean"] == 3.5
    assert summary["bottom"]["ranking_mean"] == -2.5
    (line,) = report.instance_verdict(result)
    assert line.startswith("- **Does the ranking predict collateral damage? " + ("yes" if predicts else "no"))
    # Model utility, reported beside the pre-registered NLL, falls with the NLL's damage: same verdict here.
    assert f"(order top > random > bottom: {'met' if predicts else 'not met'};" in line
    assert f"every top seed above every bottom seed: {'yes' if predicts else 'no'})" in line
    assert "below half of the target's model utility" not in line
    # The forget NLL (twice the retain NLL here) moves with the retain NLL: the page says the quarters may differ in
    # how far unlearning moved the model, not in its trade-off; the ratio is 0.5 (+ 0.05 s / 2 nll) in each quarter.
    moved = "Forget10 answer NLL falls in the same order" if predicts else "Forget10 answer NLL does not fall"
    assert moved in line
    # Per unit of forgetting, (nll + 0.1) / (2 nll): bottom 0.517 below top 0.55, so the headline says the order
    # reverses; with the bottom quarter's forget NLL equal to its retain NLL (ratio 1) it does not.
    reverses = "on the measure fixed beforehand; per unit of forgetting (retain / forget NLL, not fixed beforehand) "
    reverses += "the bottom quarter costs less than the top (0.52 against 0.55)"
    assert (reverses in line.split("**")[1]) == predicts
    if predicts:
        for run in runs["bottom"]:
            run["forget_answer_loss"] = run["retain_answer_loss"]
        (line,) = report.instance_verdict(result)
        assert line.startswith("- **Does the ranking predict collateral damage? yes.**")
    target["model_utility"] = 0.8  # half is 0.4: only the quarter of NLL 3 (MU 1/3 + 0.01 s) ends below it
    (line,) = report.instance_verdict(result)
    assert f"The {'bottom' if predicts else 'top'} quarter ends below half of the target's model utility" in line
    target["model_utility"] = 3.0
    (line,) = report.instance_verdict(result)
    assert "Every quarter ends below half of the target's model utility" in line


def test_ranking_state_reports_the_correlation_with_the_measured_step() -> None:
    # Four rows measured at steps 0, 0, 1, 1 whose values fall with the step: tied steps share rank 0.5 and 2.5, the
    # values rank 3, 2, 1, 0, so Pearson's r on the ranks is -4 / (2 · √5) = -0.894 (by hand).
    drifting = [{"index": i, "steps": [i // 2], "forget": 0.0, "retain": 4.0 - i} for i in range(4)]
    level = [{"index": i, "steps": [i // 2], "forget": 0.0, "retain": v} for i, v in enumerate([1.0, 2.0, 2.0, 1.0])]
    assert report.spearman([0, 0, 1, 1], [4, 3, 2, 1]) == pytest.approx(-4 / (2 * 5**0.5))
    assert report.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # 1 - 6Σd²/(n(n²-1))
    inst = {"ranking_column": "g_effect_retain", "ranking": level, "ranking_lr": 0.0}
    inst["control_ranking"] = {"lr": 3e-4, "ranking": drifting}
    line = report.ranking_state(inst)
    # Equal values at both steps: no correlation; the control's values fall with the step.
    assert "the step a row was measured at is 0.00 (the step explains little of the order)." in line
    assert "unlearning at lr 0.0003 (the control, also in the JSON) gives -0.89 (a row's value follows when" in line
    assert "every row is measured at the target's" in line
    line = report.ranking_state(inst | {"ranking_lr": 1e-4, "ranking": drifting})  # not frozen: no such claim
    assert "is -0.89 (a row's value follows when it was seen)" in line
    assert "every row is measured at the target's" not in line


def test_shallow_tie_does_not_hold() -> None:
    result = _result(True, True, True)
    for run in result["runs"][::2]:  # half the runs: middle as large as shallow was
        run["g_effect"]["forget/unlearn/middle"] = [-5.0] * 6
    counts = report.claim_shallow(result)["counts"]
    assert counts["shallow"] == counts["middle"] == 18
    assert "affected most: does not hold" in _verdict(result, "Shallow layers are affected most")


def test_kl_vs_gd_pairs_runs_by_seed() -> None:
    result = _result(True, True, True)
    # Drop GA+KL's seed 0: GA+GD's seed 0 must go unpaired, not meet GA+KL's seed 1.
    result["runs"] = [r for r in result["runs"] if not (r["spec"]["variant"] == "GA+KL" and r["spec"]["seed"] == 0)]
    for run in result["runs"]:
        if run["spec"]["variant"] == "GA+KL" and run["spec"]["seed"] == 1:
            run["summary"] = {"forget_quality": 1e-9, "model_utility": 0.1}  # GD dominates this pair only
        if run["spec"]["variant"] == "WGA+KL" and run["spec"]["seed"] == 2:
            run["summary"] = {"forget_quality": 1e-9, "model_utility": 0.99}  # KL keeps more MU, GD forgets more
        # Seed 2 of GA: KL still dominates, but both runs keep under half of the target's 0.9.
        if run["spec"]["variant"] == "GA+KL" and run["spec"]["seed"] == 2:
            run["summary"] = {"forget_quality": 0.1, "model_utility": 0.2}
        if run["spec"]["variant"] == "GA+GD" and run["spec"]["seed"] == 2:
            run["summary"] = {"forget_quality": 0.05, "model_utility": 0.1}
    rows, counts = report.kl_vs_gd_table(result)
    working = counts.pop("decisive, working")
    assert sorted(working)[0].startswith("GD in GA forget01 seed 1 (forget quality 0.05 against 1.0e-09, model utility")
    assert len(working) == 9
    assert sum(w.startswith("KL in ") for w in working) == 8
    assert counts == {
        "KL dominates": 9,
        "GD dominates": 1,
        "KL more MU, GD more FQ": 1,
        "GD more MU, KL more FQ": 0,
        "equal": 0,
        "both collapsed": 1,
        "decisive, both collapsed": 1,  # GA's seed 2: KL dominates, between two collapsed runs
    }
    assert "| GA | forget01 | 0.001 / 0.001 | 1 | 1 | 0 | 0 | 1 |" in rows
    assert "| WGA | forget01 | 0.001 / 0.001 | 2 | 0 | 1 | 0 | 0 |" in rows
    line = _verdict(result, "KL is a better regulariser")
    assert "in 1 KL keeps more model utility and GD reaches higher forget quality, in 0 the reverse" in line
    assert "in 1 of the 11 pairs both runs end below half of the target's model utility" in line
    assert "(sign test on the decisive pairs: p = 0.0215); 1 of the 10 decisive pairs is between two collapsed" in line
    assert "says nothing of the trade-off; the other 9, between working runs: KL 8, GD 1." in line


def test_worker_seconds_counts_each_distinct_run_once() -> None:
    # The selected grid run on forget01 seed 0 is also a seed run: counted once. The instance experiment adds the
    # ranking, its control and the quarters. Hand count: grid 2 runs (3 + 5 s), seed runs 2 more (7 + 11 s; one of
    # the listed three is the grid's lr-1e-3 run again), instances 1 + 1 + 2 runs (13 + 17 + 19 + 23 s).
    brief = {"fit_s": 1.0, "eval_s": 2.0}
    runs = [
        {"spec": {"variant": "GA", "split": "forget01", "lr": 1e-3, "seed": s}, "fit_s": t, "eval_s": 0.0}
        for s, t in ((0, 5.0), (1, 7.0), (2, 11.0))
    ]
    result = {
        "selection": {"GA": {"runs": [brief | {"lr": 1e-4}, {"lr": 1e-3, "fit_s": 5.0, "eval_s": 0.0}]}},
        "runs": runs,
        "instances": {
            "ranking_run": {"fit_s": 13.0, "eval_s": 0.0},
            "control_ranking": {"ranking_run": {"fit_s": 17.0, "eval_s": 0.0}},
            "runs": {"top": [{"fit_s": 19.0, "eval_s": 0.0}], "bottom": [{"fit_s": 23.0, "eval_s": 0.0}]},
        },
        "setup": {"models": {}},
    }
    t = report.worker_seconds(result)
    assert t["count"] == 2 + 2 + 4
    assert t["runs"] == 3 + 5 + 7 + 11 + 13 + 17 + 19 + 23


def test_the_ranking_run_is_frozen_and_its_control_unlearns(tmp_path: Path) -> None:
    # The ranking measures at the target's weights (SGD at rate 0 in place of AdamW); the control measures the same
    # rows while unlearning at the quarters' rate, with the preset's AdamW. A control built frozen would show ρ ≈ 0.
    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    setting = tofu_tiny.Setting(str(tmp_path), "data", "target", {}, 32, 100)

    def args(lr: float) -> list[str]:
        return tofu_tiny.fit_args(tofu_tiny.RunSpec("GA", "forget10", lr, 0, rank=True), setting, tmp_path)

    frozen, control = args(tofu_tiny.RANKING_LR), args(tofu_tiny.INSTANCE_LR)
    sgd = '--model.optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0}}'
    assert sgd in frozen
    assert "--model.lr=null" in frozen
    assert not any(a.startswith("--model.optimizer") for a in control)
    assert f"--model.lr={tofu_tiny.INSTANCE_LR}" in control
    assert "--trainer.callbacks.per_instance=objective" in frozen
    assert "--trainer.callbacks.per_instance=objective" in control


def test_trade_off_verdict_names_cells_ordered_by_utility_alone_and_cells_not_checked() -> None:
    result = _result(True, True, True)
    assert "ordering there is by model utility alone" not in _verdict(result, "best trade-off")  # MU 0.85 ≥ 0.81
    result["runs"] = [r for r in result["runs"] if r["spec"]["variant"] != "WTNPO+KL"]
    for run in result["runs"]:
        if run["spec"]["variant"] in ("GA+GD", "NPO+GD", "WGA+GD", "WTNPO+GD"):
            run["summary"]["model_utility"] = 0.5  # below 90% of the target's 0.9 (no GD cell is kept), above half
    line = _verdict(result, "best trade-off")
    assert "In 1 of 2 (split, form) cells" in line  # paper form won; GD level: all four at MU 0.5
    assert "In forget01 GD no cell of either side keeps 90% of the target's model utility" in line
    assert "Not checked (a cell not run yet): forget01 KL." in line
    assert "Not ordered" not in line


def test_trade_off_verdict_leaves_out_cells_where_every_method_collapsed() -> None:
    result = _result(True, True, True)
    for run in result["runs"]:
        if run["spec"]["variant"] in ("GA+GD", "NPO+GD", "WGA+GD"):
            run["summary"]["model_utility"] = 0.1  # below half of the target's 0.9
        if run["spec"]["variant"] == "WTNPO+GD":
            run["summary"]["model_utility"] = 0.3
    line = _verdict(result, "best trade-off")
    # Out of the count though WTNPO+GD has the most utility: 0.3 vs 0.1 would have ranked it above the rest.
    assert "In 2 of 2 (split, form) cells" in line
    assert "Not ordered: forget01 GD, where GA, NPO, WGA and WTNPO all end below half" in line
    for run in result["runs"]:
        if run["spec"]["variant"] == "NPO+GD":
            run["summary"]["model_utility"] = 0.5  # NPO+GD keeps more than half: the cell is ordered again
    line = _verdict(result, "best trade-off")
    assert "In 2 of 3 (split, form) cells" in line
    assert "below it in: forget01 GD" in line


def test_model_records_keep_a_measured_build_time_and_never_invent_one(tmp_path: Path) -> None:
    from lit_unlearn.model_cache import PreparedModel

    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    previous = {
        "target": {"name": "target", "model_dir": "x", "fit_seconds": 0.0, "eval_seconds": 0.0, "eval_dirs": {}},
        "retain01": {"name": "retain01", "model_dir": "y", "fit_seconds": 120.0},
        "retain05": {"name": "retain05", "model_dir": "<cache-dir>/retain05", "fit_seconds": 99.0},
    }
    models = {  # this invocation reused target and retain01 (0 s) and built retain10 (50 s)
        name: PreparedModel(name, str(tmp_path / name), fit_seconds=seconds)
        for name, seconds in (("target", 0.0), ("retain01", 0.0), ("retain10", 50.0))
    }
    records = tofu_tiny.model_records(models, previous, tmp_path)
    assert records["target"] == {"name": "target", "model_dir": "<cache-dir>/target", "fit_seconds": None}
    assert records["retain01"]["fit_seconds"] == 120.0  # measured by the invocation that built it
    assert records["retain10"] == {"name": "retain10", "model_dir": "<cache-dir>/retain10", "fit_seconds": 50.0}
    assert records["retain05"] == {"name": "retain05", "model_dir": "<cache-dir>/retain05", "fit_seconds": 99.0}


def _record(variant: str, seed: int, mu: float) -> dict[str, Any]:
    spec = {"variant": variant, "split": "forget01", "lr": 1e-3, "seed": seed}
    spec |= {"subset": None, "ranking_file": None, "rank": False}
    return {"spec": spec, "steps": 15, "fit_s": 1.0, "eval_s": 1.0, "summary": {"model_utility": mu}, "g_effect": {}}


def test_a_new_cache_of_the_same_models_adds_to_the_runs_the_json_holds(tmp_path: Path) -> None:
    # The JSON holds GA's three seeds; a fresh cache (a new machine) holds WGA's three and none of GA's.
    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    setting = tofu_tiny.Setting(str(tmp_path), "data", "target", {}, 32, 100)
    refs = {"forget01": {"target": {"model_utility": 0.9}, "retain": {"model_utility": 0.8, "forget_quality": 1.0}}}
    result = {"references": json.loads(json.dumps(refs)), "runs": [_record("GA", s, 0.5 + s) for s in range(3)]}
    for seed in range(3):
        record = _record("WGA", seed, 0.1 * seed)
        run_dir = tmp_path / "runs" / tofu_tiny.RunSpec(**record["spec"]).run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps(record))
    selection = {"GA": {"lr": 1e-3}, "WGA": {"lr": 1e-3}}

    written = tofu_tiny.written_runs(result, refs)
    runs = tofu_tiny.cached_runs(selection, setting, ["forget01"], written)
    got = [(r["spec"]["variant"], r["spec"]["seed"], r["summary"]["model_utility"]) for r in runs]
    assert got == [("GA", 0, 0.5), ("GA", 1, 1.5), ("GA", 2, 2.5), ("WGA", 0, 0.0), ("WGA", 1, 0.1), ("WGA", 2, 0.2)]
    # Without the JSON's runs the rewrite would have dropped GA's three.
    assert [r["spec"]["variant"] for r in tofu_tiny.cached_runs(selection, setting, ["forget01"])] == ["WGA"] * 3


def test_runs_of_models_that_evaluate_differently_are_refused() -> None:
    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    written = {"target": {"model_utility": 0.9, "forget_quality": 1e-3}, "retain": {"model_utility": 0.8}}
    result = {"references": {"forget01": written}, "runs": [_record("GA", 0, 0.5)]}
    rebuilt = json.loads(json.dumps(written))
    rebuilt["target"]["forget_quality"] = math.nextafter(1e-3, 1.0)  # one ulp: another build's floats
    with pytest.raises(SystemExit, match=r"not the ones the JSON's runs .* forget01's references differ \(target "):
        tofu_tiny.written_runs(result, {"forget01": rebuilt})
    # A selection alone was made with the JSON's models too.
    with pytest.raises(SystemExit, match="forget01's references differ"):
        tofu_tiny.written_runs({"references": {"forget01": written}, "selection": {"GA": {}}}, {"forget01": rebuilt})
    # A split the JSON has no reference for yet, or a JSON with no results, has nothing to keep apart.
    assert tofu_tiny.written_runs(result, {"forget05": rebuilt}).keys() == {"GA_forget01_lr0.001_s0"}
    assert tofu_tiny.written_runs({"references": {"forget01": written}}, {"forget01": rebuilt}) == {}


def test_time_line_projects_the_missing_runs_at_each_splits_and_forms_median() -> None:
    # Hand count. forget01: GA (paper) 600, 1200, 3600 s (median 1200); GA+GD 1800 s each. forget05: GA 2400 s each.
    # Missing: WGA (paper) on both splits, 3 runs each at 1200 and 2400 s; GA+GD on forget05, 3 runs with no GD run
    # there, so at forget05's median (2400 s) and said so, with GD's ratio on forget01 (1800 / median of all
    # forget01 runs, 1800) = 1.00x. Total 3 × 1200 + 3 × 2400 + 3 × 2400 = 18000 s = 5.0 worker-hours.
    def run(variant: str, split: str, seed: int, seconds: float) -> dict[str, Any]:
        return {"spec": {"variant": variant, "split": split, "lr": 1e-3, "seed": seed}, "fit_s": seconds, "eval_s": 0}

    runs = [run("GA", "forget01", s, t) for s, t in ((0, 600.0), (1, 1200.0), (2, 3600.0))]
    runs += [run("GA+GD", "forget01", s, 1800.0) for s in range(3)]
    runs += [run("GA", "forget05", s, 2400.0) for s in range(3)]
    result = {
        "setup": {"forget_splits": ["forget01", "forget05"], "seeds": [0, 1, 2]},
        "variants": {"GA": {"form": "paper"}, "GA+GD": {"form": "GD"}, "WGA": {"form": "paper"}},
        "runs": runs,
    }
    line = report.time_line(result)
    assert "forget01 1800 s [600, 3600], forget05 2400 s [2400, 2400]" in line
    assert "Still missing: 3 runs on forget01 and 6 runs on forget05, about 5.0 worker-hours more" in line
    assert (
        "(GD on forget05: no run yet, counted at the split's median; elsewhere that form's median run took GD" in line
    )
    assert "GD 1.00-1.00x the split's median)" in line
    result["setup"]["forget_splits"] = ["forget01", "forget05", "forget10"]
    assert "Still missing" not in report.time_line(result)  # forget10 has no run to time
    coverage = report.coverage_line(result)
    assert "forget01: all but WGA; forget05: 1 of 3 (GA); forget10: none." in coverage


def test_shallow_verdict_says_where_the_embedding_moves_more_than_the_shallow_blocks() -> None:
    result = _result(True, True, True)
    assert "the embedding's magnitude" not in _verdict(result, "Shallow layers")  # no embedding measured
    for i, run in enumerate(result["runs"]):  # shallow blocks at -2.0 in every run; the embedding beyond them in 4
        run["g_effect"]["forget/unlearn/embedding"] = [-3.0 if i < 4 else -1.0] * 6
    assert report.claim_shallow(result)["embedding_above"] == {"forget01": (4, 36)}
    assert "the embedding's magnitude exceeds the shallow blocks' in 4 of 36 runs on forget01." in _verdict(
        result, "Shallow layers"
    )


def test_fq_mu_figure_draws_the_utility_bars_in_range_and_eps_zero_over_its_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _result(True, True, True)  # every cell at MU 0.84-0.86 on a target of 0.9
    for model, fq in (("target", 1e-4), ("retain", 1.0)):
        result["references"]["forget01"][model]["forget_quality"] = fq
    result["references"]["forget01"]["retain"]["model_utility"] = 0.75  # the range is 0.75-0.9: the 90% bar inside
    result["variants"]["WTNPO (ε=0)"] = {"family": "WTNPO", "form": "paper", "overrides": ["--model.eps=0.0"]}
    for variant in result["variants"].values():
        variant.setdefault("overrides", [])
    twins = [r for r in result["runs"] if r["spec"]["variant"] == "WTNPO"]
    result["runs"] += [r | {"spec": r["spec"] | {"variant": "WTNPO (ε=0)"}} for r in twins]
    figures = []
    original = report._figure
    monkeypatch.setattr(report, "_figure", lambda *a: figures.append(original(*a)) or figures[-1])
    report.plot_fq_mu(result, tmp_path / "fq_mu.png")
    ((fig, axes),) = figures
    ax = axes[0][0]
    bars = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() in (":", "-.")]
    assert bars == pytest.approx([0.9 * 0.9, 0.5 * 0.9])  # the selection bar (0.81) and the collapse bar (0.45)
    low, high = ax.get_xlim()
    assert low > 0.5 * 0.9  # the collapse bar lies left of every cell: drawn, but given no room
    assert low <= 0.9 * 0.9 <= high
    markers = {container.get_label(): container.lines[0] for container in ax.containers}  # errorbar data lines
    eps_zero, twin = markers["WTNPO (ε=0)"], markers["WTNPO"]
    assert (eps_zero.get_marker(), twin.get_marker()) == ("x", "o")
    assert eps_zero.get_zorder() > twin.get_zorder()  # over its twin: both visible where they coincide
    assert list(eps_zero.get_xydata()[0]) == list(twin.get_xydata()[0])


def test_the_protocol_counts_the_machine_kinds_the_runs_ran_on() -> None:
    tofu_tiny = benchmark_scripts.load("tofu_tiny")
    import torch

    kind = tofu_tiny.machine_kind()
    assert f"torch {torch.__version__} with {torch.backends.cpu.get_cpu_capability()} kernels" in kind
    result = json.loads((REPO / "docs" / "figures" / "tofu_tiny.json").read_text())
    n = len(result["runs"])
    assert f"| machine | not recorded ({n} seed runs) |" in report.setup_table(result)
    for run in result["runs"][:2]:
        run["machine"] = kind
    assert f"| machine | {kind} (2 seed runs); not recorded ({n - 2} seed runs) |" in report.setup_table(result)


def test_the_declared_deviation_says_which_selections_the_added_rate_changed() -> None:
    # Target MU 0.9, bar 0.81. A: 5e-4 keeps the bar with more forget quality than 3e-4, so the added rate moved A's
    # selection from 3e-4. B: 5e-4 keeps the bar but forgets less than 3e-4: B stays at 3e-4.
    def grid(fq_mu: dict[float, tuple[float, float]]) -> list[dict[str, float]]:
        return [{"lr": lr, "forget_quality": fq, "model_utility": mu} for lr, (fq, mu) in fq_mu.items()]

    a = grid({1e-4: (0.01, 0.9), 3e-4: (0.1, 0.85), 5e-4: (0.3, 0.82), 1e-3: (0.9, 0.2)})
    b = grid({1e-4: (0.01, 0.9), 3e-4: (0.1, 0.85), 5e-4: (0.05, 0.84), 1e-3: (0.9, 0.2)})
    result = {
        "setup": {"lr_grid": [1e-4, 3e-4, 5e-4, 1e-3], "lr_added_after_first_pass": [5e-4], "mu_keep": 0.9},
        "references": {"forget01": {"target": {"forget_quality": 0.001, "model_utility": 0.9}}},
        "selection": {"A": {"lr": 5e-4, "runs": a}, "B": {"lr": 3e-4, "runs": b}},
    }
    note = report.added_note(result)
    assert note.endswith("It changed 1 of 2 selections: A (0.0003 without it)")
    assert report.selection_rule([(r["lr"], r["forget_quality"], r["model_utility"]) for r in b], 0.9, 0.9) == 3e-4
    # None keeps the bar: the highest model utility.
    assert report.selection_rule([(1e-4, 0.5, 0.3), (3e-4, 0.9, 0.2)], 0.9, 0.9) == 1e-4
