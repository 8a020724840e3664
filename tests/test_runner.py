"""The runner: one worker at a time, a bounded queue, stop / kill / resume, and every failure injected for real.

The fast tests swap the worker for a sleeping stand-in process to check the queue logic; the slow ones run the real
worker (`python -m workbench worker`) with the real engine on the tiny random model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import runner
from workbench.config import Limits, RunSpec
from workbench.store import open_run


def _wait_for(pred, timeout: float = 180, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _state(run_id: str) -> str:
    return open_run(run_id).status()["state"]


def test_one_active_run_then_a_queue_then_a_clear_refusal(stand_in):
    limits = Limits(queue_size=1)
    a = runner.start_run(RunSpec(), limits)
    assert _state(a) == "running" and runner.active_run() == a
    assert open_run(a).raw_status()["pid"] == runner._CHILDREN[a].pid
    b = runner.start_run(RunSpec(), limits)
    st = open_run(b).status()
    assert st["state"] == "queued" and a in st["reason"]
    with pytest.raises(runner.RunnerBusy) as e:
        runner.start_run(RunSpec(), limits)
    msg = str(e.value)
    assert a in msg and "queue is full (1/1)" in msg and f"workbench stop {a}" in msg
    assert (
        len(list((Path(os.environ["WORKBENCH_HOME"]) / "runs").glob("2*"))) == 2
    )  # refused: nothing created


def test_no_queue_refuses_at_once(stand_in):
    a = runner.start_run(RunSpec(), Limits(queue_size=0))
    with pytest.raises(runner.RunnerBusy, match=f"run {a} is training"):
        runner.start_run(RunSpec(), Limits(queue_size=0))


def test_kill_marks_interrupted_and_starts_the_next_queued_run(stand_in):
    a, b = runner.start_run(RunSpec()), runner.start_run(RunSpec())
    pid_a = open_run(a).raw_status()["pid"]
    runner.kill_run(a)
    st = open_run(a).status()
    assert st["state"] == "interrupted" and "killed by the user" in st["reason"]
    assert runner._CHILDREN.get(a) is None or runner._CHILDREN[a].poll() == -signal.SIGKILL
    assert pid_a != open_run(b).raw_status()["pid"] and _state(b) == "running"


def test_stop_takes_a_queued_run_out_of_the_queue(stand_in):
    runner.start_run(RunSpec())
    b = runner.start_run(RunSpec())
    runner.stop_run(b)
    assert _state(b) == "stopped" and not open_run(b).stop_requested()


def test_reconcile_after_a_worker_died_marks_it_and_starts_the_queue(stand_in):
    a, b = runner.start_run(RunSpec()), runner.start_run(RunSpec())
    os.kill(
        open_run(a).raw_status()["pid"], signal.SIGKILL
    )  # died behind the runner's back (OOM killer, ...)
    _wait_for(lambda: _state(a) == "interrupted", 5, "the dead worker to read as interrupted")
    assert open_run(a).raw_status()["state"] == "running"  # nobody wrote it down yet
    assert runner.reconcile() == [a]
    assert open_run(a).raw_status()["state"] == "interrupted" and _state(b) == "running"


def test_resume_refusals_say_why(stand_in):
    a = runner.start_run(RunSpec())
    with pytest.raises(runner.RunnerBusy, match="it is running"):
        runner.resume_run(a)
    runner.kill_run(a)
    open_run(a).set_status("finished")
    with pytest.raises(runner.RunnerBusy, match="already reached its target"):
        runner.resume_run(a)
    open_run(a).set_status("failed", "boom")
    with pytest.raises(runner.RunnerBusy, match="start a new run"):
        runner.resume_run(a)
    open_run(a).set_status("interrupted")
    assert runner.resume_run(a) == a and _state(a) == "running"


# --- the real worker and engine on the tiny model -------------------------------------------------------------
def tiny_spec(**kw) -> RunSpec:
    base = dict(model="tiny-random", task="concise", train_size=16, eval_size=2, max_completion_length=8,
                num_generations=2, prompts_per_step=2, max_steps=4, save_every=2, dtype="float32", device="cpu")  # fmt: skip
    return RunSpec(**{**base, **kw})


def _adapter_loads(path: Path) -> None:
    """The saved adapter (at `path` or one folder down, as the engine lays out checkpoints) loads onto the tiny
    model with peft and changes its output."""
    import torch
    from peft import PeftModel

    from workbench.models import load_model

    found = (
        path if (path / "adapter_config.json").exists() else next(path.glob("*/adapter_config.json")).parent
    )
    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(ids).logits.detach().clone()
    tuned = PeftModel.from_pretrained(model, found)
    assert not torch.allclose(tuned(ids).logits, before), "the adapter does nothing: was it trained?"


@pytest.mark.slow
def test_runs_to_the_end_and_the_ending_worker_starts_the_queued_run():
    # beta > 0: a KL term, so "kl" is logged (as in TRL, it is not logged when beta is 0)
    a = runner.start_run(tiny_spec(max_steps=4, beta=0.04))
    b = runner.start_run(tiny_spec(max_steps=2, seed=1))
    assert _state(b) == "queued"
    st_a = runner.wait(a, timeout=300)
    assert st_a["state"] == "finished", open_run(a).log_path.read_text()[-2000:]
    run = open_run(a)
    assert [m["step"] for m in run.metrics()] == [1, 2, 3, 4]
    assert {"reward", "reward_std", "kl", "loss", "completions/mean_length"} <= set(run.metrics()[-1])
    assert len(run.episodes(3)) == 2 * 2  # prompts_per_step × num_generations
    assert [p.name for p in run.checkpoints()] == ["step-000002", "step-000004"]
    _adapter_loads(run.final_adapter())
    log = run.log_path.read_text()
    assert "step 4/4" in log and f"started queued run {b}" in log
    assert runner.wait(b, timeout=300)["state"] == "finished"


@pytest.mark.slow
def test_stop_saves_the_adapter_and_resume_reaches_the_target():
    a = runner.start_run(
        tiny_spec(max_steps=120, save_every=5)
    )  # tiny steps take ~30 ms: the stop lands first
    _wait_for(lambda: open_run(a).steps_done() >= 2, what="two steps")
    runner.stop_run(a)
    st = runner.wait(a, timeout=120)
    assert st["state"] == "stopped" and st["reason"] == f"stopped at step {st['steps_done']}/120", st
    n = st["steps_done"]
    assert 2 <= n < 120
    run = open_run(a)
    assert run.final_adapter() is not None and run.checkpoint_step(run.latest_checkpoint()) == n
    runner.resume_run(a)
    st = runner.wait(a, timeout=300)
    assert st["state"] == "finished" and st["steps_done"] == 120, run.log_path.read_text()[-2000:]
    assert [m["step"] for m in run.metrics()] == list(range(1, 121))
    assert f"resumed from step-{n:06d}" in run.log_path.read_text()


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_then_resume():
    a = runner.start_run(
        tiny_spec(max_steps=90, save_every=4)
    )  # tiny steps take ~30 ms: the kill lands first
    run = open_run(a)
    _wait_for(lambda: run.steps_done() >= 5, what="five steps")
    os.kill(run.raw_status()["pid"], signal.SIGKILL)
    _wait_for(lambda: run.status()["state"] == "interrupted", 10, "interrupted")
    done = run.steps_done()
    assert [m["step"] for m in run.metrics()] == list(range(1, done + 1))  # every step so far is readable
    ckpt = run.latest_checkpoint()
    assert ckpt is not None and run.checkpoint_step(ckpt) % 4 == 0
    _adapter_loads(ckpt)
    redo = {s: [e["prompt"] for e in run.episodes(s)] for s in range(run.checkpoint_step(ckpt) + 1, done + 1)}
    # "the app restarts": a fresh process lists the runs and writes down the dead worker
    out = subprocess.run(
        [sys.executable, "-c", "from workbench import runner, store; print(runner.reconcile(), len(store.list_runs()))"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))},
    ).stdout  # fmt: skip
    assert out.strip() == f"['{a}'] 1"
    assert run.raw_status()["state"] == "interrupted"
    runner.resume_run(a)
    st = runner.wait(a, timeout=300)
    assert st["state"] == "finished" and st["steps_done"] == 90, run.log_path.read_text()[-2000:]
    for s, prompts in redo.items():  # redone steps saw the same prompts: the data order survived the kill
        assert [e["prompt"] for e in run.episodes(s)] == prompts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "steps", "fragments"),
    [
        ("nan_reward@2", 1, ["non-finite", "lower learning_rate"]),
        ("raise_reward@1", 0, ["reward function", "injected fault"]),
        ("oom@2", 1, ["out of memory", "lower num_generations"]),
    ],
)
def test_injected_failures_end_the_run_as_failed_with_a_reason(monkeypatch, fault, steps, fragments):
    monkeypatch.setenv("WORKBENCH_FAULT", fault)
    a = runner.start_run(tiny_spec(max_steps=5))
    st = runner.wait(a, timeout=300)
    log = open_run(a).log_path.read_text()
    assert st["state"] == "failed", log[-2000:]
    for frag in fragments:
        assert frag in st["reason"], st["reason"]
    if fault.startswith("raise"):  # the reason names the failing reward function
        from workbench.tasks import load_task

        spec = tiny_spec()
        assert (spec.rewards or load_task(spec).rewards)[0].name in st["reason"]
    assert st["steps_done"] == steps
    assert "Traceback" in log  # the detail is in the log, the one-liner in the status


# --- the worker's loop, in-process, with a stand-in engine (no model): cadence of checkpoints, stop, resume ------
class FakeEngine:
    """Counts steps and saves its count; what the worker loop needs from GRPOEngine, nothing more."""

    def __init__(self, fail_at: int | None = None, exc: BaseException | None = None):
        self.step_count, self.fail_at, self.exc, self.batches = 0, fail_at, exc, []

    def step(self, rows):
        from workbench.grpo import Episode, StepResult

        if self.step_count + 1 == self.fail_at:
            raise self.exc
        self.step_count += 1
        self.batches.append(rows)
        eps = [
            Episode(self.step_count, 0, str(r["prompt"]), "ok", {"r": 1.0}, 1.0, 0.0, 1, False) for r in rows
        ]
        return StepResult(self.step_count, eps, {"reward": 1.0, "step_time": 0.01})

    def save_checkpoint(self, path: Path) -> None:
        (path / "state.txt").write_text(str(self.step_count))

    def load_checkpoint(self, path: Path) -> None:
        self.step_count = int((path / "state.txt").read_text())

    def save_adapter(self, path: Path) -> None:
        (path / "adapter_config.json").write_text("{}")


def _train(run, engine, stop_after: int | None = None):
    from workbench import worker

    stop = (lambda: engine.step_count >= stop_after) if stop_after else (lambda: False)
    return worker.train(run, stop, engine_factory=lambda spec, task, fault: engine, evaluate=_fake_eval)


def _fake_eval(engine, rows, grader, **kw):
    """A held-out evaluation whose reward is the step count: each one is the best so far."""
    from workbench.heldout import EvalResult

    metrics = {"eval/reward": float(engine.step_count), "eval/prompts": float(len(rows))}
    return EvalResult(metrics, [{"prompt": str(r["prompt"]), "answer": "ok"} for r in rows])


def test_worker_loop_checkpoints_stops_and_resumes_on_the_same_prompts():
    from workbench.store import create_run

    spec = RunSpec(model="tiny-random", max_steps=7, save_every=3, train_size=16, eval_every=3)
    run = create_run(spec, status="running")
    state, reason = _train(run, FakeEngine(), stop_after=4)
    assert state == "stopped" and reason == "stopped at step 4/7"
    assert [p.name for p in run.checkpoints()] == ["step-000003", "step-000004"] and run.final_adapter()
    assert [e["step"] for e in run.evals()] == [0, 3]  # the baseline, then every 3 steps (none at a stop)
    # as if killed after step 5 and an evaluation: past the last checkpoint, which the resume must redo
    from workbench.grpo import StepResult

    run.append_step(StepResult(5, [], {"reward": -1.0}))
    run.append_eval(5, {"eval/reward": -1.0}, [])
    resumed = FakeEngine()
    assert _train(run, resumed) == ("finished", None)
    assert [m["step"] for m in run.metrics()] == list(range(1, 8)) and run.metrics()[4]["reward"] == 1.0
    assert [p.name for p in run.checkpoints()] == ["step-000006", "step-000007"]
    assert [e["step"] for e in run.evals()] == [0, 3, 6, 7]  # none lost, none twice, the stray one gone
    assert run.best_info()["step"] == 7 and (run.best_weights() / "adapter_config.json").exists()
    straight = FakeEngine()
    _train(create_run(spec, status="running"), straight)
    assert resumed.batches == straight.batches[4:]  # same data order as an uninterrupted run


def test_failure_reasons_name_the_cause():
    import torch

    from workbench.grpo import NonFiniteError, RewardFunctionError
    from workbench.worker import failure_reason

    assert "reward function failed" in failure_reason(RewardFunctionError("length", ValueError("bad")))
    assert "length" in failure_reason(RewardFunctionError("length", ValueError("bad")))
    assert failure_reason(RewardFunctionError("length", MemoryError())).startswith("out of memory")
    assert failure_reason(torch.OutOfMemoryError("CUDA out of memory")).startswith("out of memory")
    assert "non-finite" in failure_reason(NonFiniteError("loss is nan"))
    assert failure_reason(KeyError("x")).startswith("KeyError: 'x' (traceback in worker.log)")
