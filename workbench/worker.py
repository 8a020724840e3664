"""The worker: trains one run in its own process and writes everything to the run store as it goes.

    python -m workbench worker RUN_ID        # started by workbench.runner; not meant to be typed

It loads the spec from the store, the task (the run's own copy of its rows, `recovery.py`), and the engine (ours,
or TRL's when spec.engine == "trl"); resumes from the run's newest checkpoint that loads, if there is one
(tasks.prompt_batches(start_step=...) gives the same prompts an uninterrupted run would have seen); appends every
step to the store; evaluates a held-out slice at step 0, every `eval_every` steps and at the end, keeping the best
weights (`heldout.py`); saves a checkpoint every `save_every` steps and at the end, then the final adapter. Between
steps it honours a stop request (the store's stop file, or SIGTERM/SIGINT). Any failure ends the run as "failed"
with a one-line reason; the traceback goes to worker.log (its stdout/stderr). When it exits it starts the next
queued run.

Fault injection, for tests only: `WORKBENCH_FAULT=KIND[@STEP]` (STEP defaults to 1) makes step STEP fail on purpose.
KIND is `nan_reward` (every reward returns NaN), `raise_reward` (the first reward raises ValueError) or `oom`
(torch.OutOfMemoryError before the step). It applies to the built-in engine only.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .config import Limits, RunSpec
from .errors import ConfigError, ModelError, RewardError, TaskError, UserError
from .osutil import process_start_time
from .store import Run, open_run

FAULT_ENV = "WORKBENCH_FAULT"
WORKER_NICE = 5  # below the web server (and above the sandbox children doing visitor work, at 10)
FAULT_KINDS = ("nan_reward", "raise_reward", "oom")


class Fault:
    """The test-only fault of WORKBENCH_FAULT; a no-op when the variable is unset."""

    def __init__(self, text: str | None):
        self.kind, self.at, self.step = None, 1, 0
        if text:
            kind, _, at = text.partition("@")
            if kind not in FAULT_KINDS or (at and not at.isdigit()):
                raise ConfigError(
                    f"{FAULT_ENV}={text!r}: use one of {', '.join(FAULT_KINDS)}, optionally @STEP"
                )
            self.kind, self.at = kind, int(at or 1)

    @property
    def wraps_rewards(self) -> bool:
        return self.kind in ("nan_reward", "raise_reward")

    def wrap(self, reward_fns: list[tuple[str, Callable, float]]) -> list[tuple[str, Callable, float]]:
        out = []
        for i, (name, fn, w) in enumerate(reward_fns):
            if self.kind == "nan_reward" or (self.kind == "raise_reward" and i == 0):
                fn = self._faulty(fn)
            out.append((name, fn, w))
        return out

    def _faulty(self, fn: Callable) -> Callable:
        @functools.wraps(fn)  # keeps __name__: the failure reason must name the real function
        def wrapped(prompts, completions, **kw):
            vals = fn(prompts, completions, **kw)
            if self.step == self.at:
                if self.kind == "raise_reward":
                    raise ValueError(f"injected fault ({FAULT_ENV}) at step {self.step}")
                return [math.nan] * len(vals)
            return vals

        return wrapped

    def before_step(self, step: int) -> None:
        self.step = step
        if self.kind == "oom" and step == self.at:
            import torch

            raise torch.OutOfMemoryError(f"injected fault ({FAULT_ENV}) at step {step}")


class StopFlag:
    """True once a stop is requested: the store's stop file (runner.stop_run) or SIGTERM/SIGINT to this process, or
    once this worker has run `max_minutes` (the server's WORKBENCH_MAX_RUN_MINUTES)."""

    def __init__(self, run: Run, max_minutes: float | None = None):
        self.run, self.signalled, self.max_minutes = run, False, max_minutes
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def watchdog(self, grace_s: float = 300.0) -> threading.Timer | None:
        """A last resort for a step that never ends: `grace_s` past the deadline the run is marked failed and the
        process exits (the server's housekeeping then starts the next queued run)."""
        if self.deadline is None:
            return None

        def expire() -> None:
            with contextlib.suppress(Exception):
                self.run.set_status("failed", f"{self._limit_text()}, and its current step did not end in time",
                                    phase=None)  # fmt: skip
            os._exit(1)

        timer = threading.Timer(self.deadline - time.monotonic() + grace_s, expire)
        timer.daemon = True
        timer.start()
        return timer

    def _limit_text(self) -> str:
        return (f"ran {self.max_minutes:g} minutes, this server's limit per run (the server's owner can raise it with "
                "WORKBENCH_MAX_RUN_MINUTES)")  # fmt: skip

    def stop_reason(self, reason: str | None) -> str | None:
        """The reason a stopped run reads: the time limit when that is what stopped it."""
        if not self.out_of_time or self.signalled or self.run.stop_requested():
            return reason
        return f"{reason or 'stopped'}: it {self._limit_text()}; its weights are saved: compare or resume it"

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True
        print(f"got signal {signum}: stopping after this step", flush=True)

    def __call__(self) -> bool:
        return self.signalled or self.out_of_time or self.run.stop_requested()


def failure_reason(e: BaseException) -> str:
    """One line that says what went wrong and, where we know, what to change."""
    try:
        import torch

        from .grpo import NonFiniteError, RewardFunctionError
    except Exception:  # the engine itself does not import: say so rather than fail while failing
        return f"{type(e).__name__}: {_first_line(e)} (traceback in worker.log)"
    oom = (MemoryError, torch.OutOfMemoryError)
    inner = getattr(e, "exc", None) or e.__cause__
    if isinstance(e, oom) or (isinstance(e, RewardFunctionError) and isinstance(inner, oom)):
        return (
            f"out of memory ({_first_line(e)}): lower num_generations, prompts_per_step or "
            "max_completion_length, or use a smaller model"
        )
    if isinstance(e, RewardFunctionError):
        return f"reward function failed: {_first_line(e)}"
    if isinstance(e, NonFiniteError):
        return (
            f"non-finite value (NaN or inf): {_first_line(e)}; lower learning_rate, or check that the reward "
            "functions return finite numbers"
        )
    if _is_setup_error(e):
        return _first_line(e)
    return f"{type(e).__name__}: {_first_line(e)} (traceback in worker.log)"


def _is_setup_error(e: BaseException) -> bool:
    # UserError: also a sandbox limit (LimitExceeded) whose message already names the variable that raises it
    return isinstance(e, (ConfigError, ModelError, TaskError, RewardError, UserError))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:500]


