"""The Train tab's controls, generated from the run spec's fields and the reward registry, and the conversions
between their values and a RunSpec (plain functions, tested without a server).

A new RunSpec field shows up in the UI by itself (in "Other" until GROUPS places it); a new reward in REGISTRY
shows up in the reward picker with its parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from ..config import DEFAULT_MODEL, PRESETS, TINY_MODEL, ConfigError, Limits, RewardSpec, RunSpec, spec_fields
from ..rewards import REGISTRY, Param
from ..tasks import BUILTIN_TASKS
from .settings import SPACE_MODEL, default_model, on_space

GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Task & model", ("model", "task", "train_size", "eval_size", "system_prompt")),
    ("Sampling", ("num_generations", "prompts_per_step", "max_prompt_length", "max_completion_length",
                  "temperature", "top_p")),
    ("Optimisation", ("max_steps", "learning_rate", "lr_scheduler", "warmup_steps", "max_grad_norm",
                      "weight_decay")),
    ("LoRA", ("use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")),
    ("Objective", ("loss_type", "beta", "epsilon", "epsilon_high", "num_iterations", "scale_rewards",
                   "mask_truncated_completions")),
    ("Held-out checks during training", ("eval_every", "eval_prompts", "keep_best_by")),
    ("Run", ("seed", "dtype", "device", "engine", "save_every")),
]  # fmt: skip
SPECIAL = ("rewards",)  # has its own picker
LOG_SCALE = ("learning_rate", "beta", "epsilon_high", "max_grad_norm")  # sliders are useless across decades
RG_EXAMPLES = ("basic_arithmetic", "chain_sum", "leg_counting", "letter_counting", "spell_backward")
FIELDS = {f.name: f for f in spec_fields()}


def grouped_fields() -> list[tuple[str, list[dataclasses.Field]]]:
    """Fields by group, in GROUPS order; fields no group names go to "Other" so none is ever hidden."""
    placed = {n for _, names in GROUPS for n in names} | set(SPECIAL)
    out = [(title, [FIELDS[n] for n in names if n in FIELDS]) for title, names in GROUPS]
    rest = [f for f in spec_fields() if f.name not in placed]
    return out + ([("Other", rest)] if rest else [])


def field_order() -> list[str]:
    return [f.name for _, fs in grouped_fields() for f in fs]


def caps(limits: Limits) -> dict[str, int]:
    """Upper bounds this server sets on fields (Limits from the environment)."""
    return limits.field_caps()


def model_choices() -> list[tuple[str, str]]:
    first = (f"{default_model()} (preloaded)", default_model()) if on_space() else (
        f"{DEFAULT_MODEL} (bundled, works offline)", DEFAULT_MODEL)  # fmt: skip
    hub = [] if on_space() else [(f"{SPACE_MODEL} (hub)", SPACE_MODEL)]
    return [first, *hub, ("Qwen/Qwen2.5-0.5B-Instruct (hub, slower)", "Qwen/Qwen2.5-0.5B-Instruct"),
            (f"{TINY_MODEL} (random weights: tests the plumbing in seconds)", TINY_MODEL)]  # fmt: skip


def task_choices() -> list[tuple[str, str]]:
    builtin = [(f"{name} — {desc}", name) for name, desc in BUILTIN_TASKS.items()]
    return builtin + [(f"rg:{n} — reasoning-gym", f"rg:{n}") for n in RG_EXAMPLES]


def make_control(f: dataclasses.Field, value: Any, limits: Limits) -> gr.components.Component:
    """One control for one spec field: label = field name, info = its help, range and choices from its metadata."""
    help_, rng, choices = f.metadata.get("help", ""), f.metadata.get("range"), f.metadata.get("choices")
    kw = {"label": f.name, "info": help_, "value": value, "elem_id": f"wb-field-{f.name}"}
    if f.name == "model":
        return gr.Dropdown(choices=model_choices(), allow_custom_value=True, **kw)
    if f.name == "task":
        return gr.Dropdown(choices=task_choices(), allow_custom_value=True, **kw)
    if f.name == "use_lora" and not limits.allow_full_finetune:
        return gr.Checkbox(
            **{**kw, "info": f"{help_} This server trains LoRA adapters only."}, interactive=False
        )
    if f.type == "bool":
        return gr.Checkbox(**kw)
    if choices:
        return gr.Dropdown(choices=list(choices), **kw)
    if rng:
        lo, hi = rng
        hi = min(hi, caps(limits).get(f.name, hi))
        if f.name in caps(limits):
            kw["info"] = f"{help_} This server allows at most {hi}."
        if f.type == "int" and hi - lo <= 256:
            return gr.Slider(minimum=lo, maximum=hi, step=1, **kw)
        if f.type == "float" and lo >= 0 and hi <= 2 and f.name not in LOG_SCALE:
            return gr.Slider(minimum=lo, maximum=hi, step=0.01, **kw)
        return gr.Number(minimum=lo, maximum=hi, precision=0 if f.type == "int" else None, **kw)
    return gr.Textbox(lines=2 if f.name == "system_prompt" else 1, **kw)


START_PRESET = "quick"  # the preset the Train form starts on


def preset_spec(name: str, limits: Limits) -> RunSpec:
    """A preset as this server runs it: the default model of this deployment, values clipped to its limits."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    spec = PRESETS[name]
    changes: dict[str, Any] = {k: min(getattr(spec, k), cap) for k, cap in caps(limits).items()}
    if spec.model == DEFAULT_MODEL:
        changes["model"] = default_model()
    return spec.replace(**changes)


