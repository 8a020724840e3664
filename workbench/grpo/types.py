"""What the engine hands out: one `Episode` per completion, one `StepResult` per optimizer step; and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field


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