def build_engine(spec: RunSpec, task: Any, fault: Fault):
    from .grpo import GRPOEngine

    return GRPOEngine.from_spec(spec, task, wrap_rewards=fault.wrap if fault.wraps_rewards else None)


def _progress(result: Any, max_steps: int) -> None:
    m = result.metrics
    print(
        f"step {result.step}/{max_steps}  reward {m.get('reward', float('nan')):.3f}  "
        f"length {m.get('completions/mean_length', float('nan')):.1f}  {m.get('step_time', 0.0):.1f}s",
        flush=True,
    )


def _save(run: Run, engine: Any, step: int, adapter: bool) -> None:
    if run.latest_checkpoint() is None or Run.checkpoint_step(run.latest_checkpoint()) != step:
        tmp = run.new_checkpoint_tmp(step)
        engine.save_checkpoint(tmp)
        run.commit_checkpoint(tmp, step)
    if adapter:
        tmp = run.adapter_tmp_dir()
        engine.save_adapter(tmp)
        run.commit_adapter(tmp)


def train(
    run: Run,
    should_stop: Callable[[], bool],
    engine_factory: Callable | None = None,
    evaluate: Callable | None = None,
) -> tuple[str, str]:
    """Train `run` to its target steps (or until stopped). Returns (final state, reason); failures raise.
    `engine_factory(spec, task, fault)` and `evaluate(engine, rows, grader)` (heldout.evaluate_policy) stand in
    for the real ones in tests."""
    from .heldout import HeldOutChecks, evaluate_policy
    from .recovery import restore_checkpoint, run_task
    from .sandbox import Cancelled
    from .tasks import prompt_batches

    spec = run.spec
    fault = Fault(os.environ.get(FAULT_ENV))
    try:  # the run's own copy of its rows (a resume sees the same ones); a stop ends a slow first load at once
        task = run_task(run, Limits.from_env(), cancel=should_stop)
    except Cancelled:
        return "stopped", "stopped while loading its task"
    if spec.engine == "trl":
        return _train_trl(run, spec, task, should_stop)
    factory = engine_factory or build_engine
    t0 = time.perf_counter()
    engine = factory(spec, task, fault)
    print(f"model and engine ready in {time.perf_counter() - t0:.1f} s", flush=True)
    ckpt, bad = restore_checkpoint(run, engine)  # the newest that loads: past a corrupt one, the older
    for line in bad:
        print(f"{line}: set aside, trying the one before it", flush=True)
    if ckpt is not None:
        print(f"resumed from {ckpt.name} (step {engine.step_count})", flush=True)
    elif bad:  # none loads, and a failed load may have changed the engine: start over on a fresh one
        engine = factory(spec, task, fault)
    start = engine.step_count
    run.truncate_steps(after=start)  # steps after the checkpoint are redone, on the same prompts
    heldout = HeldOutChecks(run, spec, task, evaluate or evaluate_policy) if spec.eval_every else None
    run.set_status("running", "training", phase="training")
    if heldout:
        heldout.maybe(engine, start)  # step 0: the base model's baseline (or a resume whose eval is missing)
    batches = prompt_batches(task.train, spec.prompts_per_step, spec.seed, start_step=start)
    while engine.step_count < spec.max_steps and not should_stop():
        rows = next(batches, None)
        if rows is None:
            break
        fault.before_step(engine.step_count + 1)
        result = engine.step(rows)
        run.append_step(result)
        _progress(result, spec.max_steps)
        n = engine.step_count
        if heldout:
            heldout.add_training_time(result.metrics.get("step_time"))
            heldout.maybe(engine, n)  # before the checkpoint: a checkpoint at a due step implies its eval
        if n % spec.save_every == 0 and n < spec.max_steps:
            _save(run, engine, n, adapter=False)
    n = engine.step_count
    if heldout and n > 0 and not should_stop():  # also when the task ran out of prompts before max_steps
        heldout.maybe(engine, n, force=True)
    if n > 0:
        run.set_status("running", "saving", phase="saving")
        _save(run, engine, n, adapter=True)
    if n >= spec.max_steps:
        return "finished", None
    if should_stop():
        return "stopped", f"stopped at step {n}/{spec.max_steps}"
    return "finished", f"the task ran out of prompt batches at step {n}/{spec.max_steps}"


