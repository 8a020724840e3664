"""The standby worker (standby.py): warm before its run, handed the next launch, replaced once the slot is free;
a cold worker instead whenever it cannot be used; gone with the server."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_runner import tiny_spec

from workbench import runner
from workbench.config import Limits
from workbench.heldout import baseline_folder
from workbench.standby import Standby
from workbench.store import list_runs, open_run

pytestmark = pytest.mark.slow


@pytest.fixture
def keeping():
    """keep_standby(spec) for a tiny spec; afterwards no standby and no worker is left behind."""
    spec = tiny_spec(eval_every=2, eval_prompts=2)

    def keep(s=spec):
        runner.keep_standby(s, Limits())
        return s

    yield keep
    runner.keep_standby(None)
    for run in list_runs():
        runner.kill_run(run.id)


def warm_standby(timeout: float = 120.0) -> Standby:
    deadline = time.monotonic() + timeout
    while not runner.standby_ready():
        sb = runner._STANDBY["now"]
        assert sb is not None and sb.alive(), "the standby ended before it got warm"
        assert time.monotonic() < deadline, sb.log_path.read_text()[-2000:]
        time.sleep(0.1)
    return runner._STANDBY["now"]


def _rewards(run_id: str) -> list:
    return [(m["step"], m["reward"], m["loss"]) for m in open_run(run_id).metrics()]


def test_a_launch_is_handed_to_the_warm_standby_and_a_new_one_follows(keeping):
    spec = tiny_spec(eval_every=2, eval_prompts=2, max_steps=2)
    cold = runner.start_run(spec)  # before any standby: a worker started from nothing
    assert runner.wait(cold, timeout=300)["state"] == "finished"
    keeping(spec)
    sb = warm_standby()
    assert list(baseline_folder().glob("*.json")), "the standby did not work out the step-0 held-out baseline"
    run_id = runner.start_run(spec)
    assert runner._STANDBY["now"] is None  # the slot is taken: no second process while the run trains
    st = runner.wait(run_id, timeout=300)
    log = open_run(run_id).log_path.read_text()
    assert st["state"] == "finished", log[-2000:]
    assert st["pid"] == sb.proc.pid and "(standby)" in log and f"takes run {run_id}" in log
    assert "held-out eval at step 0" in log and "step 2/2" in log
    assert "warmed up: imports, held-out baseline, a first step, model, sandbox)" in log
    assert _rewards(run_id) == _rewards(cold)  # its warm-up (an engine, a step) leaves nothing in the run
    assert sb.proc.wait(timeout=30) == 0  # one run per standby: it exits like any worker

    runner.reconcile(Limits())  # the server's housekeeping tick: the slot is free again
    nxt = warm_standby()
    assert nxt.proc.pid != sb.proc.pid
    runner.keep_standby(None)  # the server no longer wants one: it goes, without a run
    assert nxt.proc.wait(timeout=30) == 0 and runner._STANDBY["now"] is None


def test_a_run_handed_over_during_the_warm_up_cuts_it_short(keeping):
    spec = keeping(tiny_spec(eval_every=2, eval_prompts=2, max_steps=2))
    sb = runner._STANDBY["now"]
    run_id = runner.start_run(spec)  # at once: the standby is still importing
    st = runner.wait(run_id, timeout=300)
    log = open_run(run_id).log_path.read_text()
    assert st["state"] == "finished" and st["pid"] == sb.proc.pid, log[-2000:]
    # the model is loaded for it; the optional warm-up (baseline, a throwaway step, the sandbox) is skipped
    assert "warmed up: imports, model)" in log and "held-out eval at step 0" in log


def test_a_standby_started_under_another_environment_is_not_used(keeping, monkeypatch):
    spec = keeping()
    sb = warm_standby()
    monkeypatch.setenv("WORKBENCH_FAULT", "nan_reward@1")  # the standby started without it: it must not train
    run_id = runner.start_run(spec.replace(max_steps=2))
    st = runner.wait(run_id, timeout=300)
    # the old standby is set aside (a new one, or a cold worker, trains the run) and the run sees the new variable
    assert st["pid"] != sb.proc.pid and sb.proc.wait(timeout=30) is not None
    assert st["state"] == "failed" and "non-finite" in st["reason"], open_run(run_id).log_path.read_text()


def test_the_standby_leaves_with_its_server():
    spec = tiny_spec(eval_every=0)
    proc = subprocess.Popen(runner.standby_argv(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=runner._worker_env())  # fmt: skip
    proc.stdin.close()  # what the kernel does when the server dies, even by SIGKILL
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0, out[-2000:]
    assert list_runs() == []


def test_standbys_that_die_unused_are_not_restarted_forever(keeping, monkeypatch):
    starts = []

    def dying(spec):
        starts.append(spec)
        return [sys.executable, "-c", "import sys; sys.exit(3)"]

    monkeypatch.setattr(runner, "standby_argv", dying)
    keeping()
    for _ in range(2 * runner.STANDBY_TRIES):
        if runner._STANDBY["now"] is not None:
            runner._STANDBY["now"].proc.wait(timeout=30)
        runner.reconcile(Limits())
    assert len(starts) == runner.STANDBY_TRIES and runner._STANDBY["now"] is None
    run_id = runner.start_run(tiny_spec(max_steps=1, eval_every=0))  # launches still work: a cold worker
    assert runner.wait(run_id, timeout=300)["state"] == "finished"


def test_a_standby_whose_warm_up_fails_still_takes_a_run(keeping):
    keeping(tiny_spec(model="no/such-model-here"))  # not bundled, not a folder, and the hub is offline here
    sb = warm_standby()
    assert "without all of its warm-up" in sb.log_path.read_text()
    run_id = runner.start_run(tiny_spec(max_steps=1, eval_every=0))  # another model: loaded by the run itself
    st = runner.wait(run_id, timeout=300)
    assert st["state"] == "finished" and st["pid"] == sb.proc.pid, open_run(run_id).log_path.read_text()[
        -2000:
    ]
