"""The checks (`workbench/checks.py`) logged by an exported TRL script, so the big run is watched as the workbench
watches its own: the share of degenerate answers, their repetition, their correctness where a reference exists, and
their length in words.

    from workbench.lab.trl_checks import with_checks
    trainer = GRPOTrainer(..., reward_funcs=with_checks([fn for _, fn, _ in rewards], REWARDS), eval_dataset=...)

The first reward function is wrapped: it scores as before and also hands the checks of the same completions to
TRL's `log_metric`, which logs them as `checks/<name>` on training batches and `eval_checks/<name>` on the eval set.
Why not reward functions of weight 0 (TRL's usual way to log a metric): one that always returns a value would make a
completion that every real reward skips (None) count as scored, changing its total from NaN to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..checks import reference_grader, text_checks
from ..config import RewardSpec
from ..rewards import completion_text

LOGGED = ("degenerate", "repetition", "correct", "words")
_TRL_ARGS = ("trainer_state", "log_extra", "log_metric", "completion_ids", "environments")


def check_means(completions: Sequence[Any], columns: dict[str, list], specs: Sequence[RewardSpec],
                completion_ids: Sequence[Sequence[int]] | None = None) -> dict[str, float]:  # fmt: skip
    """Mean of each logged check over `completions` (correct only where a reference grades it)."""
    texts = [completion_text(c) for c in completions]
    rows = [{k: v[i] for k, v in columns.items()} for i in range(len(texts))]
    grader = reference_grader(rows, list(specs))
    tokens = [len(c) for c in completion_ids] if completion_ids is not None else [0] * len(texts)
    checks = text_checks(texts, tokens, [False] * len(texts), grader[1] if grader else None)
    out = {}
    for name in LOGGED:
        vals = [float(v) for v in checks[name] if v is not None and math.isfinite(float(v))]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


class CheckedReward:
    """A reward function that also logs the checks of the completions it scores (a class: TRL may pickle it)."""

    def __init__(self, fn: Callable, specs: Sequence[RewardSpec]):
        self.fn, self.specs = fn, list(specs)
        self.__name__ = getattr(fn, "__name__", "reward")  # TRL logs rewards/<__name__>/mean: unchanged

    def __call__(self, prompts=None, completions=(), log_metric: Callable | None = None, **kwargs: Any):
        out = self.fn(prompts=prompts, completions=completions, log_metric=log_metric, **kwargs)
        if log_metric is not None:
            n = len(completions)
            columns = {k: list(v) for k, v in kwargs.items()
                       if k not in _TRL_ARGS and isinstance(v, (list, tuple)) and len(v) == n}  # fmt: skip
            for name, value in check_means(
                completions, columns, self.specs, kwargs.get("completion_ids")
            ).items():
                log_metric(f"checks/{name}", value)
        return out


def with_checks(fns: Sequence[Callable], specs: Sequence[RewardSpec]) -> list[Callable]:
    """`fns` with the first one logging the checks as well."""
    fns = list(fns)
    return [CheckedReward(fns[0], specs), *fns[1:]] if fns else fns