def _train_trl(run: Run, spec: RunSpec, task: Any, should_stop: Callable[[], bool]) -> tuple[str, str]:
    from .models import drop_kept
    from .recovery import restore_checkpoint
    from .trl_engine import CheckpointProbe, train_with_trl

    drop_kept()  # a standby's model: TRL loads its own

    probe = CheckpointProbe(spec.num_iterations)
    ckpt, bad = restore_checkpoint(run, probe)  # TRL loads it; the probe reads its files first
    for line in bad:
        print(f"{line}: set aside, trying the one before it", flush=True)
    if ckpt is not None:
        print(f"resumed from {ckpt.name} (step {probe.step_count})", flush=True)
    run.truncate_steps(after=probe.step_count)  # steps after the checkpoint are redone, on the same prompts
    if spec.eval_every:
        print("held-out checks during training need the built-in engine (engine=builtin)", flush=True)
    run.set_status("running", "training", phase="training")

    def on_step(result: Any) -> None:
        run.append_step(result)
        _progress(result, spec.max_steps)

    def on_checkpoint(folder: Any, step: int) -> None:
        (run.dir / "checkpoints").mkdir(exist_ok=True)
        run.commit_checkpoint(folder, step)  # written whole by TRL out of sight; renamed into the store

    out = run.dir / ".trl-output"
    shutil.rmtree(out, ignore_errors=True)
    final = train_with_trl(spec, task, on_step=on_step, should_stop=should_stop, output_dir=out,
                           on_checkpoint=on_checkpoint, resume_from=ckpt)  # fmt: skip
    run.commit_adapter(final)
    shutil.rmtree(out, ignore_errors=True)
    n = run.steps_done()
    if n < spec.max_steps and should_stop():
        return "stopped", f"stopped at step {n}/{spec.max_steps}"
    return "finished", None


def main(run_id: str) -> int:
    """Entry point of `workbench worker RUN_ID`: returns 0 when the run finished or stopped, 1 when it failed."""
    run = open_run(run_id)
    should_stop = StopFlag(run, Limits.from_env().max_run_minutes)
    should_stop.install()
    timer = should_stop.watchdog()
    try:
        return _work(run, should_stop)
    finally:  # the watchdog must not outlive the run: main may be called in a process that goes on (tests)
        if timer is not None:
            timer.cancel()


def nice_down() -> None:
    """Lower this process's priority: the web server answering visitors goes first, and training takes what CPU it
    leaves (on a quiet machine, all of it). For the worker's own process only (`workbench worker`)."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


def _work(run: Run, should_stop: StopFlag) -> int:
    run_id = run.id
    me = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    if not run.set_status("running", "loading", only_if=("queued", "running"), phase="loading", **me):
        print(f"run {run_id} is {run.raw_status().get('state')}, not queued: nothing to do", flush=True)
        return 0
    print(f"worker {os.getpid()} training run {run_id} (python {sys.version.split()[0]})", flush=True)
    t0 = time.time()
    try:
        state, reason = train(run, should_stop)
        reason = should_stop.stop_reason(reason) if state == "stopped" else reason
    except Exception as e:  # every failure becomes a reason in the store; the traceback goes to worker.log
        traceback.print_exc()
        state, reason = "failed", failure_reason(e)
    try:
        run.set_status(state, reason, phase=None)
    except Exception:  # e.g. a full disk: still start the queued runs (a dead worker reads as interrupted)
        traceback.print_exc()
        state = "failed"
    print(f"run {run_id} {state} after {time.time() - t0:.0f}s{': ' + reason if reason else ''}", flush=True)
    try:
        from .runner import launch_queued

        for started in launch_queued():
            print(f"started queued run {started}", flush=True)
    except Exception:
        traceback.print_exc()
    return 1 if state == "failed" else 0
