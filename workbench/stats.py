"""Paired statistics of base vs tuned: means, the paired difference with a bootstrap 95% CI, wins/ties/losses.

numpy and pandas, no torch: the Compare tab lays out its table with SUMMARY_COLUMNS before any model is loaded,
and the A/B statistics (ab_stats.py) are computed from stored scores without one.

    from workbench.stats import paired_summary, paired_frame
    paired_summary([0.1, 0.4, None], [0.5, 0.4, 0.9])   # None: the score does not apply to that prompt
    paired_frame(base_scores, tuned_scores, "reward")    # one such row per name: {name: [one value per prompt]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .checks import CHECKS

SUMMARY_COLUMNS = ["base_mean", "tuned_mean", "diff", "ci_low", "ci_high", "wins", "ties", "losses"]
TIE = 1e-9  # scores closer than this count as a tie (float noise in weighted sums)


def as_score(v: Any) -> float:
    """A score as a float; None (does not apply) as NaN."""
    return math.nan if v is None else float(v)


def paired_summary(
    base: Sequence[float | None], tuned: Sequence[float | None], n_boot: int = 2000, seed: int = 0
) -> dict[str, float | int]:
    """Means, paired difference with a bootstrap 95% CI, and wins/ties/losses of tuned over base.

    `base[i]` and `tuned[i]` score prompt i; None/NaN = the reward does not apply. Each mean is over the prompts that
    side is scored on (as TRL's nanmean); diff, CI and wins only over prompts scored on both sides. The CI is the
    2.5/97.5 percentile of `n_boot` means of prompts resampled with replacement (fixed seed: reproducible); NaN
    with fewer than 2 pairs, where resampling says nothing.
    """
    if len(base) != len(tuned):
        raise ValueError(
            f"{len(base)} base scores for {len(tuned)} tuned scores: pass one of each per prompt"
        )
    b = np.array([as_score(v) for v in base], dtype=float)
    t = np.array([as_score(v) for v in tuned], dtype=float)
    both = ~np.isnan(b) & ~np.isnan(t)
    d = t[both] - b[both]  # (n_pairs,)
    out: dict[str, float | int] = {
        "base_mean": float(np.nanmean(b)) if (~np.isnan(b)).any() else math.nan,
        "tuned_mean": float(np.nanmean(t)) if (~np.isnan(t)).any() else math.nan,
        "diff": float(d.mean()) if len(d) else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "wins": int((d > TIE).sum()),
        "ties": int((np.abs(d) <= TIE).sum()),
        "losses": int((d < -TIE).sum()),
    }
    if len(d) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))  # (n_boot, n_pairs)
        lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
        # Clamp to the observed range: percentile interpolation can step a rounding error outside it.
        out["ci_low"], out["ci_high"] = float(max(lo, d.min())), float(min(hi, d.max()))
    return out


def paired_frame(a: dict[str, list], b: dict[str, list], index: str) -> pd.DataFrame:
    """One paired_summary row per name (b − a, prompt by prompt); `a[name]` holds one value per prompt."""
    out = pd.DataFrame.from_dict({name: paired_summary(a[name], b[name]) for name in a}, orient="index")[
        SUMMARY_COLUMNS
    ].astype({"wins": int, "ties": int, "losses": int})
    out.index.name = index
    return out


def check_frame(a: dict[str, list], b: dict[str, list], graded: bool) -> pd.DataFrame:
    """paired_frame of the checks, with wins counted in each check's better direction and a "better" column;
    without a reference grader there is no "correct" row."""
    checks = paired_frame(a, b, "check")
    lower = [c for c in checks.index if CHECKS[c].better == "lower"]  # fewer degenerate answers is a win
    checks.loc[lower, ["wins", "losses"]] = checks.loc[lower, ["losses", "wins"]].to_numpy()
    checks.insert(0, "better", [CHECKS[c].better or "" for c in checks.index])
    return checks if graded else checks.drop(index="correct")
