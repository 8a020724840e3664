"""The pieces every reward module shares: parameter and registry records, the bound-reward callable, text helpers.

A reward here follows TRL's contract: `fn(prompts, completions, **columns) -> list[float | None]`, batched, dataset
columns by name, `None` = "does not apply to this item". Each registry entry names a plain module-level scoring
function; `Reward` binds it to its parameters. `Reward` is a class, not a closure, so a built reward pickles (TRL's
async rollout sends reward functions to a spawned process) and keeps a readable `__name__`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RewardError


@dataclass(frozen=True)
class Param:
    """One parameter of a reward: its default (which also fixes its type), a help text, and the allowed values."""

    default: Any
    help: str
    choices: tuple | None = None

    @property
    def type(self) -> type:
        return type(self.default)


@dataclass(frozen=True)
class RewardInfo:
    """A registry entry: what UI and CLI show, and `factory(**params) -> reward fn` to build it."""

    name: str
    description: str
    params: dict[str, Param] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # dataset columns it reads, by their default names
    factory: Callable[..., Callable] | None = None


def completion_text(c: Any) -> str:
    """The text of one completion: a plain string, or TRL's conversational `[{"role": "assistant", ...}]`."""
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return str(c.get("content") or "")
    if isinstance(c, (list, tuple)):
        # A conversational completion is normally one assistant message; join several rather than drop text.
        parts = [
            m.get("content") or ""
            for m in c
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        return "".join(str(p) for p in parts)
    return str(c)


def prompt_text(p: Any) -> str:
    """The last user turn of a prompt (text, or a list of chat messages); "" when there is none."""
    if p is None:
        return ""
    if isinstance(p, str):
        return p
    if isinstance(p, (list, tuple)):
        users = [m.get("content") or "" for m in p if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(p)


class Reward:
    """A scoring function bound to its parameters, with TRL's call signature.

    `score(texts, prompts, columns, **params)` receives plain completion texts; `needs` maps each parameter that
    names a column to its default name, so `Reward` can check the columns are there before scoring.
    """

    def __init__(self, name: str, score: Callable, params: dict[str, Any], columns: Sequence[str] = ()):
        self.__name__ = name
        self.score = score
        self.params = dict(params)
        self.needs = tuple(columns)  # the dataset columns this instance reads (after the user's renames)

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any):
        texts = [completion_text(c) for c in completions]
        prompts = list(prompts) if prompts is not None else [None] * len(texts)
        cols: dict[str, list] = {}
        for col in self.needs:
            if col not in kwargs:
                have = sorted(
                    k
                    for k in kwargs
                    if not k.startswith(("trainer_", "log_", "completion_ids", "environments"))
                )
                raise RewardError(
                    f"reward {self.__name__!r} needs a dataset column {col!r}, but the rows have "
                    f"{', '.join(have) or 'no extra columns'}: add the column or point the reward's column "
                    "parameter at the one holding the reference"
                )
            values = list(kwargs[col])
            if len(values) != len(texts):
                raise RewardError(
                    f"reward {self.__name__!r}: column {col!r} has {len(values)} values for {len(texts)} "
                    "completions; pass one value per completion"
                )
            cols[col] = values
        out = self.score(texts, prompts, cols, **self.params)
        return [None if v is None else float(v) for v in out]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"<reward {self.__name__}({args})>"


def binder(name: str, score: Callable, column_params: Sequence[str] = (), check: Callable | None = None):
    """A registry factory: validate params with `check`, then bind `score`; `column_params` name columns."""

    def factory(**params: Any) -> Reward:
        if check is not None:
            check(**params)
        return Reward(name, score, params, [params[p] for p in column_params])

    return factory


def positive(**names_values: Any) -> None:
    """Raise RewardError when any given number is not above zero (a zero target or limit divides by zero)."""
    for k, v in names_values.items():
        if v <= 0:
            raise RewardError(f"{k}={v} must be above 0")
