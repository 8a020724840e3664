"""The reward total and the group-relative advantage: TRL 1.16's formulas, written once for every caller.

The engine trains on them, the TRL engine records its episodes with them, Compare totals its scores with them and
the UI works the advantage out with them. numpy only, no torch: the web server shows these numbers without paying
torch's import (~1 s and ~230 MB). Arrays keep their float precision (the engine's float32 stays float32); a list
with None becomes float64 with NaN.

    total = weighted_rewards([[1.0, None], [0.5, 2.0]], [1.0, 0.5])    # (N,) from (N, F); None = did not apply
    adv, zero_std = group_advantages(total, group_size=2, scale="group")
"""

from __future__ import annotations

from typing import Any

import numpy as np

STD_EPS = 1e-4  # added to the std before dividing (TRL), so a group without spread gets 0, not inf


def to_floats(x: Any) -> np.ndarray:
    """`x` (nested lists, an array, a CPU tensor) as a float array; None becomes NaN."""
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(float)


def nanmean(x: Any, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """Mean ignoring NaN; NaN (and no warning) where nothing is left."""
    x = to_floats(x)
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(ok, x, 0).sum(axis=axis, keepdims=keepdims)
        return total / ok.sum(axis=axis, keepdims=keepdims).astype(x.dtype)


def nanstd(x: Any, axis: int | None = None) -> np.ndarray:
    """Unbiased standard deviation ignoring NaN, as TRL's `trl.trainer.utils.nanstd`; NaN for fewer than 2 values."""
    x = to_floats(x)
    mean = nanmean(x, axis=axis, keepdims=True)
    count = (~np.isnan(x)).sum(axis=axis).astype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(nanmean((x - mean) ** 2, axis=axis) * count / (count - 1))


def weighted_rewards(per_func: Any, weights: Any) -> np.ndarray:
    """Total reward (N,) from per-function rewards (N, F), NaN or None where a function did not apply.

    A None (NaN) counts 0 in the sum (TRL's nansum); a completion no function applies to stays NaN (unscorable).
    """
    per_func = to_floats(per_func)  # (N, F)
    total = np.nansum(per_func * np.asarray(weights, dtype=per_func.dtype)[None], axis=1)  # (N,)
    total[np.isnan(per_func).all(axis=1)] = np.nan
    return total


def group_advantages(rewards: Any, group_size: int, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(advantages (N,), std-is-zero flags (N,)) for rewards (N,) in consecutive groups of `group_size`.

    advantage = (reward - group mean) / (std + 1e-4), std over the group ("group"), the whole batch ("batch"), or
    no division ("none"). NaN rewards are left out of means and stds and get advantage 0 (TRL 1.16).
    """
    rewards = to_floats(rewards)  # (N,)
    grouped = rewards.reshape(-1, group_size)  # (N/G, G)
    mean = np.repeat(nanmean(grouped, axis=1), group_size)  # (N,)
    if scale == "batch":
        std = np.broadcast_to(nanstd(rewards), rewards.shape)
    elif scale in ("group", "none"):  # "none" uses the std for the zero-std flag only
        std = np.repeat(nanstd(grouped, axis=1), group_size)
    else:
        raise ValueError(f"scale_rewards={scale!r}: use group, batch or none")
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + STD_EPS)
    return np.nan_to_num(adv, nan=0.0), np.isclose(std, 0.0)
