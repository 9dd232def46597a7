"""Tables and figures of ``docs/results.md``, computed from ``docs/figures/tofu_tiny.json`` alone (no training).

``python benchmarks/tofu_tiny.py report`` calls :func:`write_all`; ``tests/test_results_page.py`` regenerates the
tables from the committed JSON and checks that they equal the committed ones, byte for byte.

Aggregation over seeds: model utility and the other bounded scores as mean ± standard deviation (n−1); forget quality,
a p-value spread over orders of magnitude, as the median with the range [min, max] of the seeds.
"""

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FQ_THRESHOLD = 0.05
DEPTHS = ("shallow", "middle", "deep")
GROUPS = ("embedding", "shallow", "middle", "deep", "lm_head")


def coarse_name(group: str, boundaries: Sequence[int]) -> str:
    """The depth name of a callback group: ``blocks_00_01`` → ``shallow`` for boundaries (2, 4), the final-norm group
    → ``deep``; other names unchanged."""
    if not group.startswith("blocks_"):
        return group
    first = int(group.split("_")[1])
    return DEPTHS[sum(first >= b for b in boundaries)]


# --------------------------------------------------------------------------------------------------- formatting
def fmt(value: float | None, digits: int = 3) -> str:
    """Numbers as the tables print them (3 significant digits; small values in scientific notation)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.{digits}g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table; cells already formatted."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` over the seeds (sd with n−1; just the value for one seed)."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values), 2)}"


def median_range(values: Sequence[float]) -> str:
    """``median [min, max]`` over the seeds."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}, {fmt(max(values))}]"


