"""What a run needs to go on where it stopped, kept in its own folder: a copy of its task rows, and the newest
checkpoint that still loads.

    task = run_task(run, limits)            # the worker: the run's copy (made from the source on its first start)
    task = saved_task(run) or load_task(run.spec)    # Compare, held-out rows: the copy when there is one
    ckpt, bad = restore_checkpoint(run, engine)      # newest first; an unreadable one is set aside, the older tried

The copy (`task.json`: train and held-out rows, system prompt, suggested rewards) is what training, resume and
the held-out comparison read, so pruning an upload, editing a file or a changed hub dataset never changes a run
that already started. Runs from before copies existed get theirs on their next start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .config import Limits, RewardSpec
from .osutil import json_safe, write_json_atomic
from .store import Run
from .tasks import Task, load_task

TASK_FILE = "task.json"


def save_task(run: Run, task: Task) -> None:
    """Write the run's copy of `task` (atomically: a half-written copy is never read)."""
    write_json_atomic(
        run.dir / TASK_FILE,
        {
            "source": run.spec.task,
            "name": task.name,
            "description": task.description,
            "system_prompt": task.system_prompt,
            "rewards": [dataclasses.asdict(r) for r in task.rewards],
            "train": json_safe(task.train),
            "eval": json_safe(task.eval),
        },
    )


def saved_task(run: Run) -> Task | None:
    """The run's copy of its task, or None when it has none (a run that never started, or an older one)."""
    try:
        d = json.loads((run.dir / TASK_FILE).read_text())
    except FileNotFoundError:
        return None
    rewards = [RewardSpec(**r) for r in d.get("rewards") or []]
    return Task(
        d["name"], d.get("description", ""), d["train"], d["eval"], d.get("system_prompt", ""), rewards
    )


def run_task(run: Run, limits: Limits | None = None, cancel=None) -> Task:
    """The rows the run trains and is judged on: its copy; on its first start, loaded from the source and copied.
    What is returned is read back from the copy, so a first start and a resume see the very same rows. `cancel()`
    turning true stops a first load (tasks.load_task)."""
    task = saved_task(run)
    if task is None:
        save_task(run, load_task(run.spec, limits, cancel))
        task = saved_task(run)
    return task


def task_for_run(run: Run) -> Task:
    """The task a reader (Compare, the TRL export) should use: the run's copy, else (an older run) its source."""
    return saved_task(run) or load_task(run.spec)


def restore_checkpoint(run: Run, engine: Any) -> tuple[Path | None, list[str]]:
    """Load the newest checkpoint that loads into `engine`; one that fails is renamed `.corrupt-step-…` (kept for a
    look, never tried again) and the one before it is tried. Returns (the checkpoint loaded or None, one line per
    checkpoint set aside). After a failed load the engine may be half-changed: with none loaded, build a new one."""
    bad: list[str] = []
    for ckpt in reversed(run.checkpoints()):
        try:
            engine.load_checkpoint(ckpt)
            return ckpt, bad
        except Exception as e:  # a cut-short or garbled file raises whatever its reader raises
            first = (str(e).strip().splitlines() or [""])[0][:200]
            bad.append(f"{ckpt.name} could not be loaded ({type(e).__name__}: {first})")
            os.replace(ckpt, ckpt.with_name(f".corrupt-{ckpt.name}-{secrets.token_hex(3)}"))
    return None, bad


# in a run of an A/B experiment (experiments.py): its id, variant, siblings
EXPERIMENT_MARKER = "experiment.json"


def share_task(run: Run) -> bool:
    """Give a variant of an A/B that has no copy of its task rows yet the copy a sibling made (the runner calls this
    as it starts a run). Never raises: without a sibling's copy the worker loads the rows itself, as for any run."""
    from .errors import RunNotFound
    from .store import open_run

    try:
        if (run.dir / TASK_FILE).exists():
            return False
        siblings = json.loads((run.dir / EXPERIMENT_MARKER).read_text()).get("siblings", [])
        for rid in siblings:
            src = open_run(rid).dir / TASK_FILE if rid != run.id else None
            if src is not None and src.is_file():
                tmp = run.dir / f".tmp-{TASK_FILE}-{secrets.token_hex(3)}"  # swept if a crash leaves it
                shutil.copyfile(src, tmp)
                os.replace(tmp, run.dir / TASK_FILE)  # a reader sees the whole copy or none
                return True
    except (OSError, ValueError, AttributeError, RunNotFound):
        pass
    return False
