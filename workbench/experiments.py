"""A/B of reward designs: 2 to 4 variants of one run spec, trained one after another on matched seeds.

    workbench train --preset quick --variant preset:length-only --variant preset:quick
    workbench train --config spec.json --variant 'length:1,target=12,unit=words' --variant task
    workbench compare EXPERIMENT_ID            # the base and every variant, ranked (compare_many.py)

    from workbench.experiments import start_experiment
    exp = start_experiment(base_spec, ["preset:length-only", {"name": "mine", "rewards": ["length:1"]}])
    exp.runs                                   # {"length-only": run id, "mine": run id}

A variant is written three ways: a reward list (`name:weight,key=value; name2:weight`, or `task` for the task's
own rewards), `preset:NAME` (that preset's settings), or a JSON object of settings with an optional "name". It
changes the base spec; it may not change what decides the prompts, their order, the held-out set and the base
model's answers (SHARED): those stay the base spec's, so every variant trains on the same prompts in the same order
and Compare asks the same held-out prompts of one base model. The runs wait in the runner's queue; as each starts
it gets the first started variant's copy of the task rows (`share_task`), so even a file or hub dataset that
changed meanwhile cannot give two variants different prompts.

Recorded as `$WORKBENCH_HOME/experiments/<id>.json` (id, base spec, per variant its name, changes and run id),
and each run folder holds `experiment.json` naming its experiment, so Compare finds the siblings of any run.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PRESETS, Limits, RewardSpec, RunSpec, json_object, workbench_home
from .errors import ConfigError, RunNotFound
from .osutil import write_json_atomic
from .recovery import EXPERIMENT_MARKER, TASK_FILE, share_task  # noqa: F401 (share_task: here too)
from .store import Run

MIN_VARIANTS, MAX_VARIANTS = 2, 4
# What a variant may not change: the training prompts and their order (task, sizes, seed, prompts per step), the
# held-out set, and what the base model is asked and how it answers in Compare (model, prompt, length, dtype).
SHARED = ("model", "task", "train_size", "eval_size", "seed", "prompts_per_step", "system_prompt",
          "max_prompt_length", "max_completion_length", "dtype", "device", "engine")  # fmt: skip
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$")  # a column prefix in Compare: no "/" or ":"
RESERVED = ("base", "prompt", "total")
EXP_ID_RE = re.compile(r"^exp-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
MARKER = EXPERIMENT_MARKER


@dataclass
class Experiment:
    """One A/B: `variants` = [{"name", "changes", "run_id"}] in queue order; `base` = the base spec (a dict)."""

    id: str
    created: float
    base: dict[str, Any]
    variants: list[dict[str, Any]] = field(default_factory=list)

    @property
    def runs(self) -> dict[str, str]:
        """Variant name -> run id, in queue order."""
        return {v["name"]: v["run_id"] for v in self.variants}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "base": self.base, "variants": self.variants}


# --- variants: parsing and the specs they make ------------------------------------------------------------------
def parse_variant(variant: str | dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(name or None, the settings it changes) from one variant as the module docstring writes it."""
    if isinstance(variant, dict):
        d = dict(variant)
    else:
        text = str(variant).strip()
        if text.startswith("{"):
            d = json_object(text, f"variant {text[:40]!r}")
        elif text.startswith("preset:"):
            name = text[len("preset:") :].strip()
            if name not in PRESETS:
                raise ConfigError(f"variant {text!r}: unknown preset, choose one of {', '.join(PRESETS)}")
            d = {"name": name, **{k: v for k, v in PRESETS[name].to_dict().items() if k not in SHARED}}
        elif text.lower() in ("task", ""):
            d = {"name": "task-rewards", "rewards": []}
        else:
            rewards = RewardSpec.parse_list(text)
            d = {"name": "+".join(dict.fromkeys(r.name for r in rewards))[:32], "rewards": rewards}
    name = d.pop("name", None)
    return (None if name is None else str(name)), d


