"""Recovery loses nothing that was saved. Each test injects the fault it guards against:

- a run that failed after a checkpoint is resumed and reaches its target;
- the latest checkpoint is cut short: the resume falls back to the one before it;
- every checkpoint file is flushed to disk before the rename that makes it visible;
- the source of a run's task changes (an upload pruned, a file edited): resume and held-out Compare still read the
  rows the run started with.

The worker loop runs in-process on a stand-in engine (no model); the slow test runs the real worker and engine on
the tiny random model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench import osutil, runner
from workbench.config import RunSpec
from workbench.store import create_run, open_run


class CountingEngine:
    """What the worker loop needs from GRPOEngine: a step count, saved and loaded as a checkpoint."""

    def __init__(self, fail_at: int | None = None):
        self.step_count, self.fail_at, self.batches, self.loaded = 0, fail_at, [], None

    def step(self, rows):
        from workbench.grpo import Episode, StepResult

        if self.step_count + 1 == self.fail_at:
            raise MemoryError("injected: out of memory")
        self.step_count += 1
        self.batches.append([r["prompt"] for r in rows])
        eps = [
            Episode(self.step_count, 0, str(r["prompt"]), "ok", {"r": 1.0}, 1.0, 0.0, 1, False) for r in rows
        ]
        return StepResult(self.step_count, eps, {"reward": float(self.step_count), "step_time": 0.01})

    def save_checkpoint(self, path: Path) -> None:
        (path / "state.txt").write_text(f"step={self.step_count}")

    def load_checkpoint(self, path: Path) -> None:
        key, _, value = (path / "state.txt").read_text().partition("=")
        if key != "step":
            raise ValueError(f"{path.name}/state.txt is garbled")
        self.step_count, self.loaded = int(value), path.name

    def save_adapter(self, path: Path) -> None:
        (path / "adapter_config.json").write_text("{}")


def _train(run, engine, stop_after: int | None = None):
    from workbench import worker

    stop = (lambda: engine.step_count >= stop_after) if stop_after else (lambda: False)
    return worker.train(run, stop, engine_factory=lambda spec, task, fault: engine)


def _spec(**kw) -> RunSpec:
    return RunSpec(
        **{**dict(model="tiny-random", max_steps=6, save_every=2, train_size=16, eval_every=0), **kw}
    )


def test_a_failed_run_with_a_checkpoint_resumes_to_its_target(stand_in):
    run = create_run(_spec(), status="running")
    with pytest.raises(MemoryError):  # the fault: out of memory at step 5, after the checkpoint of step 4
        _train(run, CountingEngine(fail_at=5))
    run.set_status("failed", "out of memory (injected)")
    st = run.status()
    assert st["state"] == "failed" and st["resumable"] and st["steps_done"] == 4
    assert runner.resume_run(run.id) == run.id and run.status()["state"] == "running"  # the runner takes it
    runner.kill_run(run.id)
    resumed = CountingEngine()
    assert _train(run, resumed) == ("finished", None)
    assert resumed.loaded == "step-000004" and [m["step"] for m in run.metrics()] == [1, 2, 3, 4, 5, 6]
    # before its first checkpoint there is nothing to go on from: refused, saying why
    early = create_run(_spec(), status="failed")
    assert not early.status()["resumable"]
    with pytest.raises(runner.RunnerBusy, match="failed before its first checkpoint"):
        runner.resume_run(early.id)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_older_one():
    run = create_run(_spec(max_steps=8), status="running")
    assert _train(run, CountingEngine(), stop_after=5)[0] == "stopped"
    assert [p.name for p in run.checkpoints()] == ["step-000004", "step-000005"]
    (run.latest_checkpoint() / "state.txt").write_bytes(b"\x00\x13garbage")  # the fault: a bad disk
    resumed = CountingEngine()
    assert _train(run, resumed) == ("finished", None)
    assert resumed.loaded == "step-000004"  # the older one kept against exactly this
    assert [m["step"] for m in run.metrics()] == list(range(1, 9))
    aside = [p.name for p in (run.dir / "checkpoints").iterdir() if p.name.startswith(".corrupt-step-000005")]
    assert len(aside) == 1  # set aside, never tried again
    assert [p.name for p in run.checkpoints()] == ["step-000006", "step-000008"]
    straight = CountingEngine()
    _train(create_run(_spec(max_steps=8), status="running"), straight)
    assert resumed.batches == straight.batches[4:]  # steps 5.. redone on the prompts they had


def test_every_checkpoint_is_unreadable_then_it_starts_over():
    run = create_run(_spec(max_steps=4), status="running")
    _train(run, CountingEngine(), stop_after=3)
    for ckpt in run.checkpoints():
        (ckpt / "state.txt").write_text("")
    built = []

    def factory(spec, task, fault):
        built.append(CountingEngine())
        return built[-1]

    from workbench import worker

    assert worker.train(run, lambda: False, engine_factory=factory) == ("finished", None)
    assert len(built) == 2 and built[-1].loaded is None  # a fresh engine, not one half-loaded
    assert [m["step"] for m in run.metrics()] == [1, 2, 3, 4]


def test_checkpoint_files_reach_the_disk_before_the_rename(monkeypatch):
    run = create_run(_spec())
    tmp = run.new_checkpoint_tmp(2)
    (tmp / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "optimizer.pt").write_bytes(b"o" * 1000)
    files = {str(p) for p in tmp.rglob("*") if p.is_file()}
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):  # the fault this guards against (data still in the page cache at a power cut) cannot be
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))  # made here: record the order instead
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(osutil.os, "fsync", fsync)
    monkeypatch.setattr(osutil.os, "replace", replace)
    final = run.commit_checkpoint(tmp, 2)
    renamed = events.index(("replace", str(tmp)))
    synced = {path for kind, path in events[:renamed] if kind == "fsync"}
    assert files <= synced, files - synced
    assert {str(tmp), str(tmp / "sub")} <= synced  # the folders' entries too
    assert ("fsync", str(final.parent)) in events[renamed:]  # and the rename itself
    assert (final / "sub" / "optimizer.pt").read_bytes() == b"o" * 1000


def test_a_run_keeps_its_own_rows_when_the_source_changes(tmp_path):
    from workbench.recovery import saved_task, task_for_run
    from workbench.ui.compare import HELD_OUT, comparison_rows

    src = tmp_path / "upload.csv"
    src.write_text("prompt,answer\n" + "".join(f"What is {i} + 1?,{i + 1}\n" for i in range(20)))
    spec = _spec(task=f"file:{src}", eval_size=4, max_steps=6)
    run = create_run(spec, status="running")
    first = CountingEngine()
    assert _train(run, first, stop_after=3)[0] == "stopped"
    copy = saved_task(run)
    assert copy is not None and len(copy.eval) == 4 and copy.train[0]["answer"] is not None
    src.unlink()  # the fault: the upload was pruned (or the hub dataset changed) after the run started
    resumed = CountingEngine()
    assert _train(run, resumed) == ("finished", None)  # resume reads the copy, not the gone file
    assert [m["step"] for m in run.metrics()] == list(range(1, 7))
    assert comparison_rows(run.id, HELD_OUT, 2, "", "") == copy.eval[:2]  # held-out Compare: the same rows
    assert task_for_run(open_run(run.id)).eval == copy.eval
    src.write_text("prompt,answer\n" + "".join(f"Other {i}?,{i}\n" for i in range(20)))  # edited, not gone
    assert task_for_run(open_run(run.id)).eval == copy.eval


@pytest.mark.slow
def test_real_worker_fails_then_its_corrupt_checkpoint_is_skipped_on_resume(monkeypatch):
    """The real worker and engine: out of memory at step 5 (after checkpoints 2 and 4), the newest checkpoint's
    files cut in half, then a resume from step 2 to the end."""
    spec = RunSpec(model="tiny-random", task="concise", train_size=16, eval_size=2, max_completion_length=8,
                   num_generations=2, prompts_per_step=2, max_steps=6, save_every=2, dtype="float32",
                   device="cpu")  # fmt: skip
    monkeypatch.setenv("WORKBENCH_FAULT", "oom@5")
    a = runner.start_run(spec)
    st = runner.wait(a, timeout=300)
    run = open_run(a)
    assert st["state"] == "failed" and st["resumable"], run.log_path.read_text()[-2000:]
    assert [p.name for p in run.checkpoints()] == ["step-000002", "step-000004"]
    for f in run.latest_checkpoint().rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    monkeypatch.delenv("WORKBENCH_FAULT")
    runner.resume_run(a)
    st = runner.wait(a, timeout=300)
    log = run.log_path.read_text()
    assert st["state"] == "finished" and st["steps_done"] == 6, log[-2000:]
    assert "step-000004 could not be loaded" in log and "resumed from step-000002" in log
    assert [m["step"] for m in run.metrics()] == list(range(1, 7))


@pytest.mark.slow
def test_trl_runs_checkpoint_stop_crash_and_resume_keeping_their_steps(monkeypatch):
    """TRL engine on the tiny model: a stop saves a checkpoint; a crash (injected while logging step 5) leaves
    checkpoints 3 and 4; the newest is cut short; the resume goes on from 3 and keeps steps 1-3 as logged."""
    from workbench import worker
    from workbench.config import RewardSpec
    from workbench.store import Run

    spec = RunSpec(model="tiny-random", task="concise", train_size=16, eval_size=2, max_steps=6, save_every=2,
                   prompts_per_step=2, num_generations=2, max_completion_length=8, learning_rate=1e-2,
                   dtype="float32", device="cpu", engine="trl", eval_every=0,
                   rewards=[RewardSpec("length", 1.0, {"target": 20, "unit": "chars"})])  # fmt: skip
    run = create_run(spec, status="running")
    assert worker.train(run, lambda: run.steps_done() >= 3)[0] == "stopped"
    assert [p.name for p in run.checkpoints()] == ["step-000002", "step-000003"]  # every 2, and at the stop
    assert (run.latest_checkpoint() / "trainer_state.json").exists() and run.final_adapter()
    kept = {m["step"]: m["wall_time"] for m in run.metrics()}

    append = Run.append_step

    def crash_at_5(self, result):  # the fault: the worker dies while logging step 5
        if result.step == 5:
            raise MemoryError("injected: killed at step 5")
        append(self, result)

    monkeypatch.setattr(Run, "append_step", crash_at_5)
    with pytest.raises(MemoryError):
        worker.train(run, lambda: False)
    monkeypatch.setattr(Run, "append_step", append)
    assert [p.name for p in run.checkpoints()] == ["step-000003", "step-000004"]
    assert {m["step"]: m["wall_time"] for m in run.metrics() if m["step"] <= 3} == kept  # not redone
    for f in run.latest_checkpoint().glob("*.safetensors"):  # and a bad disk cuts the newest short
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    assert worker.train(run, lambda: False) == ("finished", None)
    assert [m["step"] for m in run.metrics()] == list(range(1, 7))
    assert {m["step"]: m["wall_time"] for m in run.metrics() if m["step"] <= 3} == kept
    assert len(run.episodes(4)) == 2 * 2 and run.final_adapter() is not None
    assert any(p.name.startswith(".corrupt-step-000004") for p in (run.dir / "checkpoints").iterdir())
    from workbench.recovery import saved_task
    from workbench.tasks import prompt_batches

    batches = prompt_batches(saved_task(run).train, 2, spec.seed)
    for step in range(1, 7):  # each step, redone or not, trained on the prompts an unbroken run gives it
        assert {e["prompt"] for e in run.episodes(step)} == {r["prompt"] for r in next(batches)}, step
