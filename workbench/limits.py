"""What a deployment lets one run, one upload, one comparison and one visitor cost: the one table of limits.

Every limit has an environment variable. On a Hugging Face Space (SPACE_ID is set) an unset variable takes the
Space default of `LIMITS`; elsewhere it takes the local default (mostly "no cap": the machine's owner runs it). A
refusal names the limit and the variable that raises it, so the Space's owner knows what to set and a visitor
knows what to lower. The README's table of variables is this table.

    from workbench.limits import Limits
    limits = Limits.from_env()
    limits.check(spec)                 # ConfigError naming the cap and its variable
    limits.field_caps()                # {"max_steps": 200, ...}: the UI's slider maxima
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Limit:
    """One row of the table: the Limits field, its variable, the defaults on a Space and locally, what it caps."""

    field: str
    env: str
    space: Any
    local: Any
    what: str


# fmt: off
LIMITS: tuple[Limit, ...] = (
    # --- one run's size
    Limit("max_steps", "WORKBENCH_MAX_STEPS", 200, None, "optimizer steps per run (max_steps)"),
    Limit("max_completion_length", "WORKBENCH_MAX_COMPLETION_LENGTH", 256, None,
          "tokens per completion (max_completion_length)"),
    Limit("max_prompt_length", "WORKBENCH_MAX_PROMPT_LENGTH", 512, None, "prompt tokens (max_prompt_length)"),
    Limit("max_completions_per_step", "WORKBENCH_MAX_COMPLETIONS_PER_STEP", 32, None,
          "completions per step (num_generations × prompts_per_step)"),
    Limit("max_num_iterations", "WORKBENCH_MAX_NUM_ITERATIONS", 2, None, "passes over each batch (num_iterations, μ)"),
    Limit("allow_full_finetune", "WORKBENCH_ALLOW_FULL_FINETUNE", False, True,
          "full fine-tuning (use_lora off: a full copy of the model per checkpoint)"),
    Limit("max_model_params_m", "WORKBENCH_MAX_MODEL_PARAMS_M", 600.0, None,
          "model size in millions of parameters, read from the hub before any download"),
    Limit("max_reward_model_params_m", "WORKBENCH_MAX_REWARD_MODEL_PARAMS_M", 600.0, None,
          "reward-model size in millions of parameters, read from the hub before any download"),
    Limit("max_run_minutes", "WORKBENCH_MAX_RUN_MINUTES", 60.0, None,
          "wall-clock minutes per run; the worker stops itself (keeping its adapter) when they are up"),
    # --- who runs what
    Limit("max_active_runs", "WORKBENCH_MAX_ACTIVE_RUNS", 1, 1, "runs training at once"),
    Limit("queue_size", "WORKBENCH_QUEUE_SIZE", 4, 4, "runs waiting for a free slot"),
    Limit("standby_worker", "WORKBENCH_STANDBY_WORKER", True, True,
          "a worker kept started with the form's model loaded while a slot is free, so a launch trains at once "
          "(about 0.75 GB of memory while it waits)"),
    Limit("max_runs_per_visitor", "WORKBENCH_MAX_RUNS_PER_VISITOR", 2, None,
          "runs one visitor (browser or address) has training or queued"),
    # --- uploads
    Limit("max_upload_mb", "WORKBENCH_MAX_UPLOAD_MB", 20.0, 20.0,
          "upload size in MB, on disk and (Parquet) uncompressed"),
    Limit("max_upload_rows", "WORKBENCH_MAX_UPLOAD_ROWS", 100_000, None,
          "rows in an upload, counted before the whole file is read"),
    # --- Compare
    Limit("max_compare_prompts", "WORKBENCH_MAX_COMPARE_PROMPTS", 32, None, "prompts per comparison"),
    Limit("max_compare_tokens", "WORKBENCH_MAX_COMPARE_TOKENS", 256, None, "new tokens per answer in Compare"),
    # --- visitor-controlled work, run in a child process that is killed when it overruns (sandbox.py)
    Limit("task_timeout_s", "WORKBENCH_TASK_TIMEOUT_S", 60.0, 600.0,
          "seconds to load or generate a task's prompts (uploads, reasoning-gym settings, hub datasets)"),
    Limit("compare_timeout_s", "WORKBENCH_COMPARE_TIMEOUT_S", 900.0, None, "seconds per comparison"),
    Limit("sandbox_memory_mb", "WORKBENCH_SANDBOX_MEMORY_MB", 8192, None,
          "memory (address space, MB) of the child process that loads a task or runs a comparison"),
    Limit("sandbox_slots", "WORKBENCH_SANDBOX_SLOTS", 2, 2,
          "child processes doing visitor work (tasks, Compare) at once, at low priority; more wait their turn"),
    # --- disk (housekeeping.py; a run keeps its own copy of its rows, so a removed upload costs it nothing)
    Limit("run_ttl_days", "WORKBENCH_RUN_TTL_DAYS", 7.0, None,
          "days an ended run (finished, stopped, failed, interrupted) is kept before it is deleted"),
    Limit("upload_ttl_hours", "WORKBENCH_UPLOAD_TTL_HOURS", 24.0, None,
          "hours an upload is kept (unless a queued run still needs it)"),
    Limit("max_uploads_mb", "WORKBENCH_MAX_UPLOADS_MB", 1000.0, None,
          "MB all uploads together may take; the oldest go first"),
)
# fmt: on
BY_FIELD = {lim.field: lim for lim in LIMITS}


def on_space() -> bool:
    """True on a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def reads_server_file(name: str) -> bool:
    """True when loading `name` (a model, reward-model or dataset id) would read the server's own disk: a path, or
    an id-shaped name that happens to exist as a folder or file (from_pretrained and load_dataset try those first).
    Every loader refuses such names on a Space, whatever the UI checked before."""
    v = str(name).strip()
    if not v:
        return False
    if v.startswith(("/", ".", "~", "\\")) or ".." in v or "\\" in v:
        return True
    try:
        return os.path.lexists(v) or os.path.lexists(os.path.expanduser(v))
    except (OSError, ValueError):  # a NUL byte or an over-long name: no such file, but no such id either
        return True


