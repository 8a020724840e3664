"""A standby worker: a worker process started before it has a run, so a launch trains at once.

A cold worker spends about 5 s on 2 cores before its first step (importing torch, transformers and peft, loading
the model, starting the sandbox's forkserver), a first run on a machine 2 s more on the base model's held-out
answers at step 0, and its first step is 0.8 s slower than the next (every kernel's first call). The web server keeps one standby (when `Limits.standby_worker` is on and a worker slot is free)
that has done all of that for the spec the form starts on, then waits for a run id on its stdin. The runner hands
it the next run to launch (runner._launch); a run on another model or task still skips the imports. One standby
serves one run and then exits like any worker: nothing of one run reaches the next.

    server side (runner.py):   sb = Standby.start(argv, env, log_path, key); sb.ready(); sb.hand(run_id) -> bool
    process side:              `workbench standby SPEC_JSON` -> warm(spec), then wait_for_run() -> run id

The standby is the server's child and reads its stdin: when the server ends (even by SIGKILL) the pipe closes and
the standby exits. It runs with the environment the server had when it started; the runner hands it a run only
when that environment is still the one a cold worker would get.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunSpec

READY = "standby ready"  # the line the standby writes to its log once warm (Standby.ready reads it)
LOG_CAP = 1 << 20  # bytes of the standbys' shared log before the next one starts it afresh


class Standby:
    """The server's handle on one standby process."""

    def __init__(self, proc: subprocess.Popen, env: dict, log_path: Path, key: tuple):
        self.proc, self.env, self.log_path, self.key = proc, env, log_path, key

    @classmethod
    def start(cls, argv: list[str], env: dict, log_path: Path, key: tuple) -> Standby:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # appended to, not truncated: an earlier standby's forkserver (now serving its run's uploads) still writes
        # here; a new one starts the file afresh past LOG_CAP
        fresh = not log_path.exists() or log_path.stat().st_size > LOG_CAP
        with open(log_path, "wb" if fresh else "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # like any worker: the server's Ctrl-C does not reach it
            )
        return cls(proc, env, log_path, key)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """Warm and waiting (its log says so, and it is still alive)."""
        try:
            return self.alive() and f"{READY}: pid {self.proc.pid}," in self.log_path.read_text(
                errors="replace"
            )
        except OSError:
            return False

    def hand(self, run_id: str) -> bool:
        """Give it `run_id` to train. False when it can no longer take one (it died): start a cold worker."""
        if not self.alive() or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(f"{run_id}\n".encode())
            self.proc.stdin.close()
        except OSError:  # BrokenPipeError: it died between the check and the write
            return False
        return True

    def discard(self) -> None:
        """End it (it holds no run): close its stdin, then make sure it is gone."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


# --- the standby process --------------------------------------------------------------------------------------
def warm(spec: RunSpec, arrived: Callable[[], bool] = lambda: False) -> list[str]:
    """Get ready for a run of `spec`, most useful first; stop early once `arrived()` (a run is waiting: the rest is
    not worth its wait). Returns what was done, of: the imports; on an engine of its own, the base model's held-out
    answers at step 0 (kept across runs, heldout.BaseMemo) and one training step, so that every kernel has run once
    (a run's first step costs ~0.8 s more otherwise); the model, loaded for the run that will ask for it; the
    sandbox's forkserver (for uploads)."""
    from . import scoring  # noqa: F401
    from .grpo import GRPOEngine
    from .heldout import remember_baseline
    from .models import keep_loaded
    from .sandbox import warm_up as warm_sandbox
    from .tasks import load_task, prompt_batches

    with contextlib.suppress(ImportError):
        import peft  # noqa: F401  (LoRA runs; about 1.5 s of import on its own)
    done = ["imports"]
    if spec.engine == "builtin" and not arrived():
        task = load_task(spec)
        engine = GRPOEngine.from_spec(spec, task)  # loads a model of its own, and trains it: not the run's
        if spec.eval_every and not arrived():
            remember_baseline(engine, task)
            done.append("held-out baseline")
        if not arrived():
            engine.step(next(prompt_batches(task.train, spec.prompts_per_step, spec.seed)))
            done.append("a first step")
        del engine
        release_memory()  # that engine and its model are garbage now: give their memory back while we wait
    # after the engine above, whose load_model would otherwise take this copy; a run that arrived still needs it
    keep_loaded(spec.model, spec.dtype, spec.device)
    done.append("model")
    if not arrived():
        warm_sandbox()
        done.append("sandbox")
    return done


def _stdin_ready() -> bool:
    """A run id (or the end of the pipe: the server is gone) is waiting on stdin."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def release_memory() -> None:
    gc.collect()  # peft's modules hold reference cycles
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed memory for reuse unless asked
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def wait_for_run(spec: RunSpec) -> str | None:
    """Warm up, then block until the server hands over a run id (None when the server went away first). From then
    on this process's output goes to that run's worker.log."""
    t0, done = time.monotonic(), ["imports"]
    try:
        done = warm(spec, arrived=_stdin_ready)
        print(f"{READY}: pid {os.getpid()}, {spec.model} on {spec.task} in {time.monotonic() - t0:.1f} s "
              f"({', '.join(done)})", flush=True)  # fmt: skip
    except Exception:  # e.g. a model that does not load: still a warm process; the run will report the error
        traceback.print_exc()
        print(f"{READY}: pid {os.getpid()}, without all of its warm-up (traceback above)", flush=True)
    run_id = sys.stdin.readline().strip()
    if not run_id:
        return None
    from .store import open_run

    log = os.open(open_run(run_id).log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    print(f"standby worker {os.getpid()} takes run {run_id} (started {time.monotonic() - t0:.0f} s ago; warmed up: "
          f"{', '.join(done)})", flush=True)  # fmt: skip
    return run_id
