"""Reward functions with TRL's contract, and the registry that names them.

    from workbench.rewards import REGISTRY, build_rewards
    from workbench.rewards import RewardSpec
    fns = build_rewards([RewardSpec("length", 1.0, {"target": 20, "unit": "words"})])
    name, fn, weight = fns[0]
    fn(prompts=["Hi"], completions=["Hello there"])      # -> [-0.9]

A reward fn is `fn(prompts, completions, **columns) -> list[float | None]`: batched, completions as text or TRL's
conversational messages, dataset columns by name (`answer=[...]`), None = "does not apply to this item". They plug
into TRL's GRPOTrainer unchanged. `REGISTRY` is the only list of names: UI choices, CLI help and validation messages
are generated from it. Themes live in submodules: text (length, format, regex, keywords, repetition, overlong),
answers (correctness: math-verify, exact/contains/numeric, reasoning-gym) and model (a reward model).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any

from . import answers, model, text
from .answers import extract_answer, is_correct, last_number, normalize_text, rg_key, rg_score, to_number
from .base import Param, Reward, RewardError, RewardInfo, completion_text, prompt_text
from .spec import RewardSpec, parse_scalar
from .text import measure

__all__ = [
    "REGISTRY",
    "Param",
    "Reward",
    "RewardError",
    "RewardInfo",
    "RewardSpec",
    "build_reward",
    "build_rewards",
    "completion_text",
    "describe",
    "extract_answer",
    "is_correct",
    "last_number",
    "measure",
    "parse_scalar",
    "normalize_text",
    "prompt_text",
    "rg_key",
    "rg_score",
    "to_number",
]

REGISTRY: dict[str, RewardInfo] = {r.name: r for m in (text, answers, model) for r in m.REWARDS}


def coerce_param(reward: str, key: str, p: Param, v: Any) -> Any:
    """Bring a value (often text from a CLI flag or a form) to the type of the parameter's default."""
    want = type(p.default)
    bad = RewardError(
        f"reward {reward!r}: {key}={v!r} must be {want.__name__} (default {p.default!r}); {key}: {p.help}"
    )
    if want is bool:
        if isinstance(v, bool):
            out = v
        elif str(v).strip().lower() in ("true", "1", "yes", "on"):
            out = True
        elif str(v).strip().lower() in ("false", "0", "no", "off"):
            out = False
        else:
            raise bad
    elif want is int:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(v, bool) or not f.is_integer():
            raise bad
        out = int(f)
    elif want is float:
        try:
            out = float(v)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(v, bool) or not math.isfinite(out):
            raise bad
    else:
        out = str(v)
    if p.choices is not None and out not in p.choices:
        raise RewardError(f"reward {reward!r}: {key}={out!r} is not one of {', '.join(map(str, p.choices))}")
    return out


def build_reward(spec: RewardSpec) -> Reward:
    """Build one reward fn from its spec; RewardError names valid rewards or parameters when the spec is wrong."""
    info = REGISTRY.get(spec.name)
    if info is None:
        close = difflib.get_close_matches(spec.name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardError(f"unknown reward {spec.name!r}{hint}: valid names are {', '.join(REGISTRY)}")
    unknown = sorted(set(spec.params) - set(info.params))
    if unknown:
        valid = ", ".join(f"{k} (default {p.default!r})" for k, p in info.params.items()) or "none"
        raise RewardError(
            f"reward {spec.name!r} has no parameter {', '.join(unknown)}; its parameters: {valid}"
        )
    params = {k: coerce_param(spec.name, k, p, spec.params.get(k, p.default)) for k, p in info.params.items()}
    return info.factory(**params)


def build_rewards(specs: Sequence[RewardSpec]) -> list[tuple[str, Callable, float]]:
    """(metric name, fn, weight) per spec; a repeated name gets _2, _3 so each logs its own curve."""
    if not specs:
        raise RewardError(f"no reward chosen: pick at least one of {', '.join(REGISTRY)}")
    out, seen = [], {}
    for spec in specs:
        if not math.isfinite(spec.weight):
            raise RewardError(f"reward {spec.name!r}: weight={spec.weight} must be a finite number")
        fn = build_reward(spec)
        seen[spec.name] = seen.get(spec.name, 0) + 1
        metric = spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}"
        fn.__name__ = metric  # TRL logs rewards/<__name__>/mean: distinct names keep curves apart there too
        out.append((metric, fn, float(spec.weight)))
    return out


def describe(name: str | None = None) -> str:
    """Readable help for one reward (or all): description and parameters with defaults, for CLI and UI."""
    infos = [REGISTRY[name]] if name else list(REGISTRY.values())
    lines = []
    for info in infos:
        lines.append(f"{info.name}: {info.description}")
        if info.needs:
            lines.append(f"    needs column(s): {', '.join(info.needs)}")
        for k, p in info.params.items():
            choices = f" [{'|'.join(map(str, p.choices))}]" if p.choices else ""
            lines.append(f"    {k}={p.default!r}{choices}: {p.help}")
    return "\n".join(lines)
