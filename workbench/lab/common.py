"""What pre-flight, replay and the TRL check share: scoring texts as the engine does, a run's stored steps with the
task rows they were sampled from, and small statistics (quantiles, Pearson and Spearman correlation).

    per_func = score_texts(build_rewards(specs), messages, texts, rows, columns)   # (N, F) float32, NaN = None
    for step, rows, episodes in stored_steps(run, task): ...

Scores are float32 on purpose: the engine keeps per-function rewards in a float32 tensor and totals them in float32
(`grpo.advantages.weighted_rewards`), so a replay with the run's own rewards reproduces its stored totals and
advantages bit for bit. numpy only: no torch, so a replay starts in a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import RewardError
from ..rewards import prompt_text
from ..tasks import chat_messages, prompt_batches


def score_texts(rewards: Sequence[tuple[str, Callable, float]], messages: Sequence[Any], texts: Sequence[str],
                rows: Sequence[dict], columns: Sequence[str] = ()) -> np.ndarray:  # fmt: skip
    """Per-function rewards (N, F) of completion i (`texts[i]`, asked as `messages[i]`, from task row `rows[i]`).

    As `GRPOEngine.score` calls them: conversational completions, every task column passed (None where a row has
    none, so a reward says "does not apply" rather than fail). A reward that raises is a RewardError naming it.
    """
    names = dict.fromkeys([*columns, *(k for r in rows for k in r)])
    cols = {k: [r.get(k) for r in rows] for k in names if k != "prompt"}
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    out = np.full((len(texts), len(rewards)), np.nan, dtype=np.float32)  # (N, F)
    for j, (name, fn, _) in enumerate(rewards):
        try:
            vals = list(fn(prompts=list(messages), completions=completions, **cols))
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {name!r} failed: {type(e).__name__}: {e}") from e
        if len(vals) != len(texts):
            raise RewardError(f"reward {name!r} returned {len(vals)} values for {len(texts)} completions")
        for i, v in enumerate(vals):
            if v is not None:
                if not math.isfinite(float(v)):
                    raise RewardError(
                        f"reward {name!r} returned {v} for completion {i}: rewards must be finite"
                    )
                out[i, j] = float(v)
    return out


def weights_of(rewards: Sequence[tuple[str, Callable, float]]) -> np.ndarray:
    return np.asarray([w for _, _, w in rewards], dtype=np.float32)


# --- a run's stored steps ------------------------------------------------------------------------------------------
def stored_steps(
    run: Any, task: Any, steps: Sequence[int] | None = None
) -> Iterator[tuple[int, list, list, bool]]:
    """(step, the task rows of its groups, its stored episodes, matched) per stored step (or those in `steps`).

    Episodes keep only the prompt's last user turn, so the rows (full chat messages, reference columns) come from
    `tasks.prompt_batches`, the one definition of which prompts step k trains on, and are checked against the stored
    prompts. Where they differ (the task file changed since the run), the rows are the stored prompts alone and
    `matched` is False: the rewards then see no reference columns for that step.
    """
    spec = run.spec
    system = task.system_prompt_for(spec)
    have = sorted(m["step"] for m in run.metrics())
    wanted = set(have if steps is None else steps)
    batches = prompt_batches(task.train, spec.prompts_per_step, spec.seed)
    for step in range(1, (max(wanted) if wanted else 0) + 1):
        rows = next(batches)
        if step not in wanted or step not in have:
            continue
        episodes = run.episodes(step)
        if not episodes:
            continue
        stored = {e["group"]: e["prompt"] for e in episodes}
        groups = sorted(stored)
        if len(groups) == len(rows) and all(
            prompt_text(chat_messages(rows[g], system)) == stored[g] for g in groups
        ):
            yield step, list(rows), episodes, True
        else:
            yield step, [{"prompt": stored[g]} for g in groups], episodes, False


# --- statistics ---------------------------------------------------------------------------------------------------
def finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def summary(values: Any) -> dict[str, float | int | None]:
    """mean, std, min, quartiles, max of the finite values, and how many there were (n) or did not apply (n_none)."""
    a, total = finite(values), np.asarray(values, dtype=np.float64).size
    if not a.size:
        return {
            "n": 0,
            "n_none": int(total),
            **dict.fromkeys(("mean", "std", "min", "p25", "median", "p75", "max")),
        }
    q = np.quantile(a, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(a.size), "n_none": int(total - a.size), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}  # fmt: skip


def pearson(a: Any, b: Any) -> float | None:
    """Pearson correlation over the pairs where both are finite; None when fewer than 3 or either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def ranks(x: Any) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank (as Spearman's correlation needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(x.size)
    r[order] = np.arange(x.size)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=r) / counts)[inverse]


def spearman(a: Any, b: Any) -> float | None:
    """Spearman's rank correlation over the pairs where both are finite; None when it is undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(ranks(a[ok]), ranks(b[ok])) if ok.sum() >= 3 else None


def fmt(x: Any, spec: str = ".3f") -> str:
    """A number for a line of text, or "-" when missing."""
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"
