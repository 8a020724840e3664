"""Tasks: what the model is trained on (train prompts), what it is judged on (held-out eval prompts), and the rewards
and system prompt that suit them.

    from workbench.config import RunSpec
    from workbench.tasks import load_task, chat_messages
    task = load_task(RunSpec(task="arithmetic", train_size=64, eval_size=16, seed=0))
    chat_messages(task.train[0], task.system_prompt)   # what goes into the chat template

Sources: "concise", "arithmetic", "rg:<reasoning-gym dataset>[,key=value...]", "file:<csv/jsonl/parquet path>",
"hub:<dataset id>[:<config>][@<split>]". Splits are deterministic from spec.seed and never overlap.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Limits, RunSpec
from .base import (
    MIN_ROWS,
    Task,
    TaskError,
    chat_messages,
    check_prompt,
    column_names,
    prompt_batches,
    reference_columns,
    split_rows,
)
from .builtin import REASONING_SYSTEM_PROMPT, load_arithmetic, load_concise, load_rg, rg_datasets
from .files import load_file, load_hub, read_table

__all__ = [
    "BUILTIN_TASKS",
    "MIN_ROWS",
    "REASONING_SYSTEM_PROMPT",
    "TASK_SOURCES",
    "Task",
    "TaskError",
    "chat_messages",
    "check_prompt",
    "column_names",
    "load_task",
    "reference_columns",
    "prompt_batches",
    "read_table",
    "rg_datasets",
    "split_rows",
]

BUILTIN_TASKS: dict[str, str] = {
    "concise": "Concise answers: 400 bundled questions and instructions; length reward (the LLM-course exercise).",
    "arithmetic": "Arithmetic with <think>/<answer>: reasoning-gym sums from the seed; format + math correctness.",
}
TASK_SOURCES: dict[str, str] = {
    "rg:<name>": "Any reasoning-gym dataset by name (settings as rg:name,key=value), scored by its own verifier.",
    "file:<path>": "Your CSV, JSONL or Parquet with a 'prompt' column (text or chat messages) and reference columns.",
    "hub:<id>": "A Hugging Face dataset id (hub:id[:config][@split]); needs the hub to be reachable.",
}


def load_task(spec: RunSpec, limits: Limits | None = None, cancel: Callable[[], bool] | None = None) -> Task:
    """Load spec.task, split by spec.seed into train/eval; TaskError names the problem (and the row) on failure.

    Files, hub datasets and reasoning-gym settings come from visitors: they load in a child process with this
    server's time and memory limits (sandbox.py), so a hostile file or generator setting cannot hang the caller;
    `cancel()` turning true stops the load. The two built-in tasks are fixed and load here.
    """
    from ..sandbox import in_child, run_limited

    limits = limits or Limits.from_env()
    if spec.task.strip() in BUILTIN_TASKS or in_child():
        return load_task_here(spec, limits)
    return run_limited(load_task_here, spec, limits, timeout_s=limits.task_timeout_s, what="loading the task's "
                       "prompts", env="WORKBENCH_TASK_TIMEOUT_S", memory_mb=limits.sandbox_memory_mb,
                       cancel=cancel)  # fmt: skip


def load_task_here(spec: RunSpec, limits: Limits) -> Task:
    """load_task in this process, without limits (the sandbox's child calls this)."""
    t = spec.task.strip()
    if t == "concise":
        return load_concise(spec)
    if t == "arithmetic":
        return load_arithmetic(spec)
    prefix, _, rest = t.partition(":")
    if prefix in ("rg", "file", "hub") and not rest.strip():
        raise TaskError(
            f"task {t!r} is missing what follows '{prefix}:', e.g. {next(k for k in TASK_SOURCES if k.startswith(prefix))}"
        )
    if prefix == "rg":
        return load_rg(rest.strip(), spec)
    if prefix == "file":
        return load_file(rest, spec, limits)
    if prefix == "hub":
        return load_hub(rest, spec)
    raise TaskError(
        f"unknown task {t!r}: use {', '.join(BUILTIN_TASKS)}, or one of {', '.join(TASK_SOURCES)}"
    )
