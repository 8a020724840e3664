"""The verdict of a comparison: one honest headline from the rewards *and* the checks.

    from workbench.verdict import judge
    v = judge(rewards={"total": {...}, "length": {...}}, checks={"degenerate": {...}, ...}, n_prompts=24)
    v.level        # "better" | "hacked" | "worse" | "mixed" | "unclear" | "too few"
    v.headline     # "Reward up, but the answers got worse: 11 of 24 tuned answers are degenerate against 0 ..."

Each summary row holds base_mean, tuned_mean, diff, ci_low, ci_high (a paired bootstrap 95% CI of tuned − base).
A change counts only when its CI excludes zero. The rule the product lives by: when a reward rose but a check that
judges quality (`checks.CHECKS[...].judges_quality`) got significantly worse, the verdict is "hacked" and the
headline never calls the tuned model better. Pure: no model, no I/O.

During training the same rule has a live form: `heldout_warnings(steps, evals)` warns when the held-out checks the
worker logs (`heldout.py`) got worse than at step 0 while the training reward climbed; the Train tab and
`workbench show` both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import CHECKS, NATURALNESS_TOLERANCE, REPETITION_TOLERANCE

Row = Mapping[str, Any]
LEVELS = ("better", "hacked", "worse", "mixed", "unclear", "too few")


@dataclass
class Verdict:
    level: str
    headline: str
    reasons: list[str] = field(default_factory=list)  # one sentence per significant change, worst first

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "headline": self.headline, "reasons": list(self.reasons)}


def _finite(*vals: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)


def significant(row: Row) -> int:
    """+1 when tuned − base is above zero with 95% confidence, −1 when below, 0 otherwise (or no CI)."""
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if not _finite(lo, hi):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _ci(row: Row) -> str:
    return f"{row['diff']:+.3g}, 95% CI {row['ci_low']:+.3g} to {row['ci_high']:+.3g}"


def check_change(name: str, row: Row) -> int:
    """+1 when a check got significantly better, −1 significantly worse, 0 otherwise (or it has no direction)."""
    info = CHECKS.get(name)
    s = significant(row)
    if info is None or info.better is None or s == 0:
        return 0
    if name == "naturalness" and s < 0 and not row["diff"] < -NATURALNESS_TOLERANCE:
        return 0  # drift within the tolerance: reported, not held against the model
    if name == "repetition" and s > 0 and not row["diff"] > REPETITION_TOLERANCE:
        return 0  # a few more repeated 3-grams: reported, not held against the model
    return s if info.better == "higher" else -s


def describe_check(name: str, row: Row, n_prompts: int) -> str:
    """A plain sentence for a check's change, in the units a person reads it in."""
    b, t = row.get("base_mean"), row.get("tuned_mean")
    if name in ("degenerate", "truncated") and _finite(b, t):
        what = "degenerate" if name == "degenerate" else "cut at the length cap"
        nb, nt = round(b * n_prompts), round(t * n_prompts)
        return f"{nt} of {n_prompts} tuned answers are {what} against {nb} for the base"
    if name == "correct" and _finite(b, t):
        return f"correct answers {b:.0%} → {t:.0%} ({_ci(row)})"
    if name == "naturalness" and _finite(b, t):
        return (
            f"the answers drifted from the base model's language: log-probability per token under the base "
            f"{b:.2f} → {t:.2f} ({_ci(row)})"
        )
    if name == "repetition" and _finite(b, t):
        return f"repeated 3-grams {b:.0%} → {t:.0%} of the text ({_ci(row)})"
    return f"{name} {b:.3g} → {t:.3g} ({_ci(row)})" if _finite(b, t) else name


