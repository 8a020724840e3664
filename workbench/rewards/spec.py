"""A reward of a run as settings: `RewardSpec` (a registry name, a weight, parameters) and its text form
`name[:weight][,key=value,...]`, which the CLI, the UI and the config files share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class RewardSpec:
    """One reward function of a run: a registry name, its weight in the total, and its parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a config file's JSON can put anything in each place
        if not isinstance(self.name, str):
            raise ConfigError(f"a reward's name must be text, e.g. 'length', got {self.name!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise ConfigError(
                f"reward {self.name!r}: its weight must be a number, e.g. 1.0, got {self.weight!r}"
            )
        if not isinstance(self.params, dict) or not all(isinstance(k, str) for k in self.params):
            raise ConfigError(
                f'reward {self.name!r}: its params must be an object of settings, e.g. {{"target": 12}}, '
                f"got {self.params!r}"
            )
        self.weight = float(self.weight)

    @classmethod
    def parse(cls, text: str) -> RewardSpec:
        """Parse `name[:weight][,key=value,...]`, e.g. `length:1.0,target=20,unit=words`."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ConfigError("a reward is empty: write it as 'name:weight', e.g. 'length:1.0'")
        head, *kvs = parts
        name, _, weight = head.partition(":")
        params: dict[str, Any] = {}
        for kv in kvs:
            if "=" not in kv:
                raise ConfigError(f"reward parameter {kv!r} in {text!r} must look like key=value")
            k, v = kv.split("=", 1)
            params[k.strip()] = parse_scalar(v.strip())
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(
                f"reward weight {weight!r} in {text!r} must be a number, e.g. {name}:0.5"
            ) from None
        return cls(name=name.strip(), weight=w, params=params)

    @classmethod
    def parse_list(cls, text: str) -> list[RewardSpec]:
        """Parse rewards written on one line, `;` between them: `length:1,target=12; contains_answer:2`."""
        return [cls.parse(p) for p in text.split(";") if p.strip()]

    def __str__(self) -> str:
        return ",".join([f"{self.name}:{self.weight:g}"] + [f"{k}={v}" for k, v in self.params.items()])


def parse_scalar(v: str) -> Any:
    """Text from `key=value` as the value it spells: an int, a float, true/false, else the text itself."""
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)