def variant_specs(base: RunSpec, variants: list[str | dict[str, Any]]) -> list[tuple[str, RunSpec, dict]]:
    """(name, spec, changes) per variant: the base spec with the variant's changes; ConfigError says what to fix."""
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise ConfigError(f"an A/B takes {MIN_VARIANTS} to {MAX_VARIANTS} variants, got {len(variants)}: "
                          "add or remove --variant")  # fmt: skip
    out, seen = [], set()
    for i, v in enumerate(variants):
        name, changes = parse_variant(v)
        name = name or chr(ord("A") + i)
        if not NAME_RE.fullmatch(name) or name.lower() in RESERVED:
            raise ConfigError(f"variant name {name!r}: use up to 32 letters, digits, '_', '.', '+' or '-', and "
                              f"not {', '.join(RESERVED)}")  # fmt: skip
        base_name, k = name, 2
        while name in seen:  # two variants of the same rewards (say, other weights) keep apart as name-2
            name, k = f"{base_name[:29]}-{k}", k + 1
        seen.add(name)
        d = base.to_dict()
        moved = [k for k in SHARED if k in changes and changes[k] != d[k]]
        if moved:
            raise ConfigError(f"variant {name!r} changes {', '.join(moved)}: variants share what decides the prompts "
                              "and the held-out set; set it on the base spec (--config or the flags) instead")  # fmt: skip
        spec = RunSpec.from_dict({**d, **changes})  # unknown settings and bad values fail here, by name
        out.append((name, spec, {k: v for k, v in spec.to_dict().items() if v != d[k]}))
    if len({json.dumps(s.to_dict(), sort_keys=True) for _, s, _ in out}) < len(out):
        raise ConfigError(
            "two variants have exactly the same settings: change the rewards (or another knob) of one"
        )
    return out


# --- the record --------------------------------------------------------------------------------------------------
def experiments_dir() -> Path:
    return workbench_home() / "experiments"


def start_experiment(
    base: RunSpec, variants: list[str | dict[str, Any]], limits: Limits | None = None
) -> Experiment:
    """Queue every variant as a run (all or none: RunnerBusy when the queue has no room for them all), recorded
    before any worker starts; the first starts now if a slot is free."""
    from . import runner

    made = variant_specs(base, variants)
    exp = Experiment(new_experiment_id(), time.time(), base.to_dict())

    def record(runs: list[Run]) -> None:
        exp.variants = [
            {"name": n, "changes": c, "run_id": r.id} for (n, _, c), r in zip(made, runs, strict=True)
        ]
        save_experiment(exp)
        for (name, _, _), run in zip(made, runs, strict=True):
            write_json_atomic(run.dir / MARKER, {"experiment": exp.id, "variant": name,
                                                 "siblings": [r.id for r in runs]})  # fmt: skip

    runner.start_runs([s for _, s, _ in made], limits, before_start=record)
    return exp


def new_experiment_id() -> str:
    return "exp-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def save_experiment(exp: Experiment) -> Path:
    path = experiments_dir() / f"{exp.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, exp.to_dict())
    return path


def is_experiment_id(text: str) -> bool:
    return isinstance(text, str) and bool(EXP_ID_RE.fullmatch(text))


def open_experiment(exp_id: str) -> Experiment:
    if not is_experiment_id(exp_id):
        raise RunNotFound(f"{exp_id!r} is not an experiment id (they look like exp-20250101-120000-a1b2c3)")
    try:
        d = json.loads((experiments_dir() / f"{exp_id}.json").read_text())
    except (OSError, ValueError):
        raise RunNotFound(f"no experiment {exp_id!r} under {experiments_dir()}: start one with "
                          "`workbench train --variant ... --variant ...`") from None  # fmt: skip
    return Experiment(d["id"], d["created"], d["base"], d["variants"])


def list_experiments() -> list[Experiment]:
    """Every readable experiment, oldest first (ids sort by creation time)."""
    root = experiments_dir()
    out = []
    for p in sorted(root.glob("exp-*.json")) if root.is_dir() else []:
        try:
            out.append(open_experiment(p.stem))
        except RunNotFound:
            continue
    return out


def experiment_of(run: Run) -> Experiment | None:
    """The experiment a run is a variant of, or None (a single run, or its record was removed)."""
    try:
        return open_experiment(json.loads((run.dir / MARKER).read_text())["experiment"])
    except (OSError, ValueError, KeyError, TypeError, RunNotFound):
        return None


def variant_name(run: Run) -> str | None:
    try:
        return str(json.loads((run.dir / MARKER).read_text())["variant"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