def _parse(lim: Limit, text: str) -> Any:
    kind = type(lim.space)
    try:
        if kind is bool:
            if text.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if text.strip().lower() in ("none", "off", "unlimited"):
            return None
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise ConfigError(f"{lim.env}={text!r} must be a {kind.__name__} (or 'none' for no cap)") from None


@dataclass(frozen=True)
class Limits:
    """The caps of this deployment; None = no cap. `Limits()` is a local machine's; `from_env()` reads the table."""

    max_steps: int | None = None
    max_completion_length: int | None = None
    max_prompt_length: int | None = None
    max_completions_per_step: int | None = None
    max_num_iterations: int | None = None
    allow_full_finetune: bool = True
    max_model_params_m: float | None = None
    max_reward_model_params_m: float | None = None
    max_run_minutes: float | None = None
    max_active_runs: int = 1
    queue_size: int = 4
    standby_worker: bool = True
    max_runs_per_visitor: int | None = None
    max_upload_mb: float = 20.0
    max_upload_rows: int | None = None
    max_compare_prompts: int | None = None
    max_compare_tokens: int | None = None
    task_timeout_s: float | None = 600.0
    compare_timeout_s: float | None = None
    sandbox_memory_mb: int | None = None
    sandbox_slots: int = 2
    run_ttl_days: float | None = None
    upload_ttl_hours: float | None = None
    max_uploads_mb: float | None = None

    @classmethod
    def from_env(cls, space: bool | None = None) -> Limits:
        """Each limit from its variable; unset ones take the Space default on a Space, the local one elsewhere."""
        space = on_space() if space is None else space
        values = {}
        for lim in LIMITS:
            text = os.environ.get(lim.env)
            values[lim.field] = (
                _parse(lim, text) if text not in (None, "") else (lim.space if space else lim.local)
            )
        return cls(**values)

    def replace(self, **changes: Any) -> Limits:
        return dataclasses.replace(self, **changes)

    def refusal(self, name: str, asked: str, fix: str) -> ConfigError:
        """The error every cap raises: what was asked, the limit, its variable, and what to change."""
        lim = BY_FIELD[name]
        return ConfigError(
            f"{asked} is above this server's limit of {_fmt(getattr(self, name))} ({lim.what}): {fix} (the server's "
            f"owner can raise it with {lim.env})"
        )

    def field_caps(self) -> dict[str, int]:
        """Upper bounds on run-spec fields (what the UI's sliders stop at)."""
        out = {
            "max_steps": self.max_steps,
            "max_completion_length": self.max_completion_length,
            "max_prompt_length": self.max_prompt_length,
            "num_iterations": self.max_num_iterations,
        }
        if self.max_completions_per_step is not None:  # each factor alone may not exceed the product
            out["num_generations"] = out["prompts_per_step"] = self.max_completions_per_step
        return {k: int(v) for k, v in out.items() if v is not None}

    def check(self, spec: Any) -> None:
        """Raise ConfigError when a RunSpec asks for more than this deployment allows (no network: see hub_meta)."""
        for name, cap in self.field_caps().items():
            value = getattr(spec, name)
            if value > cap:
                key = {"num_iterations": "max_num_iterations", "num_generations": "max_completions_per_step",
                       "prompts_per_step": "max_completions_per_step"}.get(name, name)  # fmt: skip
                raise self.refusal(key, f"{name}={value}", f"lower {name}")
        n = spec.num_generations * spec.prompts_per_step
        if self.max_completions_per_step is not None and n > self.max_completions_per_step:
            raise self.refusal(
                "max_completions_per_step",
                f"num_generations × prompts_per_step = {spec.num_generations} × {spec.prompts_per_step} = {n}",
                "lower num_generations or prompts_per_step",
            )
        if not spec.use_lora and not self.allow_full_finetune:
            lim = BY_FIELD["allow_full_finetune"]
            raise ConfigError(
                f"full fine-tuning (use_lora off) is not allowed on this server: turn use_lora on (the server's "
                f"owner can allow it with {lim.env}=1)"
            )

    def check_compare(self, n_prompts: int | None, max_new_tokens: int | None) -> None:
        """Raise ConfigError when a comparison asks for more prompts or tokens than this deployment allows."""
        if (
            self.max_compare_prompts is not None
            and n_prompts is not None
            and n_prompts > self.max_compare_prompts
        ):
            raise self.refusal("max_compare_prompts", f"{n_prompts} prompts", "compare fewer prompts")
        if (
            self.max_compare_tokens is not None
            and max_new_tokens is not None
            and (max_new_tokens > self.max_compare_tokens)
        ):
            raise self.refusal(
                "max_compare_tokens", f"max new tokens {max_new_tokens}", "lower max new tokens"
            )


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def table_markdown() -> str:
    """The limits as a Markdown table (variable, Space default, local default, what it caps), for the README."""

    def show(v: Any) -> str:
        return "no cap" if v is None else ("on" if v is True else "off" if v is False else _fmt(v))

    rows = ["| variable | on a Space | locally | what it caps |", "|---|---|---|---|"]
    rows += [f"| `{lim.env}` | {show(lim.space)} | {show(lim.local)} | {lim.what} |" for lim in LIMITS]
    return "\n".join(rows)
