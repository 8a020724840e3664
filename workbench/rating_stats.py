"""What blind ratings say: your win rate for tuned over base, and how far each reward and check agrees with you.

    from workbench.rating_stats import summarize
    doc = summarize(comparison, [session, ...])     # comparison: ratings.load_comparison(); sessions: revealed ones
    doc["win_rate"]    # {"n", "tuned", "base", "tie", "both_bad", "rate", "ci_low", "ci_high", "ties": "..."}
    doc["agreement"]   # per reward and check: agreed / disagreed / tied of the pairs where you chose a side
    doc["pairs"]       # every rated pair, the ones where most rewards and checks disagree with you first
    doc["sentences"]   # "length agreed with you on 3 of 12 pairs; you preferred the longer answer 8 times"

Ties are explicit: "tie" and "both bad" count half a win to each side in the win rate (a rater who cannot tell the
two apart says the models are even), and the rate over decided pairs only (ties left out) is reported beside it.
The interval is Wilson's 95% score interval: a bootstrap over 3 pairs all won gives [1, 1], Wilson gives [0.44, 1].

Agreement reuses the comparison's own per-prompt scores: on a pair where you preferred one answer, a reward agrees
when it scored that answer higher (a check, when that answer is on its better side: fewer degenerate answers, more
natural language). Pairs the reward scored equal are counted apart; pairs it does not apply to are left out.
Checks without a better side (words, tokens) say whether you preferred the longer answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .ratings import SIDES, preferred
from .stats import TIE, as_score

Z95 = 1.959964
TIES = "ties and both-bad count half a win to each side; rate_decided leaves them out"
LENGTH_REWARDS = (
    "length",
    "shorter",
    "overlong",
)  # rewards whose sentence also says how often you chose length


def wilson(wins: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `wins / n` (wins may hold halves); NaN, NaN when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(prefs: Sequence[str]) -> dict[str, Any]:
    """Tuned over base from each rated pair's preference (base | tuned | tie | both_bad)."""
    counts = {k: sum(p == k for p in prefs) for k in ("tuned", "base", "tie", "both_bad")}
    n = len(prefs)
    wins = counts["tuned"] + 0.5 * (counts["tie"] + counts["both_bad"])
    lo, hi = wilson(wins, n)
    decided = counts["tuned"] + counts["base"]
    dlo, dhi = wilson(counts["tuned"], decided)
    return {"n": n, **counts, "rate": wins / n if n else math.nan, "ci_low": lo, "ci_high": hi,
            "decided": decided, "rate_decided": counts["tuned"] / decided if decided else math.nan,
            "decided_ci_low": dlo, "decided_ci_high": dhi, "ties": TIES}  # fmt: skip


def rated_pairs(comparison: dict[str, Any], sessions: Sequence[dict[str, Any]]) -> tuple[list[dict], int]:
    """(pairs, stale): each rating joined to its comparison row; `stale` counts ratings of answers the comparison no
    longer holds (it was run again and answered differently), which are left out."""
    rows, pairs, stale = comparison["rows"], [], 0
    for s in sessions:
        for i, r in sorted(s["ratings"].items(), key=lambda kv: int(kv[0])):
            row = rows[int(i)] if int(i) < len(rows) else None
            same = row is not None and all(row.get(side) == r[f"{side}_answer"] for side in SIDES)
            if not same or row.get("prompt") != r["prompt"]:
                stale += 1
                continue
            pairs.append({"session": s["id"], "pair": int(i) + 1, "prompt": r["prompt"], "choice": r["choice"],
                          "left": r["left"], "preferred": preferred(r), "row": row})  # fmt: skip
    return pairs, stale


