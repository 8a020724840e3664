"""The statistics of an A/B of reward designs: each variant against the base, pairs of variants, the ranking.

Pure (pandas and numpy, no model): `compare_many.py` feeds it the scores of every side, tests feed it canned ones.

    from workbench.ab_stats import summarise
    ab = summarise(scores, designs, graded=True, n_prompts=24)
    # scores[side] = {"rewards": {label: [one value per prompt]}, "checks": {check: [...]}}, side = "base" or a variant
    # designs[variant] = [(reward label, weight), ...]: what that variant was trained on
    ab.verdicts["quick"].level, ab.ranking, ab.pairs

Each variant against the base is what `workbench compare RUN` would say of it alone: the paired statistics of
every reward and check, and the verdict (`verdict.judge`) from the variant's own rewards and total and the checks.
Each pair of variants (a, b) gets b − a on the same prompts, with a paired 95% CI, on every reward, every
variant's total and every check.

The ranking rule (RANKING_RULE), in order: the verdict against the base (better > unclear > mixed > worse >
hacked > too few); then more correct answers, where the prompts carry a reference; then fewer degenerate answers;
then higher naturalness. A variant's own reward never ranks it: every design scores its own behaviour well by
construction, which is exactly what an A/B of designs must not trust. Beside each rank the table says what
separates the variant from the next one: a better verdict, or a check of answer quality whose pairwise 95% CI
excludes zero; when neither does, it says so, and the order between the two is a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from .checks import CHECKS
from .grpo.advantages import to_floats, weighted_rewards
from .stats import SUMMARY_COLUMNS, check_frame, paired_frame
from .verdict import Verdict, check_change, judge

LEVEL_ORDER = ("better", "unclear", "mixed", "worse", "hacked", "too few")
RANKING_RULE = (
    "Ranked by the verdict against the base (better > unclear > mixed > worse > hacked), then by more correct "
    "answers, then by fewer degenerate answers, then by higher naturalness; never by a variant's own reward."
)
QUALITY = [c for c, info in CHECKS.items() if info.judges_quality]  # checks that can separate two variants
PAIR_COLUMNS = ["a", "b", "kind", "name", "better", "a_mean", "b_mean", "diff", "ci_low", "ci_high", "wins",
                "ties", "losses"]  # fmt: skip


def total_label(variant: str) -> str:
    """The column of a variant's own weighted total, scored on every side."""
    return f"total@{variant}"


@dataclass
class ABStats:
    """`summaries[v]`: v against the base (kind, name, better, SUMMARY_COLUMNS); `verdicts[v]`; `pairs`: b − a per
    pair of variants (PAIR_COLUMNS); `ranking`: one row per variant, best first."""

    summaries: dict[str, pd.DataFrame]
    verdicts: dict[str, Verdict]
    pairs: pd.DataFrame
    ranking: pd.DataFrame


def add_totals(scores: dict[str, dict[str, Any]], designs: dict[str, list[tuple[str, float]]]) -> None:
    """Add each variant's own weighted total ("total@NAME") to every side's rewards, in place. The sum is the
    training total's (grpo.advantages.weighted_rewards): a reward that does not apply counts 0, none applying = NaN."""
    for side in scores.values():
        rewards = side["rewards"]
        for v, design in designs.items():
            per_func = to_floats(
                [[np.nan if x is None else x for x in rewards[k]] for k, _ in design]
            ).T  # (N, F)
            rewards[total_label(v)] = weighted_rewards(per_func, [w for _, w in design]).tolist()


def summarise(scores: dict[str, dict[str, Any]], designs: dict[str, list[tuple[str, float]]], graded: bool,
              n_prompts: int) -> ABStats:  # fmt: skip
    """Every variant against the base, every pair, the verdicts and the ranking (see the module docstring).
    `scores` must already hold the totals (add_totals)."""
    variants = list(designs)
    base = scores["base"]
    summaries, verdicts = {}, {}
    for v in variants:
        rewards = paired_frame(base["rewards"], scores[v]["rewards"], "name")
        checks = check_frame(base["checks"], scores[v]["checks"], graded)
        summaries[v] = _stack(rewards, checks)
        # the verdict reads what v was trained on (its rewards, its total) and the checks, as a 2-way compare does
        own = {k: rewards.loc[k].to_dict() for k, _ in design_labels(designs[v])}
        own["total"] = rewards.loc[total_label(v)].to_dict()
        verdicts[v] = judge(own, checks.to_dict(orient="index"), n_prompts)
    pairs = []
    for a, b in combinations(variants, 2):
        rewards = paired_frame(scores[a]["rewards"], scores[b]["rewards"], "name")
        checks = check_frame(scores[a]["checks"], scores[b]["checks"], graded)
        pairs.append(_stack(rewards, checks).assign(a=a, b=b))
    pair_frame = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=PAIR_COLUMNS)
    pair_frame = pair_frame.rename(columns={"base_mean": "a_mean", "tuned_mean": "b_mean"})[PAIR_COLUMNS]
    return ABStats(summaries, verdicts, pair_frame, rank(summaries, verdicts, pair_frame, n_prompts))


