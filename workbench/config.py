"""The run spec: the one source of truth for a GRPO run.

`RunSpec` holds every knob of a run. UI controls, CLI flags and the saved `config.json` are all generated from its
fields: each carries `help`, and numeric ones a `range` (min, max) and `choices` where the set is closed. Invalid
values or combinations fail at construction with a message that says what to change.

Also here: `workbench_home()` (the root folder from `$WORKBENCH_HOME`) and `PRESETS`; `Limits` (the caps a public
deployment sets from environment variables) lives in limits.py and is re-exported here.

    from workbench.config import RunSpec, PRESETS
    spec = PRESETS["quick"].replace(max_steps=10)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .limits import Limits  # noqa: F401  (re-exported: callers import it from here)
from .paths import BUNDLED, DEFAULT_MODEL, TINY_MODEL, workbench_home  # noqa: F401  (re-exported, as Limits)
from .rewards import RewardSpec, build_rewards


def knob(default: Any, help: str, range: tuple | None = None, choices: tuple | None = None, **meta: Any):
    """A RunSpec field: its default, with the help, range and choices that UI and CLI are generated from."""
    md = {"help": help, "range": range, "choices": choices, **meta}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=md)
    return field(default=default, metadata=md)


@dataclass
class RunSpec:
    """Everything that defines a GRPO run. Names follow TRL's GRPOConfig where TRL has the same knob."""

    # --- what to train, on what
    model: str = knob(
        DEFAULT_MODEL, "Model: the bundled 'smollm2-135m-instruct', a hub id, or a local folder."
    )
    task: str = knob(
        "concise",
        "Prompts: a built-in task ('concise', 'arithmetic'), 'rg:<reasoning-gym dataset>', "
        "'file:<path to csv/jsonl/parquet>' or 'hub:<dataset id>'.",
    )
    train_size: int = knob(256, "How many training prompts to draw from the task.", (4, 100_000))
    eval_size: int = knob(24, "How many held-out prompts (never trained on) for the comparison.", (1, 1000))
    system_prompt: str = knob("", "System prompt put before every prompt; empty = the task's own.")
    rewards: list[RewardSpec] = knob(
        [], "Reward functions with weights, 'name:weight,key=value'; empty = the task's suggested rewards."
    )
    # --- sampling (the rollout)
    num_generations: int = knob(
        4, "G: completions sampled per prompt; advantages are relative within a group.", (2, 64)
    )
    prompts_per_step: int = knob(
        2, "Prompts per optimizer step; a step trains on prompts_per_step × G completions.", (1, 64)
    )
    max_prompt_length: int = knob(256, "Prompts longer than this (tokens) are cut from the left.", (16, 8192))
    max_completion_length: int = knob(
        48, "Most new tokens per completion; longer ones are truncated.", (4, 4096)
    )
    temperature: float = knob(1.0, "Sampling temperature for the rollout.", (0.05, 2.0))
    top_p: float = knob(
        1.0, "Nucleus sampling: keep the smallest token set with this much probability.", (0.05, 1.0)
    )
    # --- optimisation
    learning_rate: float = knob(2e-4, "AdamW learning rate.", (1e-7, 1e-2))
    lr_scheduler: str = knob(
        "constant", "Learning-rate schedule after warm-up.", choices=("constant", "linear", "cosine")
    )
    warmup_steps: int = knob(0, "Steps of linear warm-up from 0 to the learning rate.", (0, 10_000))
    max_steps: int = knob(30, "Optimizer steps in the run.", (1, 100_000))
    max_grad_norm: float = knob(1.0, "Clip the gradient norm to this; 0 = no clipping.", (0.0, 1000.0))
    weight_decay: float = knob(0.0, "AdamW weight decay.", (0.0, 1.0))
    # --- what is trained
    use_lora: bool = knob(True, "Train a LoRA adapter (fast, small); off = full fine-tuning.")
    lora_r: int = knob(16, "LoRA rank.", (1, 256))
    lora_alpha: int = knob(32, "LoRA alpha (scale = alpha / r).", (1, 1024))
    lora_dropout: float = knob(0.0, "Dropout on the LoRA input.", (0.0, 0.9))
    lora_target_modules: str = knob(
        "all-linear", "Modules LoRA wraps: 'all-linear' or comma-separated names, e.g. 'q_proj,v_proj'."
    )
    # --- the GRPO objective (TRL 1.16 semantics)
    loss_type: str = knob(
        "dapo",
        "How token losses are averaged: grpo (per sequence), dr_grpo (by max length), dapo (by tokens in the "
        "batch), bnpo (by tokens in the local batch).",
        choices=("grpo", "dr_grpo", "dapo", "bnpo"),
    )
    beta: float = knob(
        0.0, "KL penalty to the reference (the base model, adapter disabled); 0 = no KL.", (0.0, 10.0)
    )
    epsilon: float = knob(0.2, "Lower clipping bound of the probability ratio (1 - epsilon).", (0.0, 1.0))
    epsilon_high: float = knob(
        0.2, "Upper clipping bound of the probability ratio (1 + epsilon_high).", (0.0, 10.0)
    )
    num_iterations: int = knob(
        1, "μ: optimizer passes over each generated batch (>1 makes clipping active).", (1, 16)
    )
    scale_rewards: str = knob(
        "group",
        "Divide advantages by the reward std of the group, of the whole batch, or not at all.",
        choices=("group", "batch", "none"),
    )
    mask_truncated_completions: bool = knob(
        False, "Leave completions that hit max_completion_length out of the loss."
    )
    # --- held-out checks during training (the rewards and checks of Compare, on a slice the run never trains on)
    eval_every: int = knob(
        10,
        "Every N steps the policy answers a held-out slice greedily; its rewards and checks are logged "
        "(also at step 0, the base model's baseline, and at the last step). 0 = off. Built-in engine only: "
        "engine=trl runs without them.",
        (0, 100_000),
    )
    eval_prompts: int = knob(
        8, "Held-out prompts in that slice (the first ones of the task's held-out split, at most eval_size).",
        (1, 256),
    )  # fmt: skip
    keep_best_by: str = knob(
        "reward",
        "Which held-out score picks the best checkpoint, kept beside the last: reward (held-out total reward), "
        "correct, naturalness (higher is better), degenerate, repetition (lower is better).",
        choices=("reward", "correct", "naturalness", "degenerate", "repetition"),
    )
    compare_mode: str = knob(
        "greedy",
        "How Compare decodes unless told: greedy = each model's most likely answer; sampled = at the run's "
        "temperature, seeded (what the policy does when it samples; the reasoning preset is judged so).",
        choices=("greedy", "sampled"),
    )
    # --- run
    seed: int = knob(
        0,
        "Random seed: the same seed on the same machine gives the same first-step completions.",
        (0, 2**31 - 1),
    )
    dtype: str = knob(
        "auto",
        "Weights dtype: auto = bf16 where the hardware runs it fast, else fp32.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = knob("auto", "auto = CUDA if present, else CPU.", choices=("auto", "cpu", "cuda"))
    engine: str = knob(
        "builtin",
        "builtin = the workbench's fast engine; trl = TRL's GRPOTrainer.",
        choices=("builtin", "trl"),
    )
    save_every: int = knob(10, "Save an adapter checkpoint every N steps (and at the end).", (1, 100_000))

    def __post_init__(self) -> None:
        if isinstance(self.rewards, str):  # one line, as --variant takes it: 'length:1; contains_answer:2'
            self.rewards = RewardSpec.parse_list(self.rewards)
        if not isinstance(self.rewards, (list, tuple)):
            raise ConfigError(f"rewards must be a list of 'name:weight' texts, got {self.rewards!r}")
        self.rewards = [r if isinstance(r, RewardSpec) else _reward_from(r) for r in self.rewards]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            rng, choices = f.metadata.get("range"), f.metadata.get("choices")
            # from a JSON file anything can stand anywhere: a number or a list where text goes
            if f.type == "str" and not isinstance(v, str):
                raise ConfigError(f"{f.name} must be text, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):  # "false" is true in Python: never guess
                raise ConfigError(f"{f.name} must be true or false, got {v!r}")
            if f.type in ("int", "float") and isinstance(v, bool):
                raise ConfigError(f"{f.name} must be a number, got {v!r}")
            if rng is not None:
                lo, hi = rng
                if not isinstance(v, (int, float)):
                    raise ConfigError(f"{f.name} must be a number between {lo} and {hi}, got {v!r}")
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{f.name} must be a finite number between {lo} and {hi}, got {v!r}")
                if f.type == "int" and v != int(v):
                    raise ConfigError(f"{f.name} must be a whole number, got {v!r}")
                if (
                    f.type == "int"
                ):  # 4.0 from a JSON file is 4: a float seed or count crashes torch and range()
                    v = int(v)
                    setattr(self, f.name, v)
                if not lo <= v <= hi:
                    raise ConfigError(f"{f.name}={v} is out of range: choose a value between {lo} and {hi}")
            if choices is not None and v not in choices:
                raise ConfigError(f"{f.name}={v!r} is not one of {', '.join(choices)}")
        if not self.model.strip():
            raise ConfigError(
                "model is empty: use the bundled 'smollm2-135m-instruct', a hub id or a local folder"
            )
        if not self.task.strip():
            raise ConfigError(
                "task is empty: use 'concise', 'arithmetic', 'rg:<name>', 'file:<path>' or 'hub:<id>'"
            )
        if self.epsilon_high < self.epsilon:
            raise ConfigError(
                f"epsilon_high={self.epsilon_high} is below epsilon={self.epsilon}: raise epsilon_high to at least "
                "epsilon (equal = symmetric clipping, as in the GRPO paper)"
            )
        if self.prompts_per_step > self.train_size:
            raise ConfigError(
                f"prompts_per_step={self.prompts_per_step} exceeds train_size={self.train_size}: lower "
                "prompts_per_step or raise train_size"
            )
        if self.lora_target_modules.strip() == "":
            raise ConfigError("lora_target_modules is empty: use 'all-linear' or names like 'q_proj,v_proj'")
        # TRL 1.16's fused LM head multiplies by lm_head's base weight, so an adapter there would get no gradient
        # and silently stay at zero; the built-in engine trains it.
        lora_names = [n.strip() for n in self.lora_target_modules.split(",")]
        if self.engine == "trl" and self.use_lora and "lm_head" in lora_names:
            raise ConfigError(
                "engine='trl' ignores a LoRA adapter on lm_head (TRL 1.16's fused LM head reads only the base "
                "weight): remove lm_head from lora_target_modules or use engine='builtin'"
            )
        if self.eval_every and self.keep_best_by == "naturalness" and not self.use_lora and self.beta == 0:
            raise ConfigError(
                "keep_best_by='naturalness' scores answers under the base model, which full fine-tuning keeps only "
                "when beta > 0: turn use_lora on, set beta > 0, or pick another keep_best_by"
            )
        for r in self.rewards:
            if not r.name:
                raise ConfigError("a reward has no name: write it as 'name:weight', e.g. 'length:1.0'")

    # --- what the libraries take (one mapping for the built-in engine, TRL and the export)
    def lora_kwargs(self) -> dict[str, Any] | None:
        """peft LoraConfig keyword arguments, or None for full fine-tuning."""
        if not self.use_lora:
            return None
        names = self.lora_target_modules.strip()
        targets = names if names == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
        return {"r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": targets, "task_type": "CAUSAL_LM"}  # fmt: skip

    @property
    def scheduler_name(self) -> str:
        """transformers' name for lr_scheduler: ours hold the rate after warm-up, transformers' "constant" skips it."""
        return {"constant": "constant_with_warmup"}.get(self.lr_scheduler, self.lr_scheduler)

    # --- conversions
    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def check_rewards(self) -> RunSpec:
        """Build the rewards (cheap: loads nothing), so a misspelt name, a bad parameter or a NaN weight fails now,
        not in a worker after the model has loaded. Not in __post_init__: the presets below are built while the
        rewards package may still be importing this module."""
        if self.rewards:
            build_rewards(self.rewards)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """A spec from outside (a config file, CLI flags, the UI's form): every value and every reward checked."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}: valid names are {', '.join(sorted(names))}"
            )
        return cls(**d).check_rewards()

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json_object(text, "config"))


def json_object(text: str, name: str) -> dict[str, Any]:
    """Parse a JSON object of settings; a ConfigError that names `name` and says what is wrong otherwise."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} is not valid JSON ({e.msg} at line {e.lineno}): fix it") from None
    if not isinstance(d, dict):
        raise ConfigError(f'{name} must hold a JSON object of settings, e.g. {{"max_steps": 10}}')
    return d


def _reward_from(r: Any) -> RewardSpec:
    if isinstance(r, str):
        return RewardSpec.parse(r)
    if isinstance(r, dict):
        try:
            return RewardSpec(**r)
        except TypeError:
            raise ConfigError(f"reward {r!r} must have keys name, weight, params") from None
    raise ConfigError(f"reward {r!r} must be 'name:weight' text or a dict")


def spec_fields() -> list[dataclasses.Field]:
    """The run spec's fields in order, with metadata (help, range, choices): what UI and CLI are built from."""
    return list(dataclasses.fields(RunSpec))


def length_reward() -> RewardSpec:
    """The concise task's length term: one plain sentence (the bundled model's answers run ~85 words, median of 16)."""
    return RewardSpec("length", 1.0, {"target": 12, "unit": "words"})


# Presets are instances of the spec, sized for a 2-core CPU and the bundled model; README gives their measured effect.
_CONCISE = RunSpec(task="concise", num_generations=4, prompts_per_step=2, max_completion_length=48)
PRESETS: dict[str, RunSpec] = {
    # Concise and correct (the concise task's rewards: length, correctness, repetition). The KL term and 40 steps
    # keep the language near the base model's: over 3 seeds the answers halved in length, degenerate ones at most
    # one more than the base's.
    "quick": _CONCISE.replace(max_steps=40, beta=0.04),
    # The lesson: length alone. The reward rises and the answers rot ("🌱🌱🌱", "no, no, no"); Compare's checks
    # call it reward hacking. 40 steps, not 30: at 30 some runs were still on the edge (2 of 8 answers degenerate).
    "length-only": _CONCISE.replace(max_steps=40, rewards=[length_reward()]),
    # Format and correctness, judged where the model is used: Compare in sampled mode at the training temperature
    # (greedy decoding already copies the worked example's tags from step 0). 96 held-out prompts: with 24 a gain
    # of +17 points of correctness still had a CI from 0, with 48 one seed's +14.
    "reasoning": RunSpec(
        task="arithmetic",
        eval_size=96,
        compare_mode="sampled",
        max_steps=80,
        num_generations=8,
        prompts_per_step=2,
        max_completion_length=64,
        temperature=1.0,
    ),
}
