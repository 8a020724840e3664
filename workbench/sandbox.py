"""Run work a visitor controls in a child process with a time and a memory limit; kill the child when it overruns.

Why a process: Python code that loops (a reasoning-gym generator with huge settings, a parser fed a hostile file)
holds the GIL, so in a thread it would stall every visitor's page, and a thread cannot be stopped. A child process
can be killed, and its memory is returned when it ends.

    from workbench.sandbox import run_limited
    task = run_limited(load_task, spec, limits, timeout_s=60, what="loading the task",
                       env="WORKBENCH_TASK_TIMEOUT_S", memory_mb=4096, cancel=stop_requested)

`fn` must be importable by name (a module-level function). Its result and exceptions come back pickled; a
UserError keeps its message. `progress=callable` passes the child a `progress` keyword whose calls are relayed to
`callable` in this process. `cancel()` is polled: when it turns true the child is killed and `Cancelled` raised.
Children are forked from a forkserver that has the task modules imported, so a child starts in milliseconds; each
child gets this process's environment and working folder at the time of the call. Children run at a lower priority
than the server, at most WORKBENCH_SANDBOX_SLOTS at once: a flood of hostile work waits its turn and never crowds
out the server's answers to other visitors.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .errors import UserError

POLL_S = 0.05
# Imported once in the forkserver, so each child starts with them (a reasoning-gym import alone takes ~2 s).
# "__main__": a script's children would otherwise each re-run it (multiprocessing re-imports the parent's main
# script in every child); imported once here, the children skip it. app.py guards its launch with __name__.
PRELOAD = ["__main__", "workbench.tasks", "workbench.sandbox", "pandas", "reasoning_gym"]
CHILD_ENV = "WORKBENCH_SANDBOX_CHILD"
NICE = 10  # children's scheduling priority below the server's
START_S = 120.0  # a child that has not started by then (forkserver start-up included) is a fault, not a limit
_ctx: Any = None
_sem: threading.BoundedSemaphore | None = None
_ctx_lock = threading.Lock()


class LimitExceeded(UserError, RuntimeError):
    """The work ran past its time or memory limit and was killed; the message names the limit and its variable."""


class Cancelled(UserError, RuntimeError):
    """The caller asked to stop (cancel() turned true) and the child was killed."""


def in_child() -> bool:
    """True inside a sandbox child (work already limited: run it here rather than in a grandchild)."""
    return os.environ.get(CHILD_ENV) == "1"


def _slots() -> threading.BoundedSemaphore:
    global _sem
    with _ctx_lock:
        if _sem is None:
            from .limits import Limits

            _sem = threading.BoundedSemaphore(max(1, Limits.from_env().sandbox_slots))
    return _sem


def _context():
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _ctx = ctx
    return _ctx


class _Reporter:
    """The `progress` a child calls: each call goes back to the parent through the result pipe."""

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, *args: Any) -> None:
        self.conn.send(("progress", args))


def _child(conn, fn, args, kwargs, environ, cwd, memory_mb, with_progress) -> None:
    os.environ.clear()
    os.environ.update(environ)  # the forkserver's environment is from when it started, not from this call
    os.environ[CHILD_ENV] = "1"
    with contextlib.suppress(OSError):  # a folder gone since: relative names then simply do not resolve
        os.chdir(cwd)
    os.nice(NICE)  # the server answering other visitors goes first
    if memory_mb:
        import resource

        limit = int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("started", None))  # the time limit counts from here, not from the forkserver's start-up
    try:
        if with_progress:
            kwargs = {**kwargs, "progress": _Reporter(conn)}
        conn.send(("ok", fn(*args, **kwargs)))
    except MemoryError:
        conn.send(("memory", None))
    except BaseException as e:  # everything goes back to the caller, which decides what to show
        if not isinstance(e, UserError):  # a bug, not a visitor's mistake: traceback to the server log
            traceback.print_exc()
        try:
            pickle.dumps(e)
            conn.send(("error", e))
        except Exception:  # an exception that does not pickle comes back as its type and first line
            first = (str(e).strip().splitlines() or [""])[0][:300]
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {first}")))


def run_limited(fn: Callable, *args: Any, timeout_s: float | None, what: str, env: str,
                memory_mb: int | None = None, memory_env: str = "WORKBENCH_SANDBOX_MEMORY_MB",
                cancel: Callable[[], bool] | None = None, progress: Callable[..., None] | None = None,
                **kwargs: Any) -> Any:  # fmt: skip
    """fn(*args, **kwargs) in a child process; its result, or its exception raised here. LimitExceeded when it
    runs past `timeout_s` (None = no limit) or `memory_mb`; `what` and `env` word that message. At most
    WORKBENCH_SANDBOX_SLOTS children run at once; a call waits for a free slot (the wait is not counted)."""
    slots = _slots()
    while not slots.acquire(timeout=POLL_S * 4):
        if cancel is not None and cancel():
            raise Cancelled(f"{what} was stopped on request")
    try:
        return _run(fn, args, kwargs, timeout_s, what, env, memory_mb, memory_env, cancel, progress)
    finally:
        slots.release()


def _run(fn, args, kwargs, timeout_s, what, env, memory_mb, memory_env, cancel, progress) -> Any:
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(
        target=_child,
        args=(send, fn, args, kwargs, dict(os.environ), os.getcwd(), memory_mb, progress is not None),
        daemon=True,
    )
    p.start()
    send.close()  # the child holds the only write end: EOF here means it is gone
    deadline = time.monotonic() + START_S  # until the child says it started (a cold forkserver imports a lot)
    started = False
    try:
        while True:
            if recv.poll(POLL_S):
                try:
                    kind, payload = recv.recv()
                except EOFError:
                    break  # died without a word: a kill from outside, or the memory limit hit in C code
                if kind == "started":
                    started = True
                    deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
                    continue
                if kind == "progress":
                    if progress is not None:
                        progress(*payload)
                    continue
                if kind == "ok":
                    return payload
                if kind == "memory":
                    raise _memory_error(what, memory_mb, memory_env)
                raise payload
            if deadline is not None and time.monotonic() > deadline:
                if not started:
                    raise RuntimeError(
                        f"{what} could not start a child process in {START_S:g} s: see the server log"
                    )
                raise LimitExceeded(
                    f"{what} took longer than {float(timeout_s):g} s, this server's limit, and was stopped: use "
                    f"smaller settings (the server's owner can raise the limit with {env})"
                )
            if cancel is not None and cancel():
                raise Cancelled(f"{what} was stopped on request")
    finally:
        if p.is_alive():
            p.kill()
        p.join(10)
        recv.close()
    if memory_mb:
        raise _memory_error(what, memory_mb, memory_env)
    raise RuntimeError(f"{what} ended without a result (exit code {p.exitcode}): see the server log")


def warm_up() -> None:
    """Start the forkserver now (its imports take seconds), so that the first real child starts at once."""
    run_limited(os.getpid, timeout_s=None, what="starting the sandbox", env="WORKBENCH_SANDBOX_SLOTS")


def _memory_error(what: str, memory_mb: int | None, memory_env: str) -> LimitExceeded:
    return LimitExceeded(
        f"{what} needed more than {memory_mb} MB, this server's memory limit, and was stopped: use smaller settings "
        f"or a smaller file (the server's owner can raise the limit with {memory_env})"
    )