def _items(comparison: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(kind, name, better) of every reward and check the comparison scored."""
    rewards = [("reward", name, "higher") for name in comparison.get("summary", {})]
    checks = [("check", name, (c.get("better") or None)) for name, c in comparison.get("checks", {}).items()]
    return rewards + checks


def _column(kind: str, name: str, side: str) -> str:
    return f"{side}/{name}" if kind == "reward" else f"{side}:{name}"


def judge_pair(row: dict[str, Any], kind: str, name: str, better: str | None) -> str | None:
    """Which model this reward or check prefers on one row: base | tuned | tie; None when it does not apply.
    A check without a better side (a length) "prefers" the longer answer."""
    b, t = (as_score(row.get(_column(kind, name, s))) for s in SIDES)
    if math.isnan(b) or math.isnan(t):
        return None
    if abs(t - b) <= TIE:
        return "tie"
    return "tuned" if (t > b) == (better != "lower") else "base"


def _words(row: dict[str, Any], side: str) -> float:
    w = as_score(row.get(f"{side}:words"))
    return w if not math.isnan(w) else len(str(row.get(side) or "").split())


def longer_chosen(pairs: Sequence[dict]) -> tuple[int, int]:
    """(times you preferred the longer answer, pairs where you chose a side and the lengths differ), in words."""
    hits = n = 0
    for p in pairs:
        if p["preferred"] not in SIDES:
            continue
        b, t = _words(p["row"], "base"), _words(p["row"], "tuned")
        if b != t:
            n += 1
            hits += (t > b) == (p["preferred"] == "tuned")
    return hits, n


def agreement(pairs: Sequence[dict], comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """Per reward and check: on the pairs where you preferred one answer, how often it preferred the same one."""
    out, chose = [], [p for p in pairs if p["preferred"] in SIDES]
    longer, of = longer_chosen(pairs)
    for kind, name, better in _items(comparison):
        verdicts = [(p, judge_pair(p["row"], kind, name, better)) for p in chose]
        applies = [(p, v) for p, v in verdicts if v is not None]
        agreed = [p["pair"] for p, v in applies if v == p["preferred"]]
        disagreed = [p["pair"] for p, v in applies if v not in ("tie", p["preferred"])]
        tied = [p["pair"] for p, v in applies if v == "tie"]
        n = len(applies)
        if better is None:
            sentence = f"{name}: you preferred the longer answer {len(agreed)} of {n} times"
        else:
            sentence = f"{name} agreed with you on {len(agreed)} of {n} pairs"
            if tied:
                sentence += f" (it scored {len(tied)} of them the same)"
            if name in LENGTH_REWARDS and of:
                sentence += f"; you preferred the longer answer {longer} time{'s' * (longer != 1)}"
        out.append({"kind": kind, "name": name, "better": better or "", "n": n, "agreed": len(agreed),
                    "disagreed": len(disagreed), "tied": len(tied), "agreement": len(agreed) / n if n else math.nan,
                    "disagree_pairs": disagreed, "agree_pairs": agreed, "sentence": sentence})  # fmt: skip
    return out


def pair_table(pairs: Sequence[dict], comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rated pair with what each reward and check preferred; the pairs where most disagree with you first:
    those are where a reward design is wrong."""
    items = _items(comparison)
    out = []
    for p in pairs:
        verdicts = {name: judge_pair(p["row"], kind, name, better) for kind, name, better in items}
        against = [n for (_, n, b) in items if b and p["preferred"] in SIDES
                   and verdicts[n] not in (None, "tie", p["preferred"])]  # fmt: skip
        out.append({"session": p["session"], "pair": p["pair"], "prompt": p["prompt"], "choice": p["choice"],
                    "left": p["left"], "preferred": p["preferred"], "base": p["row"].get("base"),
                    "tuned": p["row"].get("tuned"), "disagree": against, "prefers": verdicts,
                    "scores": {n: {side: p["row"].get(_column(k, n, side)) for side in SIDES}
                               for k, n, _ in items}})  # fmt: skip
    return sorted(out, key=lambda r: (-len(r["disagree"]), r["pair"]))


def headline(w: dict[str, Any]) -> str:
    """The win rate in one sentence, with how ties were counted."""
    if not w["n"]:
        return "No rated pairs yet."
    ties = f"{w['tie']} tie{'s' * (w['tie'] != 1)}"
    return (f"You preferred tuned on {w['tuned']} of {w['n']} pairs and base on {w['base']} ({ties}, "
            f"{w['both_bad']} both bad). Win rate tuned over base: {w['rate']:.2f}, 95% CI {w['ci_low']:.2f}–"
            f"{w['ci_high']:.2f} (ties and both-bad count half).")  # fmt: skip


def decided_text(w: dict[str, Any]) -> str:
    """The win rate with ties left out, for those who count that way."""
    if not w["decided"]:
        return "Leaving ties out, no pair is decided."
    return (
        f"Leaving ties out: tuned won {w['tuned']} of {w['decided']} decided pairs ({w['rate_decided']:.2f}, "
        f"95% CI {w['decided_ci_low']:.2f}–{w['decided_ci_high']:.2f})."
    )


def summarize(comparison: dict[str, Any], sessions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win rate, agreement per reward and check, and the rated pairs (disagreements first) over `sessions`."""
    pairs, stale = rated_pairs(comparison, sessions)
    w = win_rate([p["preferred"] for p in pairs])
    agree = agreement(pairs, comparison)
    return {"comparison_id": comparison.get("comparison_id"), "sessions": [s["id"] for s in sessions],
            "n_ratings": len(pairs), "stale": stale, "win_rate": w, "headline": headline(w),
            "decided": decided_text(w), "agreement": agree, "sentences": [a["sentence"] for a in agree if a["n"]],
            "pairs": pair_table(pairs, comparison)}  # fmt: skip
