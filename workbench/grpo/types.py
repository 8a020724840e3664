"""What the engine hands out: one `Episode` per completion, one `StepResult` per optimizer step; its errors; and
`prompt_batches`, the one definition of which prompts a step trains on (the built-in engine, TRL and a resumed run
all draw from it, so they see the same prompts at the same step)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Episode:
    """One completion of one prompt: what the UI shows per group member and the store keeps per step."""

    step: int
    group: int  # index of its prompt within the step
    prompt: str  # the last user turn, for display
    completion: str
    rewards: dict[str, float | None]  # per reward function; None = did not apply
    reward: float  # weighted total
    advantage: float
    length: int  # completion tokens
    truncated: bool  # hit max_completion_length without an end-of-sequence token


@dataclass
class StepResult:
    """One optimizer step: its episodes and its metrics (named as TRL names them, plus `time/<phase>`)."""

    step: int
    episodes: list[Episode]
    metrics: dict[str, float] = field(default_factory=dict)


class RewardFunctionError(RuntimeError):
    """A reward function raised: the run stops with its name and the error, never a silent 0."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(f"{name}: {type(exc).__name__}: {exc}")
        self.name, self.exc = name, exc


class NonFiniteError(FloatingPointError):
    """A reward, the loss or the gradient norm is NaN or infinite: the run stops rather than train on it."""


def prompt_batches(
    rows: list[dict[str, Any]], prompts_per_step: int, seed: int, start_step: int = 0
) -> Iterator[list[dict[str, Any]]]:
    """Endless batches of `prompts_per_step` rows: each epoch a fresh seeded shuffle, the incomplete tail dropped.

    `start_step=k` yields what an uninterrupted run would yield from its (k+1)-th batch on (a resume).
    """
    if prompts_per_step < 1 or len(rows) < prompts_per_step:
        raise ValueError(f"need at least prompts_per_step={prompts_per_step} rows, got {len(rows)}")
    per_epoch = len(rows) // prompts_per_step
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        order = list(range(len(rows)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        for b in range(skip, per_epoch):
            yield [rows[i] for i in order[b * prompts_per_step : (b + 1) * prompts_per_step]]
        epoch, skip = epoch + 1, 0
