"""The runner: each run trains in its own worker process (`python -m workbench worker RUN_ID`), never in the
caller's. A crash, an out-of-memory kill or a stop leaves the web server (or the CLI) up; everything the worker
produces is in the run store, so any process can watch it.

    run_id = start_run(spec)      # starts a worker, or queues the run behind the active one, or raises RunnerBusy
    stop_run(run_id)              # graceful: the worker finishes its step, saves a checkpoint and the adapter
    kill_run(run_id)              # SIGKILL; the run reads as interrupted and can be resumed from its checkpoint
    resume_run(run_id)            # an interrupted, stopped or failed run continues from its last checkpoint
    start_runs([spec_a, spec_b])  # several runs queued as one (an A/B, experiments.py): all admitted or none
    reconcile()                   # marks runs whose worker died as interrupted; starts queued runs
    keep_standby(spec)            # the web server: keep a worker warm for the form's spec (standby.py)

Only `Limits.max_active_runs` workers run at once (1 by default: a small machine trains one run at a time); up to
`Limits.queue_size` more wait in order and start when a slot frees (the ending worker, or the next reconcile(),
starts them). Launch decisions are made under one file lock, so two processes cannot both start the same run.
This module does not import torch: the server and the CLI stay light.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import Limits, RunSpec
from .errors import RunnerBusy
from .hub_meta import check_model_sizes
from .osutil import file_lock, pid_alive, process_start_time
from .recovery import share_task
from .standby import Standby
from .store import (
    TERMINAL,
    Run,
    create_run,
    dead_worker_reason,
    list_runs,
    open_run,
    runs_dir,
    worker_alive,
)

log = logging.getLogger(__name__)
# Popen objects of the workers this process started: polled so that dead children do not linger as zombies.
_CHILDREN: dict[str, subprocess.Popen] = {}
# The standby worker this process keeps (only a process that called keep_standby: the web server): the spec it warms
# up for, the one there is, and how many died before they were given a run.
_STANDBY: dict = {"want": None, "now": None, "failures": 0}  # want: a RunSpec; now: a Standby
STANDBY_TRIES = 3  # standbys that die unused before the runner stops starting them (their log says why)


def _lock():
    return file_lock(runs_dir() / ".runner.lock")


def _reap() -> None:
    for run_id, p in list(_CHILDREN.items()):
        if p.poll() is not None:
            del _CHILDREN[run_id]


def _active_and_queued() -> tuple[list[Run], list[Run]]:
    active, queued = [], []
    for run in list_runs():
        st = run.raw_status()
        if worker_alive(st):
            active.append(run)
        elif st.get("state") == "queued":
            queued.append(run)
    # a resumed run re-enters the queue at the back: order by when it was queued, not when it was created
    queued.sort(key=lambda r: (r.raw_status().get("queued_at") or 0, r.id))
    return active, queued


def worker_argv(run_id: str) -> list[str]:
    """The worker's command line: an argument list, never a shell string (tests swap in a stand-in)."""
    return [sys.executable, "-m", "workbench", "worker", run_id]


def standby_argv(spec: RunSpec) -> list[str]:
    return [sys.executable, "-m", "workbench", "standby", spec.to_json()]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # `python -m workbench` must find this package even when it is not pip-installed (a source checkout)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _launch(run: Run) -> None:
    """Start the worker for a queued run (or hand it to the standby) and record its pid (with its start time, to
    detect pid reuse)."""
    run.clear_stop()
    share_task(run)  # a variant of an A/B trains on the very rows its first sibling did
    env = _worker_env()
    sb, _STANDBY["now"] = _STANDBY["now"], None
    with open(run.log_path, "ab") as log:
        warm = sb is not None and sb.env == env
        log.write(f"=== worker starting {time.strftime('%Y-%m-%d %H:%M:%S')}{' (standby)' if warm else ''} ===\n".encode())  # fmt: skip
        log.flush()
        if warm and sb.hand(run.id):
            p = sb.proc
        else:
            if sb is not None:  # started under another environment, or dead: a cold worker instead
                sb.discard()
            try:
                p = subprocess.Popen(
                    worker_argv(run.id),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # the server's Ctrl-C / SIGTERM do not reach the worker
                )
            except OSError as e:  # never leave a run queued forever behind a worker that cannot start
                run.set_status("failed", f"could not start the worker process: {e}")
                raise
    _CHILDREN[run.id] = p
    run.set_status("running", "starting", only_if=("queued",), pid=p.pid, pid_start=process_start_time(p.pid))