def judge(rewards: Mapping[str, Row], checks: Mapping[str, Row], n_prompts: int) -> Verdict:
    """The headline for a comparison of `n_prompts` paired prompts (see the module docstring for the rules)."""
    if n_prompts < 2 or not any(_finite(r.get("ci_low"), r.get("ci_high")) for r in rewards.values()):
        return Verdict(
            "too few",
            f"{n_prompts} prompt{'s' * (n_prompts != 1)}: too few for a confidence interval. Read the answers, "
            "or compare on the held-out prompts.",
        )
    singles = {k: r for k, r in rewards.items() if k != "total"}
    key = "total" if "total" in rewards and len(singles) != 1 else next(iter(singles or rewards))
    main = rewards[key]
    up = [k for k, r in singles.items() if significant(r) > 0]
    down = [k for k, r in singles.items() if significant(r) < 0]
    reward_up = significant(main) > 0 or (bool(up) and not down)
    worse = [
        k for k, r in checks.items() if CHECKS.get(k) and CHECKS[k].judges_quality and check_change(k, r) < 0
    ]
    better = [
        k for k, r in checks.items() if CHECKS.get(k) and CHECKS[k].judges_quality and check_change(k, r) > 0
    ]
    worse.sort(key=list(CHECKS).index)
    reasons = [describe_check(k, checks[k], n_prompts) for k in worse]
    reasons += [f"{k} rose ({_ci(rewards[k])})" for k in up] + [f"{k} fell ({_ci(rewards[k])})" for k in down]
    reasons += [describe_check(k, checks[k], n_prompts) for k in better]
    what = f"{'the total reward' if key == 'total' else key} ({_ci(main)})"
    if worse and reward_up:
        return Verdict(
            "hacked",
            f"Reward up, but the answers got worse: {reasons[0]}. Likely reward hacking: the reward was satisfied, "
            f"not the intent. {what[:1].upper() + what[1:]} rose on {n_prompts} prompts; read the answers and add a term "
            "that rules this out.",
            reasons,
        )
    if worse:
        return Verdict("worse", f"The tuned model is worse: {reasons[0]}.", reasons)
    if significant(main) < 0:
        return Verdict("worse", f"The tuned model is worse on {what}, over {n_prompts} prompts.", reasons)
    # Without a reward gain, only more correct answers make a model better: fewer repeats alone are no gain.
    if reward_up or "correct" in better:
        gained = what if reward_up else describe_check("correct", checks["correct"], n_prompts)
        caveat = f" ({', '.join(down)} fell)" if down else ""
        return Verdict(
            "better" if not down else "mixed",
            f"The tuned model is {'better' if not down else 'better on some rewards'}: {gained}{caveat}, and no "
            f"check of answer quality got worse, over {n_prompts} prompts.",
            reasons,
        )
    if down:
        return Verdict(
            "mixed", f"Mixed: {', '.join(down)} fell while the total did not move clearly.", reasons
        )
    return Verdict(
        "unclear",
        f"No clear difference on {n_prompts} prompts: no reward and no check of answer quality moved beyond its "
        "95% CI. More prompts or more training steps would tell.",
        reasons,
    )


# --- during training: the held-out checks against the training reward -------------------------------------------
HELDOUT_ANSWERS = 2  # a held-out check that moved by this many answers of the slice is worth a warning


def heldout_regressions(evals: Sequence[Row]) -> list[str]:
    """How the latest held-out evaluation is worse than the first (step 0: the base model), one sentence each:
    degenerate answers up by HELDOUT_ANSWERS or more, correct answers down by as many, or naturalness down by more
    than NATURALNESS_TOLERANCE. `evals` are the store's rows (`Run.evals()`), in step order."""
    if len(evals) < 2:
        return []
    base, last = evals[0], evals[-1]
    n = int(last.get("eval/prompts") or 0)
    out = []

    def count(row: Row, check: str) -> int | None:
        v = row.get(f"eval/checks/{check}")
        return round(v * n) if _finite(v) and n else None

    at = f"at step {last['step']} against {{}} at step {base['step']}"
    d0, d1 = count(base, "degenerate"), count(last, "degenerate")
    if d0 is not None and d1 is not None and d1 - d0 >= HELDOUT_ANSWERS:
        out.append(f"{d1} of {n} held-out answers are degenerate " + at.format(d0))
    c0, c1 = count(base, "correct"), count(last, "correct")
    if c0 is not None and c1 is not None and c0 - c1 >= HELDOUT_ANSWERS:
        out.append(f"{c1} of {n} held-out answers are correct " + at.format(c0))
    k = "eval/checks/naturalness"
    if _finite(base.get(k), last.get(k)) and last[k] < base[k] - NATURALNESS_TOLERANCE:
        out.append(f"the held-out answers drifted from the base model's language: log-probability per token "
                   f"under the base {last[k]:.2f} " + at.format(f"{base[k]:.2f}"))  # fmt: skip
    return out


def heldout_warnings(train: Sequence[Row], evals: Sequence[Row], window: int = 5) -> list[str]:
    """The warning when held-out answers got worse (heldout_regressions), saying whether the training reward climbed
    meanwhile: the training reward's mean over the first `window` steps against the last `window` steps up to the
    latest evaluation. `train` are the store's step rows ({"step", "reward", ...}). Pure: the UI and the CLI share it."""
    worse = heldout_regressions(evals)
    if not worse:
        return []
    upto = evals[-1]["step"]
    rewards = [r["reward"] for r in train if r.get("step", 0) <= upto and _finite(r.get("reward"))]
    k = max(1, min(window, len(rewards) // 2))
    early = sum(rewards[:k]) / k if rewards else math.nan
    late = sum(rewards[-k:]) / k if rewards else math.nan
    fix = ("Read the held-out answers; compare the best weights (kept by keep_best_by) rather than the last; add a "
           "reward term that rules this out, lower learning_rate, or raise beta.")  # fmt: skip
    if len(rewards) >= 2 and late > early:
        return [f"Likely reward hacking: the training reward climbed ({early:.3f} → {late:.3f} by step {upto}) "
                f"while the held-out answers got worse: {'; '.join(worse)}. {fix}"]  # fmt: skip
    return [f"The held-out answers got worse by step {upto}: {'; '.join(worse)}. {fix}"]