def values_from_spec(spec: RunSpec) -> list[Any]:
    """Field control values in field_order()."""
    return [getattr(spec, n) for n in field_order()]


def coerce_field(name: str, v: Any) -> Any:
    """A control's value as the type of RunSpec field `name`; ConfigError when it is empty or not a number."""
    f = FIELDS[name]
    rng = f.metadata.get("range")
    if f.type == "bool":
        return bool(v)
    if f.type in ("int", "float"):
        if v is None or (isinstance(v, str) and not v.strip()):
            where = f" between {rng[0]} and {rng[1]}" if rng else ""
            raise ConfigError(f"{name} is empty: enter a number{where}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={v!r} is not a number") from None
        if f.type == "int":
            if not x.is_integer():
                raise ConfigError(f"{name}={v} must be a whole number")
            return int(x)
        return x
    return "" if v is None else str(v).strip()


def spec_from_values(names: list[str], values: list[Any], rewards: list[RewardSpec]) -> RunSpec:
    """Build (and so validate) a RunSpec from control values; ConfigError says which setting to change."""
    d = {n: coerce_field(n, v) for n, v in zip(names, values, strict=True)}
    d["rewards"] = rewards
    return RunSpec.from_dict(d)


# --- rewards: a picker (which rewards) plus, per reward, a weight and its parameters ---------------------------


def param_default(pname: str, p: Param) -> Any:
    # A reward that counts tokens loads a tokenizer by model name: on a Space the bundled one is not installed.
    return default_model() if pname == "tokenizer" else p.default


def reward_layout() -> list[tuple[str, list[str]]]:
    """(reward name, its parameter names) in registry order: how the flat reward values are laid out."""
    return [(name, list(info.params)) for name, info in REGISTRY.items()]


def make_param_control(reward: str, pname: str, p: Param) -> gr.components.Component:
    kw = {
        "label": pname,
        "info": p.help,
        "value": param_default(pname, p),
        "elem_id": f"wb-rp-{reward}-{pname}",
    }
    if p.choices:
        return gr.Dropdown(choices=list(p.choices), **kw)
    if isinstance(p.default, bool):
        return gr.Checkbox(**kw)
    if isinstance(p.default, (int, float)):
        return gr.Number(precision=0 if isinstance(p.default, int) else None, **kw)
    return gr.Textbox(**kw)


def rewards_from_values(selected: list[str], flat: list[Any]) -> list[RewardSpec]:
    """RewardSpecs for the ticked rewards; only parameters that differ from their defaults are written down."""
    out, i = [], 0
    for name, pnames in reward_layout():
        weight, params = flat[i], dict(zip(pnames, flat[i + 1 : i + 1 + len(pnames)], strict=True))
        i += 1 + len(pnames)
        if name not in (selected or []):
            continue
        if weight is None:
            raise ConfigError(f"the weight of reward {name!r} is empty: enter a number, e.g. 1")
        info = REGISTRY[name]
        kept = {}
        for k, v in params.items():
            p = info.params[k]
            if isinstance(p.default, int) and not isinstance(p.default, bool) and isinstance(v, float):
                v = int(v) if v.is_integer() else v
            if v is None:
                raise ConfigError(f"reward {name!r}: {k} is empty; its default is {p.default!r}")
            if v != p.default:
                kept[k] = v
        out.append(RewardSpec(name=name, weight=float(weight), params=kept))
    return out


def values_from_rewards(specs: list[RewardSpec]) -> tuple[list[str], list[Any]]:
    """(ticked names, flat weight+param values) for a list of RewardSpecs; unticked rewards get defaults.
    A reward listed twice keeps its first settings (the picker holds one of each)."""
    by_name: dict[str, RewardSpec] = {}
    for s in specs:
        by_name.setdefault(s.name, s)
    flat: list[Any] = []
    for name, pnames in reward_layout():
        s = by_name.get(name)
        flat.append(s.weight if s else 1.0)
        info = REGISTRY[name]
        flat += [
            (s.params.get(k) if s and k in s.params else param_default(k, info.params[k])) for k in pnames
        ]
    return [n for n in by_name if n in REGISTRY], flat


def reward_help_markdown() -> str:
    lines = ["| reward | what it scores | needs column |", "|---|---|---|"]
    for name, info in REGISTRY.items():
        lines.append(f"| `{name}` | {info.description.replace('|', '/')} | {', '.join(info.needs) or '–'} |")
    return "\n".join(lines)