def _fill_slots(limits: Limits) -> list[str]:
    """Start queued runs while worker slots are free (caller holds the lock). Returns the started ids."""
    active, queued = _active_and_queued()
    started = []
    while queued and len(active) < max(1, limits.max_active_runs):
        run = queued.pop(0)
        _launch(run)
        active.append(run)
        started.append(run.id)
    _refresh_standby(limits, free=len(active) < max(1, limits.max_active_runs) and not queued)
    return started


def keep_standby(spec: RunSpec | None, limits: Limits | None = None) -> None:
    """Keep a standby worker (standby.py) warm for `spec` (the form's) while a worker slot is free, for the next
    launch from this process; None ends the one there is. Refreshed on every launch and reconcile (the server's
    housekeeping)."""
    with _lock():
        _STANDBY["want"], _STANDBY["failures"] = spec, 0
        _fill_slots(limits or Limits.from_env())  # queued runs first; then the standby, where a slot is left


def standby_ready() -> bool:
    """True when this process has a standby worker that is warm and waiting."""
    sb = _STANDBY["now"]
    return sb is not None and sb.ready()


def _refresh_standby(limits: Limits, free: bool) -> None:
    """Discard a standby that died or no longer fits; start one where a slot is free (caller holds the lock)."""
    sb, want = _STANDBY["now"], _STANDBY["want"]
    if sb is not None and (
        not sb.alive() or sb.key != want or sb.env != _worker_env() or not limits.standby_worker
    ):
        if not sb.alive():
            _STANDBY["failures"] += 1
            log.warning(
                "the standby worker ended unused (exit code %s): see %s", sb.proc.returncode, sb.log_path
            )
        sb.discard()
        _STANDBY["now"] = sb = None
    if sb is None and want and free and limits.standby_worker and _STANDBY["failures"] < STANDBY_TRIES:
        try:
            _STANDBY["now"] = Standby.start(
                standby_argv(want), _worker_env(), runs_dir() / ".standby.log", want
            )
        except OSError as e:
            _STANDBY["failures"] += 1
            log.warning("could not start a standby worker: %s", e)


def _busy_message(active: list[Run], queued: list[Run], limits: Limits) -> str:
    ids = ", ".join(r.id for r in active)
    st = active[0].status() if active else {}
    progress = f" (step {st.get('steps_done')}/{st.get('max_steps')})" if st else ""
    queue = f" and the queue is full ({len(queued)}/{limits.queue_size})" if limits.queue_size else ""
    return (
        f"run {ids} is training{progress}{queue}: wait for it to finish, or stop it with "
        f"`workbench stop {active[0].id if active else 'RUN'}`"
    )


def _admit(limits: Limits) -> bool:
    """Caller holds the lock. True: a run can start now; False: it must wait in the queue; RunnerBusy: neither."""
    _mark_dead_interrupted()
    _fill_slots(limits)  # queued runs go first
    active, queued = _active_and_queued()
    if len(active) < max(1, limits.max_active_runs):
        return True
    if len(queued) < limits.queue_size:
        return False
    raise RunnerBusy(_busy_message(active, queued, limits))


def _start_or_wait(run: Run, now: bool) -> None:
    if now:
        _launch(run)
    else:
        active, queued = _active_and_queued()
        ahead = ", ".join(r.id for r in active + queued if r.id != run.id)
        run.set_status("queued", f"waiting for {ahead} to finish", queued_at=time.time())


def start_run(spec: RunSpec, limits: Limits | None = None) -> str:
    """Create a run and start its worker, or queue it; raise RunnerBusy when no slot and the queue is full."""
    limits = limits or Limits.from_env()
    limits.check(spec)
    spec.check_rewards()  # a wrong reward fails here, not in the worker after the model has loaded
    check_model_sizes(spec, limits)  # from the hub's metadata, before a worker starts a download
    with _lock():
        now = _admit(limits)  # refuses before anything is created
        run = create_run(spec, status="queued")
        run.set_status("queued", None, queued_at=time.time())
        _start_or_wait(run, now)
    return run.id


def start_runs(specs: list[RunSpec], limits: Limits | None = None, before_start=None) -> list[str]:
    """Create several runs and queue them in order (the first starts if a slot is free), or none of them: RunnerBusy
    when the queue has no room for all. `before_start(runs)` runs after they exist and before any worker starts."""
    limits = limits or Limits.from_env()
    for spec in specs:
        limits.check(spec)
        spec.check_rewards()
        check_model_sizes(spec, limits)
    with _lock():
        _mark_dead_interrupted()
        _fill_slots(limits)
        active, queued = _active_and_queued()
        room = max(0, max(1, limits.max_active_runs) - len(active)) + max(0, limits.queue_size - len(queued))
        if len(specs) > room:
            busy = ", ".join(r.id for r in active + queued)
            raise RunnerBusy(f"{len(specs)} runs do not fit: room is left for {room} ({busy} training or queued, "
                             f"queue size {limits.queue_size}); queue fewer or wait for one to finish")  # fmt: skip
        runs = []
        for spec in specs:
            runs.append(run := create_run(spec, status="queued"))
            run.set_status("queued", None, queued_at=time.time())  # the queue starts them in this order
        if before_start is not None:
            before_start(runs)
        ahead = [r.id for r in active + queued]
        for run in runs:
            why = f"waiting for {', '.join(ahead)} to finish" if ahead else None
            run.set_status("queued", why, only_if=("queued",))
            ahead.append(run.id)
        _fill_slots(limits)
    return [r.id for r in runs]