def design_labels(design: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return list(dict.fromkeys(design))


def _stack(rewards: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    r = rewards.reset_index().assign(kind="reward", better="higher")
    c = checks.reset_index().rename(columns={"check": "name"}).assign(kind="check")
    return pd.concat([r, c], ignore_index=True)[["kind", "name", "better", *SUMMARY_COLUMNS]]


def _check(summary: pd.DataFrame, name: str, col: str = "tuned_mean") -> float:
    row = summary[(summary["kind"] == "check") & (summary["name"] == name)]
    return float(row[col].iloc[0]) if len(row) and _finite(row[col].iloc[0]) else math.nan


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating)) and math.isfinite(x)


def rank_key(level: str, correct: float, degenerate: float, natural: float) -> tuple:
    """The ranking rule as a sort key (smaller = better); a check that was not measured does not order."""
    return (LEVEL_ORDER.index(level) if level in LEVEL_ORDER else len(LEVEL_ORDER),
            -correct if _finite(correct) else 0.0, degenerate if _finite(degenerate) else 0.0,
            -natural if _finite(natural) else 0.0)  # fmt: skip


def rank(summaries: dict[str, pd.DataFrame], verdicts: dict[str, Verdict], pairs: pd.DataFrame,
         n_prompts: int) -> pd.DataFrame:  # fmt: skip
    """One row per variant, best first, with what ranked it and what separates it from the next one."""
    rows = []
    for v, s in summaries.items():
        own = s[s["name"] == total_label(v)].iloc[0]
        rows.append({"variant": v, "verdict": verdicts[v].level, "correct": _check(s, "correct"),
                     "degenerate": _check(s, "degenerate"), "naturalness": _check(s, "naturalness"),
                     "repetition": _check(s, "repetition"), "words": _check(s, "words"),
                     "own_reward_diff": own["diff"], "own_reward_ci_low": own["ci_low"],
                     "own_reward_ci_high": own["ci_high"]})  # fmt: skip
    rows.sort(key=lambda r: rank_key(r["verdict"], r["correct"], r["degenerate"], r["naturalness"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        r["ahead_of_next"] = "" if nxt is None else separation(r, nxt, pairs)
    base = next(iter(summaries.values())) if summaries else None
    out = pd.DataFrame(rows)
    if base is not None:  # the base model's own checks, for reference (the same in every summary)
        out.attrs["base"] = {c: _check(base, c, "base_mean") for c in ("correct", "degenerate", "naturalness",
                                                                      "repetition", "words")}  # fmt: skip
    cols = ["rank", "variant", "verdict", "correct", "degenerate", "naturalness", "repetition", "words",
            "own_reward_diff", "own_reward_ci_low", "own_reward_ci_high", "ahead_of_next"]  # fmt: skip
    return out[cols] if len(out) else pd.DataFrame(columns=cols)


def pair_row(pairs: pd.DataFrame, x: str, y: str, name: str) -> dict[str, Any] | None:
    """The comparison of x against y on `name` as "y is the base, x the tuned" (diff = x − y), whichever order
    `pairs` holds them in."""
    hit = pairs[(pairs["a"] == y) & (pairs["b"] == x) & (pairs["name"] == name)]
    if len(hit):
        return hit.iloc[0].rename({"a_mean": "base_mean", "b_mean": "tuned_mean"}).to_dict()
    hit = pairs[(pairs["a"] == x) & (pairs["b"] == y) & (pairs["name"] == name)]
    if not len(hit):
        return None
    r = hit.iloc[0].to_dict()
    flip = {"base_mean": r["b_mean"], "tuned_mean": r["a_mean"], "diff": -r["diff"], "ci_low": -r["ci_high"],
            "ci_high": -r["ci_low"], "wins": r["losses"], "losses": r["wins"]}  # fmt: skip
    return {**r, **flip}


def separation(x: dict[str, Any], y: dict[str, Any], pairs: pd.DataFrame) -> str:
    """Why x ranks above y, in words: the verdict, or the quality checks whose paired CI says so; or that nothing
    does (the order is then a guess)."""
    if x["verdict"] != y["verdict"]:
        return f"verdict: {x['verdict']} vs {y['verdict']}"
    ahead, behind = [], []
    for name in QUALITY:
        row = pair_row(pairs, x["variant"], y["variant"], name)
        if row is None:
            continue
        s = check_change(name, row)  # +1: x is significantly better than y on this check
        text = f"{name} {row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
        (ahead if s > 0 else behind if s < 0 else []).append(text)
    if ahead and not behind:
        return "ahead on " + ", ".join(ahead)
    if behind:
        lead = f"ahead on {', '.join(ahead)}; " if ahead else "ranked above on the means, yet "
        return f"{lead}behind on {', '.join(behind)}"
    return f"not separated from {y['variant']}: no check of answer quality differs beyond its 95% CI"