# ---------------------------------------------------------------------------------------------------- grouping
def cells(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Runs grouped by (variant, split), seeds in order."""
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r["spec"]["seed"]):
        out[(run["spec"]["variant"], run["spec"]["split"])].append(run)
    return dict(out)


def run_splits(result: Mapping[str, Any]) -> list[str]:
    """The forget splits that have comparison runs, in the sweep's order."""
    ran = {r["spec"]["split"] for r in result["runs"]}
    return [s for s in result["setup"]["forget_splits"] if s in ran]


def metric(runs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """One summary value per run (seed)."""
    return [float(r["summary"][key]) for r in runs]


def variant_order(result: Mapping[str, Any]) -> list[str]:
    """Variants in the order the sweep defines them (the JSON's keys are sorted, so the order is stored apart)."""
    return list(result.get("variant_order", result["variants"]))


# -------------------------------------------------------------------------------------------------- the tables
def selection_table(result: Mapping[str, Any]) -> list[str]:
    """The learning-rate grid on forget01 (seed 0) and the rule's choice per variant."""
    target_mu = result["references"]["forget01"]["target"]["model_utility"]
    grid = result["setup"]["lr_grid"]
    header = ["variant", *[f"lr {lr:g}: FQ / MU" for lr in grid], "selected lr"]
    rows = []
    for name in variant_order(result):
        choice = result["selection"][name]
        by_lr = {r["lr"]: r for r in choice["runs"]}
        row = [name]
        for lr in grid:
            r = by_lr.get(lr)
            mark = "" if r is None or r["model_utility"] >= result["setup"]["mu_keep"] * target_mu else " ✗"
            row.append("–" if r is None else f"{fmt(r['forget_quality'])} / {fmt(r['model_utility'])}{mark}")
        row.append(f"{choice['lr']:g}")
        rows.append(row)
    return table(header, rows)


def edge_note(result: Mapping[str, Any]) -> list[str]:
    """The variants whose selected rate is the grid's largest: their best may lie above the grid."""
    top = max(result["setup"]["lr_grid"])
    edge = [name for name in variant_order(result) if result["selection"][name]["lr"] == top]
    if not edge:
        return []
    return [
        f"Selected at the top of the grid ({top:g}), so a larger rate, not tried, might serve them better: "
        f"{', '.join(edge)}.",
        "",
    ]


def main_table(result: Mapping[str, Any]) -> list[str]:
    """Forget quality and model utility per variant and split, over the seeds, with the references."""
    groups = cells(result["runs"])
    splits = run_splits(result)
    header = ["variant", "form", "lr"]
    for split in splits:
        header += [f"{split} FQ (median [range])", f"{split} MU (mean ± sd)"]
    rows = []
    for label, key in (("target (before)", "target"), ("retain model (oracle)", "retain")):
        row = [label, "–", "–"]
        for split in splits:
            ref = result["references"][split][key]
            row += [fmt(ref["forget_quality"]), fmt(ref["model_utility"])]
        rows.append(row)
    for name in variant_order(result):
        variant = result["variants"][name]
        row = [name, variant["form"], f"{result['selection'][name]['lr']:g}"]
        for split in splits:
            runs = groups.get((name, split), [])
            row += (
                [median_range(metric(runs, "forget_quality")), mean_sd(metric(runs, "model_utility"))]
                if runs
                else ["–", "–"]
            )
        rows.append(row)
    return table(header, rows)


COLLAPSE = 0.5
"""A cell whose mean model utility is below this fraction of the target's has collapsed (see :func:`collapsed`)."""


def collapsed(result: Mapping[str, Any], model_utilities: Sequence[float], split: str) -> bool:
    """A cell (its runs' model utilities) whose mean model utility is below half of the target's on its split."""
    target = result["references"][split]["target"]["model_utility"]
    return statistics.fmean(model_utilities) < COLLAPSE * target


def rate_note(result: Mapping[str, Any]) -> list[str]:
    """Under the table, when larger splits ran: every split runs at the rate selected on forget01, and how many
    optimiser steps a run takes at that rate on each split (from the runs)."""
    splits = run_splits(result)
    if splits == ["forget01"] or not splits:
        return []
    steps = {s: sorted({int(r["steps"]) for r in result["runs"] if r["spec"]["split"] == s}) for s in splits}
    per_split = ", ".join(f"{s}: {'/'.join(map(str, n))}" for s, n in steps.items())
    groups = cells(result["runs"])
    larger = [(v, s) for v in variant_order(result) for s in splits if s != "forget01" and (v, s) in groups]
    damaged = [f"{v} ({s})" for v, s in larger if collapsed(result, metric(groups[(v, s)], "model_utility"), s)]
    return [
        "Every split runs at the rate selected on forget01, as the paper's code keeps one rate per model for every "
        f"split; the rule was not re-applied on the larger splits. Optimiser steps per run: {per_split}. "
        f"At those rates {len(damaged)} of the {len(larger)} cells of the larger splits keep less than half of the "
        "target's model utility"
        + (
            f": {', '.join(damaged)}; there the trade-off compares models damaged far beyond the forget split."
            if damaged
            else "."
        )
        + "".join(
            f" On {s} the retain model itself keeps {fmt(result['references'][s]['retain']['model_utility'])}, below "
            "that bar, so there it also flags cells near the oracle's own utility."
            for s in splits
            if collapsed(result, [result["references"][s]["retain"]["model_utility"]], s)
        ),
        "",
    ]


def _depth_means(run: Mapping[str, Any], risk: str, term: str) -> dict[str, float]:
    """Mean G-effect over the measured steps of one run, per coarse group."""
    g = run["g_effect"]
    out = {}
    for group in (*GROUPS, "total"):
        values = [v for v in g.get(f"{risk}/{term}/{group}", []) if v is not None]
        if values:
            out[group] = statistics.fmean(values)
    return out


def analysis_split(result: Mapping[str, Any]) -> str:
    """The forget split of the per-layer and per-step analyses: the first one with runs of every variant."""
    have = {(r["spec"]["variant"], r["spec"]["split"]) for r in result["runs"]}
    for split in result["setup"]["forget_splits"]:
        if all((name, split) in have for name in result["variants"]):
            return split
    return result["setup"]["forget_splits"][0]


def layer_table(result: Mapping[str, Any], split: str) -> list[str]:
    """Mean G-effect per layer group of the unlearning term and of the regulariser on the forget and the retain
    risk, averaged over seeds and steps (``split``)."""
    groups = cells(result["runs"])
    header = ["variant", "term", "risk", *GROUPS, "whole model", "largest |e| among blocks"]
    rows = []
    for name in variant_order(result):
        runs = groups.get((name, split), [])
        for term in ("unlearn", "regularizer"):
            for risk in ("forget", "retain"):
                per_run = [_depth_means(r, risk, term) for r in runs]
                per_run = [p for p in per_run if p]
                if not per_run:
                    continue
                means = {g: statistics.fmean(p[g] for p in per_run if g in p) for g in (*GROUPS, "total")}
                top = max(DEPTHS, key=lambda g: abs(means[g]))
                rows.append([name, term, risk, *[fmt(means[g]) for g in GROUPS], fmt(means["total"]), top])
    return table(header, rows)


def kl_vs_gd_table(result: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Paired KL-vs-GD comparison: for each family, split and seed, which regulariser's run dominates in
    (forget quality, model utility), and when neither does, which way the trade-off goes: KL keeping more model
    utility while GD forgets more (higher forget quality), or the reverse. Each side runs at its own selected rate.
    The counts also hold the pairs whose two runs both collapsed, among all and among the decisive ones."""
    groups = cells(result["runs"])
    kinds = ("KL dominates", "GD dominates", "KL more MU, GD more FQ", "GD more MU, KL more FQ", "equal")
    wrecked = "both collapsed"  # counted across the kinds: pairs of two runs below half of the target's utility
    columns = [k for k in (*kinds, wrecked) if k != "equal"]
    counts = dict.fromkeys((*kinds, wrecked), 0)
    decisive_wrecked = 0  # of the pairs one side dominates, those between two collapsed runs
    decisive_working: list[str] = []  # the others, named: they carry the comparison
    rows = []
    families = sorted({v["family"] for v in result["variants"].values()})
    for family in families:
        gd, kl = f"{family}+GD", f"{family}+KL"
        for split in run_splits(result):
            by_seed = {r["spec"]["seed"]: r for r in groups.get((kl, split), [])}
            pairs = [
                (g, by_seed[g["spec"]["seed"]]) for g in groups.get((gd, split), []) if g["spec"]["seed"] in by_seed
            ]
            tally = dict.fromkeys((*kinds, wrecked), 0)
            for g, k in pairs:
                a = (k["summary"]["forget_quality"], k["summary"]["model_utility"])
                b = (g["summary"]["forget_quality"], g["summary"]["model_utility"])
                both = collapsed(result, [a[1]], split) and collapsed(result, [b[1]], split)
                tally[wrecked] += both
                winner = "KL" if dominates(a, b) else ("GD" if dominates(b, a) else None)
                if winner:
                    tally[f"{winner} dominates"] += 1
                    decisive_wrecked += both
                    if not both:
                        won, lost = (a, b) if winner == "KL" else (b, a)
                        decisive_working.append(
                            f"{winner} in {family} {split} seed {g['spec']['seed']} (forget quality {fmt(won[0])} "
                            f"against {fmt(lost[0])}, model utility {fmt(won[1])} against {fmt(lost[1])})"
                        )
                elif a[1] > b[1]:
                    tally["KL more MU, GD more FQ"] += 1
                elif b[1] > a[1]:
                    tally["GD more MU, KL more FQ"] += 1
                else:
                    tally["equal"] += 1
            if pairs:
                rates = f"{result['selection'][gd]['lr']:g} / {result['selection'][kl]['lr']:g}"
                rows.append([family, split, rates, *(tally[k] for k in columns)])
                counts = {k: counts[k] + tally[k] for k in counts}
    header = ["family", "split", "lr GD / KL", *columns]
    return table(header, rows), {
        **counts,
        "decisive, both collapsed": decisive_wrecked,
        "decisive, working": decisive_working,
    }


def _working_pairs(pairs: Sequence[str]) -> str:
    """The decisive KL-vs-GD pairs between runs that did not collapse: named when few, else counted by winner."""
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f"; the other is {pairs[0]}"
    if len(pairs) <= 3:
        return f"; the others are {_and(pairs)}"
    wins = Counter(pair.split(" ", 1)[0] for pair in pairs)
    return f"; the other {len(pairs)}, between working runs: KL {wins['KL']}, GD {wins['GD']}"


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Pareto dominance in (forget quality, model utility): ≥ in both and > in at least one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def runaway(run: Mapping[str, Any]) -> float | None:
    """GA's inverse-confidence runaway, measured: mean |unlearning-term G-effect on the forget risk| over the last
    third of the measured steps divided by that over the first third (> 1: the push grows as the answers fade)."""
    values = [v for v in run["g_effect"].get("forget/unlearn/total", []) if v is not None]
    third = len(values) // 3
    if third == 0:
        return None
    first = statistics.fmean(abs(v) for v in values[:third])
    last = statistics.fmean(abs(v) for v in values[-third:])
    return last / first if first > 0 else None


def runaway_table(result: Mapping[str, Any]) -> list[str]:
    """:func:`runaway` per paper-form variant and split, over the seeds."""
    groups = cells(result["runs"])
    rows = []
    for name in variant_order(result):
        if result["variants"][name]["form"] != "paper":
            continue
        row = [name]
        for split in run_splits(result):
            ratios = [x for x in (runaway(r) for r in groups.get((name, split), [])) if x is not None]
            row.append(mean_sd(ratios) if ratios else "–")
        rows.append(row)
    return table(["variant", *[f"{s}: late/early |e_u|" for s in run_splits(result)]], rows)


# ----------------------------------------------------------------------------------------------------- verdicts
def _rank_key(runs: Sequence[Mapping[str, Any]], target_mu: float, keep: float) -> tuple[bool, float, float]:
    """The selection rule as an ordering of cells: keeping ≥ ``keep`` of the target's utility (mean over seeds) first,
    then the median forget quality if kept (at equal forget quality, the higher mean utility), else the mean
    utility."""
    mu = statistics.fmean(metric(runs, "model_utility"))
    fq = statistics.median(metric(runs, "forget_quality"))
    kept = mu >= keep * target_mu
    return kept, fq if kept else mu, mu


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided sign-test p-value of ``k`` successes in ``n`` fair coin flips."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def claim_trade_off(result: Mapping[str, Any]) -> dict[str, Any]:
    """Claim 1: WGA/WTNPO give the best removal/retention trade-off. Per split and form, does the better of
    WGA/WTNPO rank above both GA and NPO by the selection rule's ordering?"""
    groups = cells(result["runs"])
    keep = result["setup"]["mu_keep"]
    checks, wins, skipped, wrecked = [], 0, [], []
    for split in run_splits(result):
        target_mu = result["references"][split]["target"]["model_utility"]
        for form, suffix in (("paper", ""), ("GD", "+GD"), ("KL", "+KL")):
            keys = {f: groups.get((f + suffix, split)) for f in ("GA", "NPO", "WGA", "WTNPO")}
            if not all(keys.values()):
                skipped.append(f"{split} {form}")
                continue
            if all(collapsed(result, metric(runs, "model_utility"), split) for runs in keys.values()):
                # Every side collapsed: the rule would order them by utilities near zero, which says nothing of
                # how well any of them trades removal against retention.
                wrecked.append(f"{split} {form}")
                continue
            ranked = {f: _rank_key(runs, target_mu, keep) for f, runs in keys.items()}
            new_f, old_f = max(("WGA", "WTNPO"), key=ranked.__getitem__), max(("GA", "NPO"), key=ranked.__getitem__)
            best_new, best_old = ranked[new_f], ranked[old_f]
            won = best_new > ranked["GA"] and best_new > ranked["NPO"]
            wins += won
            # Not won, but level with the better baseline (same rung and utility): a tie, not a loss.
            tied = not won and best_new == best_old
            # No cell of either side keeps the rule's share of the target's utility: ordered by utility alone.
            on_mu = not best_new[0] and not best_old[0]
            # Both sides kept and on one forget-quality rung: the rule's utility tie-break decided.
            tie_break = best_new[0] and best_old[0] and best_new[1] == best_old[1] and not tied
            # Only one side keeps the rule's share: the bar decides, whatever the forget qualities.
            by_bar = best_new[0] != best_old[0]
            fq = tuple(statistics.median(metric(keys[f], "forget_quality")) for f in (new_f, old_f))
            checks.append(
                {"cell": f"{split} {form}", "won": won, "tied": tied, "on_mu": on_mu, "tie_break": tie_break,
                 "by_bar": by_bar, "mu": (best_new[2], best_old[2]), "fq": fq}
            )  # fmt: skip
    return {"wins": wins, "checks": len(checks), "detail": checks, "skipped": skipped, "collapsed": wrecked}


def _top_depth(means: Mapping[str, float]) -> str | None:
    """The depth group with the largest |mean G-effect| of a run's :func:`_depth_means` (None: unmeasured)."""
    return max(DEPTHS, key=lambda d: abs(means[d])) if all(d in means for d in DEPTHS) else None


def claim_shallow(result: Mapping[str, Any]) -> dict[str, Any]:
    """Claim 3: shallow layers are affected most. In how many runs is the unlearning term's mean |G-effect| on the
    forget risk largest in the shallow blocks (among shallow/middle/deep), and in how many cells in every seed?"""
    groups = cells(result["runs"])
    # The unlearning term's mean G-effect on the forget risk per depth group, once per run.
    means = {key: [_depth_means(r, "forget", "unlearn") for r in runs] for key, runs in groups.items()}
    tops = {key: [t for t in map(_top_depth, cell) if t is not None] for key, cell in means.items()}
    counts = {d: sum(t == d for cell in tops.values() for t in cell) for d in DEPTHS}
    n = sum(counts.values())
    # One-sided: shallow chosen more often than the 1/3 of a uniform pick.
    p = sum(math.comb(n, i) * (1 / 3) ** i * (2 / 3) ** (n - i) for i in range(counts["shallow"], n + 1)) if n else 1.0
    shallow_cells = sum(all(t == "shallow" for t in cell) for cell in tops.values())
    # Beside the ranking: per split, in how many runs the embedding (not ranked: it is no block) moves more than the
    # shallow blocks, which only the forget01 per-layer table shows.
    embedding = {}
    for (_, split), cell in means.items():
        both = [m for m in cell if "embedding" in m and "shallow" in m]
        above, total = embedding.get(split, (0, 0))
        embedding[split] = (above + sum(abs(m["embedding"]) > abs(m["shallow"]) for m in both), total + len(both))
    return {
        "counts": counts, "runs": n, "p_one_sided": p, "cells": len(groups), "shallow_cells": shallow_cells,
        "embedding_above": {s: embedding[s] for s in run_splits(result) if embedding.get(s, (0, 0))[1]},
    }  # fmt: skip


def claim_runaway(result: Mapping[str, Any]) -> dict[str, Any]:
    """Claim 4: GA's inverse-confidence runaway: GA's late/early |unlearning G-effect| ratio against WGA's."""
    groups = cells(result["runs"])
    out = {}
    for split in run_splits(result):
        ga = [x for x in (runaway(r) for r in groups.get(("GA", split), [])) if x is not None]
        wga = [x for x in (runaway(r) for r in groups.get(("WGA", split), [])) if x is not None]
        if ga and wga:
            out[split] = {
                "GA": statistics.fmean(ga),
                "WGA": statistics.fmean(wga),
                "GA_above_1": sum(x > 1 for x in ga),
                # Every seed on one side of every seed of the other: the split's answer is not a seed's accident.
                "separated": min(ga) > max(wga) or max(ga) < min(wga),
            }
    return out


def _and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def count_phrase(counts: Iterable[int]) -> str:
    """How many seeds some cells have, e.g. ``"3 seeds"`` or ``"1-3 seeds"``."""
    n = sorted(set(counts))
    return f"{'-'.join(map(str, [n[0], n[-1]] if n[0] != n[-1] else [n[0]]))} seed{'s' if n[-1] > 1 else ''}"


def seeds_phrase(result: Mapping[str, Any]) -> str:
    """How many seeds the comparison's cells have."""
    return count_phrase(len(runs) for runs in cells(result["runs"]).values())


def _trade_off_word(wins: int, checks: int) -> str:
    """The trade-off verdict's word: every checked cell won, more than half, or not."""
    if not checks:
        return "not testable here"
    return "holds" if wins == checks else ("holds in part" if wins * 2 > checks else "does not hold")


def verdicts(result: Mapping[str, Any]) -> list[str]:
    """One paragraph per claim of the paper: the measured evidence, the verdict it supports, the statistical caveat
    and what would overturn it. Every number comes from ``result``; every verdict follows its sign."""
    lines = []
    t = claim_trade_off(result)
    if t["checks"] or t["collapsed"]:
        word = _trade_off_word(t["wins"], t["checks"])
        won, tied, on_mu, tie_break, by_bar = (
            [c["cell"] for c in t["detail"] if c[key]] for key in ("won", "tied", "on_mu", "tie_break", "by_bar")
        )
        tie_margins = [f"{fmt(c['mu'][0])} against {fmt(c['mu'][1])}" for c in t["detail"] if c["tie_break"]]
        bar_margins = [f"{fmt(c['fq'][0])} against {fmt(c['fq'][1])}" for c in t["detail"] if c["by_bar"]]
        # The word without the cells the tie-break decided (one forget-quality rung apart would flip them).
        untied = [c for c in t["detail"] if not c["tie_break"]]
        word_untied = _trade_off_word(sum(c["won"] for c in untied), len(untied))
        lost = [c["cell"] for c in t["detail"] if not c["won"] and not c["tied"]]
        where = [f"above in: {', '.join(won)}"] if won else []
        where += [f"level with the better of them in: {', '.join(tied)}"] if tied else []
        where += [f"below it in: {', '.join(lost)}"] if lost else []
        keep = result["setup"]["mu_keep"]
        # The headline carries how the cells were won: on forget quality, or by the bar, utility or the tie-break.
        on_fq = sum(c["won"] and not (c["tie_break"] or c["on_mu"] or c["by_bar"]) for c in t["detail"])
        headline = f"{word}, {t['wins']} of {t['checks']} cells" if t["checks"] else word
        headline += f" ({on_fq} of them on forget quality above the utility bar)" if t["wins"] else ""
        headline += (
            f'; "{word_untied}" without the tie-break cell{"s" if len(tie_break) > 1 else ""}'
            if tie_break and word_untied != word
            else ""
        )
        lines.append(
            f"- **WGA/WTNPO give the best trade-off: {headline}.** In {t['wins']} of {t['checks']} (split, form) "
            "cells the better of WGA and WTNPO ranks above both GA and NPO by the selection rule's ordering (the bar "
            "on a cell's mean model utility over seeds, forget quality by its median"
            + "".join(f"; {w}" for w in where)
            + ")."
            + (
                f" In {_and(by_bar)} only one side keeps {keep:.0%} of the target's model utility, so the bar decides "
                f"whatever the forget quality (median forget quality {'; '.join(bar_margins)}: the better of WGA and "
                "WTNPO against the better of GA and NPO)."
                if by_bar
                else ""
            )
            + (
                f" In {_and(on_mu)} no cell of either side keeps {keep:.0%} of the target's model utility, so the "
                "ordering there is by model utility alone and forget quality plays no part."
                if on_mu
                else ""
            )
            + (
                f" In {_and(tie_break)} both sides reach the same forget-quality rung, so the rule's tie-break, the "
                f"higher model utility, decides ({'; '.join(tie_margins)}: the better of WGA and WTNPO against the "
                "better of GA and NPO, means over seeds)"
                + (
                    f"; without {'it' if len(tie_break) == 1 else 'them'}, {sum(c['won'] for c in untied)} of "
                    f'{len(untied)} cells, which reads "{word_untied}".'
                    if word_untied != word
                    else "."
                )
                if tie_break
                else ""
            )
            + (
                f" Not ordered: {_and(t['collapsed'])}, where GA, NPO, WGA and WTNPO all end below half of the "
                "target's model utility (collapsed models: their order by utilities near zero says nothing of the "
                "trade-off)."
                if t["collapsed"]
                else ""
            )
            + (f" Not checked (a cell not run yet): {', '.join(t['skipped'])}." if t["skipped"] else "")
            + f" Caveat: {seeds_phrase(result)} per cell, and forget quality moves in coarse rungs on forget01 (40 "
            "items). It would be overturned by more seeds reversing the cells' order."
        )
    _, kl = kl_vs_gd_table(result)
    decisive = kl["KL dominates"] + kl["GD dominates"]
    neither = kl["KL more MU, GD more FQ"] + kl["GD more MU, KL more FQ"] + kl["equal"]
    wrecked = kl["decisive, both collapsed"]
    if decisive + neither:
        p = binomial_two_sided(kl["KL dominates"], decisive) if decisive else None
        if decisive == 0 or p >= 0.05:
            word = "not supported at this scale"
        else:
            word = "holds" if kl["KL dominates"] > kl["GD dominates"] else "the reverse holds (GD is better)"
        test = f"sign test on the decisive pairs: p = {fmt(p)}" if decisive else "no decisive pair, so no sign test"
        lines.append(
            f"- **KL is a better regulariser than GD: {word}.** Over the paired runs, KL dominates in "
            f"{kl['KL dominates']}, GD in {kl['GD dominates']}, neither in {neither} ({test})"
            + (
                f"; {wrecked} of the {decisive} decisive pairs {'is' if wrecked == 1 else 'are'} between two collapsed "
                "runs, which says nothing of the trade-off" + _working_pairs(kl["decisive, working"])
                if wrecked
                else ""
            )
            + ". A pair where neither "
            f"dominates is a trade-off, not a tie: in {kl['KL more MU, GD more FQ']} KL keeps more model utility and "
            f"GD reaches higher forget quality, in {kl['GD more MU, KL more FQ']} the reverse (per family in the "
            f"table); in {kl['both collapsed']} of the {decisive + neither} pairs both runs end below half of the "
            "target's model utility. Each side runs at its own selected rate (the table's lr column), so a trade-off "
            "can be the rates' as much as the regularisers'. More seeds, or pairs at one shared rate where one side "
            "dominates consistently, would change this."
        )
    sh = claim_shallow(result)
    if sh["runs"]:
        c = sh["counts"]
        shallow_first = all(c["shallow"] > c[d] for d in DEPTHS if d != "shallow")
        word = "holds" if shallow_first and sh["p_one_sided"] < 0.05 else "does not hold"
        n_blocks = result["setup"].get("num_blocks")
        lines.append(
            f"- **Shallow layers are affected most: {word} among the blocks.** The magnitude of the unlearning term's "
            f"G-effect on the forget risk, averaged over a run's measured steps, is largest in the shallow blocks in "
            f"{c['shallow']} of {sh['runs']} runs (middle {c['middle']}, deep {c['deep']}; one-sided binomial test "
            f"against a uniform pick: p = {fmt(sh['p_one_sided'])}, which treats the runs as independent; they are "
            f"{sh['cells']} cells of seeds of one target, and in {sh['shallow_cells']} of the {sh['cells']} cells "
            f"every seed ranks the shallow blocks first). The {n_blocks} blocks have the same shape, so "
            "the depth groups differ in depth only (the deep group also contains the final norm, one weight per "
            "hidden unit); the embedding and LM head are reported beside them, not ranked"
            + (
                "; the embedding's magnitude exceeds the shallow blocks' in "
                + ", ".join(f"{a} of {n} runs on {s}" for s, (a, n) in sh["embedding_above"].items())
                if sh["embedding_above"]
                else ""
            )
            + ". A different depth split or a larger model could change it."
        )
    ra = claim_runaway(result)
    if ra:
        held = [s for s, v in ra.items() if v["GA"] > 1 and v["GA"] > v["WGA"]]
        failed = [s for s in ra if s not in held]
        if not failed:
            word = "holds"
            overturn = "A GA ratio near 1, or below WGA's, on more seeds would overturn it."
        elif not held:
            word = "does not hold"
            overturn = "A GA ratio above WGA's on more seeds or splits would overturn it."
        else:  # the splits disagree: say which way each went, and how the splits differ besides
            groups = cells(result["runs"])  # claim_runaway's splits have runs of both GA and WGA
            both = [
                s
                for s in held
                if all(collapsed(result, metric(groups[(v, s)], "model_utility"), s) for v in ("GA", "WGA"))
            ]
            # Where it holds only between wrecks, the headline says so, not only the caveat.
            only = "only where GA and WGA have both collapsed, " if both == held else ""
            word = f"holds {only}on {_and(held)}, not on {_and(failed)}"
            overturn = (
                "The splits differ in run length at one rate (see the steps under the main table)"
                + (
                    f", and on {_and(both)} both GA and WGA end below half of the target's model utility, so "
                    "there the comparison is between collapsed runs"
                    if both
                    else ""
                )
                + "."
            )
        detail = "; ".join(f"{s}: GA {fmt(v['GA'])} vs WGA {fmt(v['WGA'])}" for s, v in ra.items())
        apart = [s for s, v in ra.items() if v["separated"]]
        detail += f"; every GA seed on the same side of every WGA seed on {_and(apart) if apart else 'no split'}"
        lines.append(
            f"- **GA's inverse-confidence runaway (faster than WGA's): {word}.** Late/early ratio of the unlearning "
            f"term's |G-effect| on the forget risk (mean over seeds; > 1: the push grows as the answers fade): "
            f"{detail}. Caveat: each third holds only a few measured steps, so one near-zero early step moves the "
            "ratio a lot (per-seed values in the JSON's histories); it is a first-order reading of the raw "
            f"gradient. {overturn}"
        )
    return lines


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, tied values sharing their mean rank."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in order[start : end + 1]:
                out[k] = (start + end) / 2
            start = end + 1
        return out

    return statistics.correlation(ranks(xs), ranks(ys))


def ranking_state(inst: Mapping[str, Any]) -> str:
    """Whether the ranking ranks the rows or the order they were seen in: its rank correlation with each row's
    measured step, and the control's (the same ranking measured while unlearning, at weights that drift)."""

    def rho(rows: Sequence[Mapping[str, Any]]) -> float:
        column = inst["ranking_column"].removeprefix("g_effect_")
        return spearman([statistics.fmean(r["steps"]) for r in rows], [r[column] for r in rows])

    control = inst["control_ranking"]
    ours, theirs = rho(inst["ranking"]), rho(control["ranking"])
    frozen = (
        "no step updates the weights, so every row is measured at the target's: " if inst["ranking_lr"] == 0 else ""
    )

    def reading(r: float) -> str:  # |ρ| ≥ 0.5: the step explains much of the ranking's order
        return "a row's value follows when it was seen" if abs(r) >= 0.5 else "the step explains little of the order"

    return (
        f"At learning rate {inst['ranking_lr']:g} {frozen}the ranking's Spearman correlation with the step a row was "
        f"measured at is {ours:.2f} ({reading(ours)}). The same ranking measured while unlearning at lr "
        f"{control['lr']:g} (the control, also in the JSON) gives {theirs:.2f} ({reading(theirs)})."
    )


def instance_summary(result: Mapping[str, Any]) -> dict[str, dict[str, float]] | None:
    """Per quarter of the instance experiment: the mean ranking value of its rows (over seeds for ``random``), and
    the mean and the per-seed retain answer NLL and model utility."""
    inst = result.get("instances")
    if not inst:
        return None
    column = inst["ranking_column"].removeprefix("g_effect_")
    value = {r["index"]: r[column] for r in inst["ranking"]}
    out = {}
    for subset in ("top", "bottom", "random"):
        runs = inst["runs"].get(subset, [])
        if runs:
            out[subset] = {
                "ranking_mean": statistics.fmean(value[i] for r in runs for i in r["kept_rows"]),
                "retain_nll": [r["retain_answer_loss"] for r in runs],
                "forget_nll": [r["forget_answer_loss"] for r in runs],
                "model_utility": [r["model_utility"] for r in runs],
                "forget_quality": [r["forget_quality"] for r in runs],
            }
    return out


def claim_instances(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """Does the ranking predict collateral damage? The prediction, fixed before the runs: the bottom quarter (most
    negative retaining G-effect) raises the retain NLL most, the top quarter least, the random quarter in between.
    ``separated``: every bottom seed above every top seed."""
    q = instance_summary(result)
    if not q or set(q) != {"top", "bottom", "random"}:
        return None
    mean = {k: statistics.fmean(v["retain_nll"]) for k, v in q.items()}
    mu = {k: statistics.fmean(v["model_utility"]) for k, v in q.items()}
    return {
        "seeds": count_phrase(len(v["retain_nll"]) for v in q.values()),
        "mean_retain_nll": mean,
        # How far the quarter moved the model on the forget split itself: more collateral damage may just be more
        # unlearning.
        "mean_forget_nll": {k: statistics.fmean(v["forget_nll"]) for k, v in q.items()},
        "ordered": mean["bottom"] > mean["random"] > mean["top"],
        "bottom_above_top": mean["bottom"] > mean["top"],
        "separated": min(q["bottom"]["retain_nll"]) > max(q["top"]["retain_nll"]),
        # Not the pre-registered measure, reported beside it: the damage as model utility sees it.
        "mean_model_utility": mu,
        "mu_ordered": mu["top"] > mu["random"] > mu["bottom"],
        "mu_separated": min(q["top"]["model_utility"]) > max(q["bottom"]["model_utility"]),
        # Collateral damage is read off models that still work, or off wrecks: say which.
        "collapsed": [k for k in ("top", "random", "bottom") if collapsed(result, q[k]["model_utility"], "forget10")],
    }


def instance_table(result: Mapping[str, Any]) -> list[str]:
    """The instance experiment: unlearning the top, bottom or a random quarter of the ranked forget10 examples."""
    q = instance_summary(result)
    if not q:
        return []
    header = ["quarter", "mean ranking value (g_effect_retain)", "retain answer NLL", "forget10 answer NLL"]
    header += ["model utility", "forget quality (forget10)", "seeds"]
    rows = [
        [
            subset,
            fmt(v["ranking_mean"]),
            mean_sd(v["retain_nll"]),
            mean_sd(v["forget_nll"]),
            mean_sd(v["model_utility"]),
            median_range(v["forget_quality"]),
            len(v["retain_nll"]),
        ]
        for subset, v in q.items()
    ]
    return table(header, rows)


def instance_verdict(result: Mapping[str, Any]) -> list[str]:
    """The instance experiment's answer, following the measured order."""
    c = claim_instances(result)
    if c is None:
        return []
    m = c["mean_retain_nll"]
    gone = c["collapsed"]
    who = {1: f"The {_and(gone)} quarter ends", 3: "Every quarter ends"}.get(
        len(gone), f"The {_and(gone)} quarters end"
    )
    retain_mu = fmt(result["references"]["forget10"]["retain"]["model_utility"])
    collapse = (
        f"{who} below half of the target's model utility (the forget10 retain model scores {retain_mu}). "
        if gone
        else ""
    )
    f = c["mean_forget_nll"]
    ratios = ", ".join(f"{k} {fmt(m[k] / f[k], 2)}" for k in ("top", "random", "bottom"))
    order = f"bottom {fmt(f['bottom'])}, random {fmt(f['random'])}, top {fmt(f['top'])}"
    moved = (
        f"Forget10 answer NLL falls in the same order ({order}): the quarters that damage retain most also unlearn "
        "forget10 most, so the ranking may predict how far unlearning moves the model rather than a worse trade-off "
        if f["bottom"] > f["random"] > f["top"]
        else f"Forget10 answer NLL does not fall in that order ({order}) "
    ) + f"(retain / forget NLL: {ratios}). "
    if c["ordered"] and c["separated"]:
        word = "yes"
    elif c["bottom_above_top"]:
        word = "in direction only"
    else:
        word = "no"
    # The bottom quarter damages retain most, but if it also unlearns most and costs less retain per unit of
    # forgetting, the ranking may track how far unlearning went: the headline says so, not the body alone.
    per_unit = {k: m[k] / f[k] for k in ("top", "bottom")}
    if word != "no" and f["bottom"] > f["top"] and per_unit["bottom"] < per_unit["top"]:
        word += (
            " on the measure fixed beforehand; per unit of forgetting (retain / forget NLL, not fixed beforehand) the "
            f"bottom quarter costs less than the top ({fmt(per_unit['bottom'], 2)} against {fmt(per_unit['top'], 2)})"
        )
    return [
        f"- **Does the ranking predict collateral damage? {word}.** Mean retain answer NLL after unlearning the "
        f"bottom quarter (most negative retaining G-effect) {fmt(m['bottom'])}, a random quarter {fmt(m['random'])}, "
        f"the top quarter {fmt(m['top'])}; predicted order bottom > random > top: "
        f"{'met' if c['ordered'] else 'not met'}; every bottom seed above every top seed: "
        f"{'yes' if c['separated'] else 'no'}. Model utility, not the measure fixed beforehand: top "
        f"{fmt(c['mean_model_utility']['top'])}, random {fmt(c['mean_model_utility']['random'])}, bottom "
        f"{fmt(c['mean_model_utility']['bottom'])} (order top > random > bottom: "
        f"{'met' if c['mu_ordered'] else 'not met'}; every top seed above every bottom seed: "
        f"{'yes' if c['mu_separated'] else 'no'}). {moved}{collapse}Caveat: one ranking run (seed 0), "
        f"{c['seeds']} per quarter; each row's value is measured against the retain rows of its own step, which the "
        "data order picks; the top and bottom quarters are fixed rows (their seeds change only the data order), while "
        "the random quarter's rows change with the seed. A ranking from another seed or a larger model that reorders "
        "the quarters would overturn it."
    ]


def coverage(result: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per forget split, the variants whose cell lacks some seed (every variant when the split was not run)."""
    have = cells(result["runs"])
    seeds = len(result["setup"]["seeds"])
    return {
        split: [name for name in variant_order(result) if len(have.get((name, split), [])) < seeds]
        for split in result["setup"]["forget_splits"]
    }


def coverage_line(result: Mapping[str, Any]) -> str:
    """One sentence: which (variant, split) cells of the comparison have every seed."""
    n = len(result["variants"])
    parts = []
    missing_by_split = coverage(result)
    for split, missing in missing_by_split.items():
        present = [name for name in variant_order(result) if name not in missing]
        if not missing:
            parts.append(f"{split}: all {n} variants")
        elif not present:
            parts.append(f"{split}: none")
        elif len(missing) <= len(present):
            parts.append(f"{split}: all but {', '.join(missing)}")
        else:
            parts.append(f"{split}: {len(present)} of {n} ({', '.join(present)})")
    line = "Coverage of the comparison, cells with every seed: " + "; ".join(parts) + "."
    if any(missing_by_split.values()):
        line += (
            " `python benchmarks/tofu_tiny.py seeds --splits <split> --variants <names>` runs the rest (cached,"
            " resumable)."
        )
    return line


def worker_seconds(result: Mapping[str, Any]) -> dict[str, float]:
    """Measured seconds (training and evaluation, one torch thread per run) of every distinct unlearning run in the
    JSON, and of the models whose build time the cache recorded."""
    seen: dict[tuple, float] = {}
    for name, choice in result.get("selection", {}).items():
        for r in choice["runs"]:
            seen[(name, "forget01", r["lr"], 0, None)] = r["fit_s"] + r["eval_s"]
    for r in result.get("runs", []):
        spec = r["spec"]
        seen[(spec["variant"], spec["split"], spec["lr"], spec["seed"], None)] = r["fit_s"] + r["eval_s"]
    inst = result.get("instances") or {}
    # The instance experiment's runs: the ranking, its control and the quarters'.
    others = [inst["ranking_run"], inst["control_ranking"]["ranking_run"]] if inst else []
    others += [r for runs in inst.get("runs", {}).values() for r in runs]
    models = result["setup"].get("models", {})
    return {
        "runs": sum(seen.values()) + sum(r["fit_s"] + r["eval_s"] for r in others),
        "count": len(seen) + len(others),
        "models": sum(m["fit_seconds"] for m in models.values() if m["fit_seconds"] is not None),
        "models_recorded": sum(1 for m in models.values() if m["fit_seconds"] is not None),
        "models_total": len(models),
    }


def run_times(result: Mapping[str, Any]) -> dict[tuple[str, str], list[float]]:
    """Per (forget split, form), the measured seconds (training and evaluation) of each seed run of the comparison."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in result.get("runs", []):
        form = result["variants"][r["spec"]["variant"]]["form"]
        out.setdefault((r["spec"]["split"], form), []).append(r["fit_s"] + r["eval_s"])
    return out


def time_line(result: Mapping[str, Any]) -> str:
    """Per split, a seed run's measured time (median [min, max]), and what the comparison's missing runs would add:
    each at the median of its split's runs of its form (paper, GD, KL), or of all its split's runs where that form
    has none yet (said, with how much longer that form ran on the other splits)."""
    times = run_times(result)
    splits = result["setup"]["forget_splits"]
    by_split = {split: [t for (s, _), ts in times.items() if s == split for t in ts] for split in splits}
    per_split = [
        f"{split} {statistics.median(ts):.0f} s [{min(ts):.0f}, {max(ts):.0f}]" for split, ts in by_split.items() if ts
    ]
    line = "A seed run of the comparison, training and evaluation, median [min, max]: " + ", ".join(per_split) + "."
    seeds = len(result["setup"]["seeds"])
    gaps = coverage(result)
    missing: dict[tuple[str, str], int] = {}
    for split, names in gaps.items():
        for name in names:
            key = (split, result["variants"][name]["form"])
            missing[key] = missing.get(key, 0) + seeds
    if not missing or not all(by_split[split] for split, _ in missing):
        return line
    extra, fallback = 0.0, []
    for (split, form), count in missing.items():
        if times.get((split, form)):
            extra += count * statistics.median(times[(split, form)])
        else:
            extra += count * statistics.median(by_split[split])
            fallback.append((split, form))
    counts = _and([f"{len(names) * seeds} runs on {split}" for split, names in gaps.items() if names])
    line += (
        f" Still missing: {counts}, about {extra / 3600:.1f} worker-hours more at the median of their split and form"
    )
    if fallback:
        ratios = []
        for form in sorted({f for _, f in fallback}):
            # How much longer that form's median run was than the split's median run, on the splits that have both.
            seen = [statistics.median(times[(s, form)]) / statistics.median(by_split[s]) for s in splits
                    if times.get((s, form))]  # fmt: skip
            if seen:
                ratios.append(f"{form} {min(seen):.2f}-{max(seen):.2f}x")
        cells_text = _and([f"{form} on {split}" for split, form in fallback])
        line += f" ({cells_text}: no run yet, counted at the split's median"
        line += f"; elsewhere that form's median run took {', '.join(ratios)} the split's median)" if ratios else ")"
    return line + "."


def selection_rule(grid: Sequence[tuple[float, float, float | None]], target_mu: float, keep: float) -> float:
    """The learning rate the rule fixed before any run picks from ``grid`` (lr, forget quality, model utility): the
    highest forget quality among the rates keeping ``keep`` of the target's model utility (at equal forget quality,
    the higher model utility); if none does, the highest model utility."""
    ok = [g for g in grid if (g[2] or 0.0) >= keep * target_mu]
    return max(ok, key=lambda g: (g[1], g[2]))[0] if ok else max(grid, key=lambda g: g[2] or 0.0)[0]


def added_note(result: Mapping[str, Any]) -> str:
    """The declared deviation from the grid fixed before the first run, if any, with what the first pass showed."""
    setup = result["setup"]
    added = setup.get("lr_added_after_first_pass") or []
    if not added:
        return ""
    first = [lr for lr in setup["lr_grid"] if lr not in added]
    target = result["references"]["forget01"]["target"]
    runs = {name: {r["lr"]: r for r in choice["runs"]} for name, choice in result["selection"].items()}
    low = sum(r[first[0]]["forget_quality"] == target["forget_quality"] for r in runs.values() if first[0] in r)
    bar = COLLAPSE * target["model_utility"]
    high = sum(r[first[-1]]["model_utility"] < bar for r in runs.values() if first[-1] in r)
    # What the added rate changed: each variant's selection on the first-pass grid alone, against the one it has.
    changed = []
    for name, by_lr in runs.items():
        grid = [(lr, r["forget_quality"], r["model_utility"]) for lr, r in by_lr.items() if lr in first]
        without = selection_rule(grid, target["model_utility"], setup["mu_keep"]) if grid else None
        if without is not None and without != result["selection"][name]["lr"]:
            changed.append(f"{name} ({without:g} without it)")
    return (
        f". Deviation, declared: the grid fixed before any run was {', '.join(f'{lr:g}' for lr in first)}; "
        f"{', '.join(f'{lr:g}' for lr in added)} was added for every variant after that first pass, before any "
        f"other seed ran: at {first[0]:g}, {low} of {len(runs)} variants left forget quality at the target's; at "
        f"{first[-1]:g}, {high} of {len(runs)} kept less than half of the target's model utility. It changed "
        f"{len(changed)} of {len(runs)} selections" + (f": {', '.join(changed)}" if changed else "")
    )


def setup_table(result: Mapping[str, Any]) -> list[str]:
    """The protocol, from the JSON's setup record."""
    s = result["setup"]
    b0, b1 = s["block_boundaries"]
    decay = "/".join(sorted({f"{v['hyperparameters']['weight_decay']:g}" for v in result["variants"].values()}))
    every = ", ".join(f"{k}: every {v}" for k, v in s["g_effect_every"].items())
    rows = [
        ["model", s["model_description"]],
        ["unlearning batch", f"{s['batch']} forget + {s['batch']} retain rows × {s['accumulate']} accumulated "
         f"micro-batches = {s['batch'] * s['accumulate']} of each per optimiser step, {s['epochs']} epochs, AdamW "
         f"with weight decay {decay}; the retain rows feed the regulariser where there is one, and the G-effect's "
         f"retain risk always. They come from the regulariser's pool: the first {s['pool_authors']} retain authors "
         "outside the evaluated retain rows"],
        ["learning rates", "one grid for every variant: " + ", ".join(f"{lr:g}" for lr in s["lr_grid"])
         + " (forget01, seed 0)" + added_note(result)],
        ["selection rule (fixed before any run)", f"the highest forget quality among a variant's grid runs that "
         f"keep ≥ {s['mu_keep']:.0%} of the target's model utility (at equal forget quality, the higher model "
         "utility); if none does, the highest model utility"],
        ["seeds", ", ".join(str(x) for x in s["seeds"]) + " (data order and everything random in a run)"],
        ["G-effect", f"`GEffectCallback(terms=True, coarse_groups=True, measure_update=True)`, {every} optimiser "
         f"steps; risks: the mean answer NLL of the step's forget rows and of its retain rows; depth groups of the "
         f"{s['num_blocks']} blocks: shallow = blocks 0–{b0 - 1}, middle = {b0}–{b1 - 1}, "
         f"deep = {b1}–{s['num_blocks'] - 1} (+ final norm); embedding and LM head apart"],
        ["evaluation", f"every row of the forget split, real authors, world facts and holdout; the first "
         f"{s['retain_eval_rows']} rows of retain_perturbed (model utility's retain part; never in the regulariser's "
         f"pool); greedy, {s['max_new_tokens']} new tokens; the same for the references and every unlearned model"],
        ["machine", machines(result)],
    ]  # fmt: skip
    return table(["", ""], rows)


def machines(result: Mapping[str, Any]) -> str:
    """The machine kinds the seed runs ran on, with their counts (a run made before runs recorded it: not
    recorded)."""
    counts = Counter(run.get("machine") for run in result["runs"])
    kinds = sorted(counts, key=lambda kind: (kind is None, str(kind)))  # the unrecorded last
    return "; ".join(f"{kind or 'not recorded'} ({counts[kind]} seed runs)" for kind in kinds)


def variants_table(result: Mapping[str, Any]) -> list[str]:
    """Every variant: its objective, form, preset and the hyperparameters its runs got."""
    rows = []
    for name in variant_order(result):
        v = result["variants"][name]
        h = dict(v["hyperparameters"])
        if h.get("retain_loss") == "none":
            h.pop("retain_weight", None)
            h.pop("kl_positions", None)
        elif h.get("retain_loss") == "nll":
            h.pop("kl_positions", None)
        h.pop("weight_decay", None)
        params = ", ".join(f"{k} {val:g}" if isinstance(val, float) else f"{k} {val}" for k, val in h.items())
        rows.append([name, v["objective"], v["form"], f"`configs/tofu_paper/{v['config']}`", params])
    return table(["variant", "objective", "form", "preset", "hyperparameters"], rows)


def references_table(result: Mapping[str, Any]) -> list[str]:
    """The target and each split's retain model, under the same evaluation."""
    rows = []
    for split, refs in result["references"].items():
        for key, label in (("target", "target (before unlearning)"), ("retain", "retain model (never saw the split)")):
            r = refs[key]
            rows.append([split, label, fmt(r["forget_quality"]), fmt(r["model_utility"]),
                         fmt(r["forget/rouge_l_recall"]), fmt(r["forget/answer_loss"])])  # fmt: skip
    return table(["split", "model", "forget quality", "model utility", "forget ROUGE-L", "forget answer NLL"], rows)


PAGE_INTRO = """\
# Results v2: the G-effect paper's comparison and analyses at tiny scale

> Generated by `python benchmarks/tofu_tiny.py report` from `docs/figures/tofu_tiny.json`; every number and every
> verdict on this page comes from that JSON (`tests/test_results_page.py` regenerates the page from it and compares).
> Do not edit it by hand. Version 1 (one seed, a 3-block model, evaluated retain rows inside the regulariser's pool)
> is in the history at commit `6e010dd`.

This page asks whether the claims of Wang et al. (ICLR 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond") hold on a tiny Llama trained from scratch on TOFU, with the paper's objectives in the form
of its code (the tiny presets of `configs/tofu_paper/`, without a retain term), each also with a GD (retain NLL) and a
KL (to the target) regulariser of weight {weight}, and TNPO/WTNPO also without the ε its code adds to their weights (the
variants table under Protocol lists every setting). The paper's own `npo_kl` ties NPO's KL weight to β
(`configs/tofu_paper/tiny_npo_kl.yaml`); here every family gets the same weight, so that GD and KL compare alike.
The G-effect throughout is the paper's: the unlearning term's, measured apart from the regulariser's in the same step.
"""

PAGE_SCALE = """\
## What this scale can and cannot show

- **Tiny model.** {model}. It learned its TOFU authors by heart (forget01 answer NLL {target_nll} before
  unlearning), so forgetting here is removing memorised strings, not paraphrasable knowledge; the truth ratio, which
  forget quality is built on, is weaker evidence of knowledge in a model this small. The quickstart keeps the 3-block
  model of `configs/tofu_tiny/` so that `make quickstart` stays short; this 6-block one is built for this page only.
- **{retain_head}** {retain_line} Forget quality compares the unlearned model's truth ratios on the forget
  split with its split's retain model's, so a retain model trained to the target's level could move every forget
  quality on this page.
- **Model utility's real-authors and world-facts rows were in the target's training data.** A real LLM knows them
  from pre-training; this target memorised them with the TOFU authors. Here those components therefore measure
  damage to other memorised QA pairs, not to general knowledge.
- **Forget quality is coarse on forget01**: 40 items, so the KS statistic moves in steps of 1/40 and p-values jump
  between a few rungs; read differences of one or two rungs as noise. forget05 and forget10 have 200 and 400 items.
- **{n_seeds} seeds** give a spread, not a significance level: the sign and binomial tests quoted above are on the
  pairs and runs the JSON holds and treat them as independent, which seeds of one model are not entirely.
- **What it cannot show:** numbers comparable to the paper's Phi-1.5 or Llama-2-7B tables, or a depth profile of a
  32-block network. The paper presets for those models ship in `configs/tofu_paper/` for whoever has the GPUs.
"""


def render_page(result: Mapping[str, Any]) -> str:
    """``docs/results.md``: the whole page, from ``result`` alone."""
    split = analysis_split(result)
    t = worker_seconds(result)
    weights = {v["hyperparameters"]["retain_weight"] for v in result["variants"].values() if v["form"] != "paper"}
    out = [
        PAGE_INTRO.format(weight="/".join(f"{w:g}" for w in sorted(weights))),
        "## Verdicts",
        "",
        *verdicts(result),
        *instance_verdict(result),
        "",
    ]
    out += ["## Protocol", "", *setup_table(result), "", *variants_table(result), ""]
    models_time = (
        f"; building the models: {t['models'] / 3600:.2f} worker-hours "
        f"({t['models_recorded']} of {t['models_total']} models timed by the cache)"
        if t["models_recorded"]
        else "; the models' build time is not in the JSON (built before the cache recorded it)"
    )
    out += [
        f"Measured time of the {t['count']} runs (the unlearning runs and the instance experiment's two ranking "
        "runs), training and evaluation: "
        f"{t['runs'] / 3600:.2f} worker-hours (one torch thread each, {result['setup']['workers']} at a time"
        + (f" on a {result['setup']['cpu_count']}-core machine" if result["setup"].get("cpu_count") else "")
        + ")"
        + models_time
        + ".",
        "",
        time_line(result),
        "",
        coverage_line(result),
        "",
        "Reproduce (each stage caches its runs under `outputs/tofu_tiny_deep/runs/` and resumes where it stopped):",
        "",
        "```bash",
        "export LIT_UNLEARN_TOFU_DIR=/path/to/tofu",
        "python benchmarks/tiny_deep_models.py              # the target and a retain model per forget split",
        "python benchmarks/tofu_tiny.py select              # the learning-rate grid on forget01, seed 0",
        "python benchmarks/tofu_tiny.py seeds               # every variant x split x seed at its selected rate",
        "python benchmarks/tofu_tiny.py instances           # the ranking and the forget10 quarters",
        "python benchmarks/tofu_tiny.py collect             # every cached cell into the JSON (no new run)",
        "python benchmarks/tofu_tiny.py report              # this page and its figures, from the JSON only",
        "```",
        "",
        "The numbers reproduce on the machine kind that made them: the models train and unlearn in float32 on the "
        "CPU's own kernels, and another CPU kind sums in another order. Before adding runs, a stage checks that the "
        "references it evaluates read exactly as the JSON's and refuses otherwise (models rebuilt elsewhere do not); "
        "references a cache already holds are read back, not evaluated again, so each seed run made from now on also "
        "records the machine kind it ran on (the Protocol table's machine row; the runs here predate that record). "
        "`--out` and `--page` elsewhere start a new JSON and page.",
        "",
        "### References",
        "",
        *references_table(result),
        "",
        "## Removal vs retention",
        "",
        "### Learning-rate selection (forget01, seed 0; ✗: below the utility bar)",
        "",
        *selection_table(result),
        "",
        *edge_note(result),
        "### Forget quality and model utility over seeds",
        "",
        *main_table(result),
        "",
        *rate_note(result),
        f"![Forget quality vs model utility per variant ({', '.join(run_splits(result))})]"
        "(figures/tofu_tiny_fq_mu.png)",
        "",
        "### KL vs GD, paired by family, split and seed",
        "",
        *kl_vs_gd_table(result)[0],
        "",
        "Pairs counted by outcome (a pair whose two runs tie exactly falls in none); the last column counts, among"
        " them, the pairs whose two runs both keep under half of the target's model utility.",
        "",
        "## G-effects",
        "",
        "Sign convention (the paper's): a step changes a risk by about −lr × G-effect, so a negative G-effect on the "
        "forget risk is removal and a negative one on the retain risk is collateral damage.",
        "",
        f"![The unlearning term's G-effect over the steps ({split}, seed 0)](figures/tofu_tiny_g_effect_steps.png)",
        "",
        f"### Per layer group ({split}, mean over seeds and measured steps)",
        "",
        *layer_table(result, split),
        "",
        f"![Mean G-effect per layer group on the forget risk ({split})](figures/tofu_tiny_g_effect_layers.png)",
        "",
        "### GA's inverse-confidence runaway: late vs early unlearning G-effect",
        "",
        *runaway_table(result),
        "",
    ]
    if result.get("instances"):
        inst = result["instances"]
        out += [
            "## The instance experiment (forget10)",
            "",
            f"{inst['variant']} at learning rate {inst['ranking_lr']:g} on all of forget10 (seed 0, "
            f"{inst['ranking_epochs']} epoch{'s' if inst['ranking_epochs'] != 1 else ''}, the G-effect measured at "
            "every step) writes the ranking: each example's objective-side G-effect on the retain risk (the pool's "
            "retain rows of its step), summed over the steps it was measured in (once per epoch). "
            f"{ranking_state(inst)} Then the same objective at lr {inst['lr']:g} "
            f"unlearns only the top, the bottom or a random {inst['fraction']:.0%} of the rows, seeds "
            f"{', '.join(map(str, inst['seeds']))}; "
            "forget quality is still measured on all of forget10.",
            "",
            *instance_table(result),
            "",
        ]
    refs = result["references"]
    retain_line = (
        "Model utility of the target against each split's retain model: "
        + "; ".join(
            f"{split}: {fmt(r['target']['model_utility'])} vs {fmt(r['retain']['model_utility'])}"
            for split, r in refs.items()
        )
        + "."
    )
    weaker = all(r["retain"]["model_utility"] < r["target"]["model_utility"] for r in refs.values())
    out += [
        PAGE_SCALE.format(
            retain_head="The retain models learned less than the target." if weaker else "Retain models and target.",
            model=result["setup"]["model_description"],
            target_nll=fmt(refs["forget01"]["target"]["forget/answer_loss"]),
            retain_line=retain_line,
            n_seeds=len(result["setup"]["seeds"]),
        )
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ figures
def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


MU_ZERO, MU_ZERO_SPREAD = 5e-4, 0.012
"""Model utility below 5e-4 reads 0 at 3 digits; such cells are drawn hollow, 0.012 apart leftwards from 0, so that
each stays visible."""


def plot_fq_mu(result: Mapping[str, Any], path: Path) -> Path:
    """One panel per split: each variant's median forget quality (range bars) against mean model utility (sd bars),
    the references, the FQ = 0.05 line and the two utility bars the verdicts use (the selection rule's share of the
    target's model utility and the collapse bar). An ε = 0 variant is a cross, drawn over its ε = 1e-5 twin so that
    both stay visible where they coincide (a cell at zero utility takes its own slot left of 0 instead)."""
    groups = cells(result["runs"])
    splits = run_splits(result)
    fig, axes = _figure(1, len(splits), 5.6 * len(splits), 4.6)
    markers = {"paper": "o", "GD": "s", "KL": "^"}
    families = sorted({v["family"] for v in result["variants"].values()})
    colors = {f: f"C{i}" for i, f in enumerate(families)}
    for ax, split in zip(axes[0], splits, strict=True):
        at_zero = 0  # cells whose mean model utility is 0 to 3 digits: drawn side by side, not on top of each other
        for name in variant_order(result):
            runs = groups.get((name, split), [])
            if not runs:
                continue
            variant = result["variants"][name]
            eps_zero = "eps" in " ".join(variant["overrides"])
            marker = "x" if eps_zero else markers[variant["form"]]
            fq, mu = metric(runs, "forget_quality"), metric(runs, "model_utility")
            x, y = statistics.fmean(mu), statistics.median(fq)
            spread = x < MU_ZERO
            if spread:  # leftwards from 0, hollow: no real model utility lies there, so none is suggested
                x, at_zero = -at_zero * MU_ZERO_SPREAD, at_zero + 1
            sd = statistics.stdev(mu) if len(mu) > 1 else 0.0
            ax.errorbar(
                x, y, xerr=sd, yerr=[[y - min(fq)], [max(fq) - y]], fmt=marker,
                color=colors[variant["family"]], markersize=8 if eps_zero else 6, capsize=2, linewidth=0.8,
                markerfacecolor="none" if spread else colors[variant["family"]], zorder=3 if eps_zero else 2,
                label=name if split == splits[0] else None,
            )  # fmt: skip
        for key, marker in (("target", "X"), ("retain", "*")):
            ref = result["references"][split][key]
            ax.scatter(ref["model_utility"], ref["forget_quality"], marker=marker, s=120, color="black", zorder=5)
            ax.annotate(key, (ref["model_utility"], ref["forget_quality"]), xytext=(5, 4), textcoords="offset points")
        target_mu = result["references"][split]["target"]["model_utility"]
        xlim = ax.get_xlim()  # a bar outside the cells' range is left out, not given room that squeezes the cells
        for share, style in ((result["setup"]["mu_keep"], ":"), (COLLAPSE, "-.")):
            ax.axvline(
                share * target_mu, color="grey", linestyle=style, linewidth=1,
                label=f"MU = {share:.0%} of the target's" if split == splits[0] else None,
            )  # fmt: skip
        ax.set_xlim(xlim)
        ax.axhline(
            FQ_THRESHOLD,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"FQ = {FQ_THRESHOLD:g}" if split == splits[0] else None,
        )
        ax.set_yscale("log")
        ax.set_title(f"{split}: removal vs retention")
        zeros = f"\nhollow: the {at_zero} cells below {MU_ZERO:g}, spread leftwards from 0" if at_zero > 1 else ""
        ax.set_xlabel(f"model utility (mean ± sd over seeds){zeros}")
        ax.set_ylabel("forget quality (median, range over seeds)")
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def plot_g_effect_curves(result: Mapping[str, Any], path: Path, split: str) -> Path:
    """The unlearning term's G-effect over the steps, on the forget and on the retain risk, per paper-form variant
    (seed 0); the zero line marks the sign the paper reads."""
    groups = cells(result["runs"])
    fig, axes = _figure(1, 2, 12.0, 4.2)
    for ax, risk in zip(axes[0], ("forget", "retain"), strict=True):
        for name in variant_order(result):
            if result["variants"][name]["form"] != "paper":
                continue
            runs = groups.get((name, split), [])
            if not runs:
                continue
            seed0 = [r for r in runs if r["spec"]["seed"] == 0]
            if not seed0:
                continue
            g = seed0[0]["g_effect"]
            ys = g.get(f"{risk}/unlearn/total")
            if ys:
                ax.plot(g["steps"], ys, label=name, linewidth=1.3)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(f"unlearning term's G-effect on the {risk} risk ({split}, seed 0)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("G-effect e = ∇R·∇L_unlearn (symlog)")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def plot_layer_bars(result: Mapping[str, Any], path: Path, split: str) -> Path:
    """Mean G-effect per layer group on the forget risk: the unlearning term (solid) beside the regulariser (hatched),
    one panel per family, over seeds and steps."""
    groups = cells(result["runs"])
    families = sorted({v["family"] for v in result["variants"].values()})
    fig, axes = _figure(1, len(families), 3.6 * len(families), 5.0)
    for ax, family in zip(axes[0], families, strict=True):
        names = [n for n in variant_order(result) if result["variants"][n]["family"] == family]
        width = 0.8 / len(names)
        heights = [0.0]
        for i, name in enumerate(names):
            runs = groups.get((name, split), [])
            for term, hatch in (("unlearn", None), ("regularizer", "//")):
                per_run = [p for p in (_depth_means(r, "forget", term) for r in runs) if p]
                if not per_run:
                    continue
                means = [statistics.fmean(p.get(g, 0.0) for p in per_run) for g in GROUPS]
                heights += means
                xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(GROUPS))]
                ax.bar(
                    xs, means, width * 0.9, color=f"C{i}", hatch=hatch, alpha=0.9 if hatch is None else 0.45,
                    label=f"{name} ({term})",
                )  # fmt: skip
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xticks(range(len(GROUPS)), GROUPS, rotation=30, fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-3)
        # Half a decade beyond the tallest bar each way: symlog's autoscaling can cut a bar's end off.
        ax.set_ylim(min(heights) * 3, max(heights) * 3)
        ax.set_title(family, fontsize=9)
        ax.set_ylabel("mean G-effect on the forget risk (symlog)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below: bars stay visible
    fig.savefig(path, dpi=110)
    return path


def write_all(result: Mapping[str, Any], out: Path, page: Path) -> list[Path]:
    """Write the page and the figures (into ``out``); returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(result), encoding="utf-8")
    split = analysis_split(result)
    return [
        page,
        plot_fq_mu(result, out / "tofu_tiny_fq_mu.png"),
        plot_g_effect_curves(result, out / "tofu_tiny_g_effect_steps.png", split),
        plot_layer_bars(result, out / "tofu_tiny_g_effect_layers.png", split),
    ]