def resume_run(run_id: str, limits: Limits | None = None) -> str:
    """Continue an interrupted or stopped run, or a failed one that has a checkpoint, from its last checkpoint to
    its target steps (same prompt order)."""
    limits = limits or Limits.from_env()
    run = open_run(run_id)
    with _lock():
        _mark_dead_interrupted()
        st = run.status()
        if not st["resumable"]:
            hint = {
                "finished": "it already reached its target steps",
                "failed": "it failed before its first checkpoint, so it would start over and fail again: fix the "
                f"setting its reason names and start a new run (`workbench train --config {run.dir / 'spec.json'} ...`)",
                "running": "it is running",
                "queued": "it is already queued",
            }[st["state"]]
            raise RunnerBusy(f"cannot resume run {run_id}: {hint}")
        if st["steps_done"] >= st["max_steps"] and run.final_adapter() is not None:
            raise RunnerBusy(f"cannot resume run {run_id}: it already has all {st['max_steps']} steps")
        now = _admit(limits)
        run.set_status("queued", "resume requested", queued_at=time.time())
        _start_or_wait(run, now)
    return run_id


def stop_run(run_id: str) -> None:
    """Ask the worker to stop after its current step (it saves a checkpoint and the adapter); a queued run is
    taken out of the queue."""
    run = open_run(run_id)
    with _lock():  # serialised with launches: a queued run is either taken out or started, never both
        if run.set_status("stopped", "stopped before it started", only_if=("queued",)):
            return
        run.request_stop()
    # No SIGTERM: a worker still importing torch would die of it before its handler is installed.


def kill_run(run_id: str) -> None:
    """SIGKILL the worker (and its process group). Steps and checkpoints written so far stay readable."""
    run = open_run(run_id)
    with _lock():
        st = run.raw_status()
        if worker_alive(st):
            _signal(st, signal.SIGKILL, group=True)
            for _ in range(50):  # a SIGKILLed process is gone within milliseconds; wait so status is final
                if not pid_alive(st["pid"], st.get("pid_start")):
                    break
                _reap()
                time.sleep(0.02)
            run.set_status(
                "interrupted",
                "killed by the user",
                only_if=("running",),
            )
        else:
            run.set_status("stopped", "killed before it started", only_if=("queued",))
        _reap()
        _fill_slots(Limits.from_env())


def _signal(st: dict, sig: int, group: bool = False) -> None:
    pid = st["pid"]
    try:
        # the worker leads its own session, so its process group holds it and anything it started
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def active_run() -> str | None:
    """The id of a run whose worker is alive now (the oldest, if several), else None."""
    _reap()
    for run in list_runs():
        if worker_alive(run.raw_status()):
            return run.id
    return None


def _mark_dead_interrupted() -> list[str]:
    _reap()
    marked = []
    for run in list_runs():
        st = run.raw_status()
        dead = st.get("state") == "running" and not worker_alive(st)
        if dead and run.set_status("interrupted", dead_worker_reason(run), only_if=("running",)):
            marked.append(run.id)
    return marked


def reconcile(limits: Limits | None = None) -> list[str]:
    """Write down what the processes say: runs left "running" by a dead worker become interrupted (e.g. after the
    app restarts); queued runs start when a slot is free. Returns the ids marked interrupted."""
    with _lock():
        marked = _mark_dead_interrupted()
        _fill_slots(limits or Limits.from_env())
    return marked


def launch_queued(limits: Limits | None = None) -> list[str]:
    """Start queued runs if slots are free (the worker calls this as it exits). Returns the started ids."""
    with _lock():
        _mark_dead_interrupted()
        return _fill_slots(limits or Limits.from_env())


def wait(run_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
    """Block until the run is in a final state (or `timeout` seconds pass); return its status."""
    run = open_run(run_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        _reap()
        st = run.status()
        if st["state"] in TERMINAL:
            return st
        if deadline is not None and time.monotonic() > deadline:
            return st
        time.sleep(poll)
