"""The run store: ids are validated, status is atomic and tells dead workers apart, steps and checkpoints are
all-or-nothing for readers, and the store survives a writer killed half way."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import pytest

from workbench import osutil, store
from workbench.config import RunSpec
from workbench.store import RESUMABLE, RunNotFound, create_run, delete_run, list_runs, open_run


@dataclass
class Ep:  # the engine's Episode, as far as the store is concerned
    step: int
    group: int
    prompt: str
    completion: str
    rewards: dict = field(default_factory=dict)
    reward: float = 0.0
    advantage: float = 0.0
    length: int = 3
    truncated: bool = False


@dataclass
class Step:
    step: int
    episodes: list
    metrics: dict


def _step(n: int, eps: int = 4, reward: float = 0.5) -> Step:
    episodes = [
        Ep(n, i // 2, f"p{i // 2}", f"c{n}-{i}", {"length": reward}, reward, 0.1 * i) for i in range(eps)
    ]
    return Step(n, episodes, {"reward": reward, "kl": 0.0, "completions/mean_length": 3.0})


def test_create_open_list_and_spec_round_trip():
    spec = RunSpec(model="tiny-random", max_steps=5, rewards=["length:1,target=5"])
    a, b = create_run(spec), create_run(spec.replace(seed=3))
    assert store.RUN_ID_RE.fullmatch(a.id)
    assert [r.id for r in list_runs()] == sorted([a.id, b.id])
    assert open_run(a.id).spec == spec
    assert set(a.versions()) >= {"torch", "transformers", "peft", "trl", "workbench"}
    st = a.status()
    assert (st["state"], st["steps_done"], st["max_steps"]) == ("queued", 0, 5)
    # only the run folders are listed: no temp folders, no lock files
    assert all(
        p.name.startswith(".") or store.RUN_ID_RE.fullmatch(p.name) for p in store.runs_dir().iterdir()
    )


@pytest.mark.parametrize("bad", ["../etc", "20250101-120000-abc", "20250101-120000-ABCDEF", "", "x/../y"])
def test_malformed_ids_never_reach_the_filesystem(bad):
    with pytest.raises(RunNotFound, match="not a run id"):
        open_run(bad)


def test_unknown_run_says_how_to_list_runs():
    with pytest.raises(RunNotFound, match="workbench runs"):
        open_run("20250101-120000-abcdef")


def test_steps_and_episodes_round_trip_nan_becomes_none():
    run = create_run(RunSpec())
    run.append_step(_step(1))
    run.append_step(Step(2, _step(2).episodes, {"reward": math.nan, "kl": math.inf}))
    assert run.steps_done() == 2
    m = run.metrics()
    assert [x["step"] for x in m] == [1, 2] and m[0]["reward"] == 0.5
    assert m[1]["reward"] is None and m[1]["kl"] is None  # strict JSON readers (browsers) reject NaN
    assert run.last_metrics()["step"] == 2 and run.metrics(since_step=1)[0]["step"] == 2
    eps = run.episodes()  # latest step
    assert [e["completion"] for e in eps] == ["c2-0", "c2-1", "c2-2", "c2-3"]
    assert eps[3]["group"] == 1 and eps[3]["rewards"] == {"length": 0.5} and eps[3]["truncated"] is False
    assert len(run.episodes(1)) == 4 and run.episodes(7) == []
    # a repeated step replaces the old one (a resume redoes steps after its checkpoint)
    run.append_step(_step(2, eps=2, reward=0.9))
    assert run.steps_done() == 2 and len(run.episodes(2)) == 2 and run.last_metrics()["reward"] == 0.9
    run.truncate_steps(after=1)
    assert run.steps_done() == 1 and run.episodes(2) == []
    assert list(run.metrics_df()["step"]) == [1]


def test_chat_prompts_are_kept_as_json_text():
    run = create_run(RunSpec())
    msgs = [{"role": "user", "content": "hi"}]
    run.append_step(Step(1, [Ep(1, 0, msgs, [{"role": "assistant", "content": "yo"}])], {}))
    e = run.episodes()[0]
    assert '"content": "hi"' in e["prompt"] and '"yo"' in e["completion"]


def test_readers_never_see_a_half_written_step():
    run = create_run(RunSpec())
    errors: list[str] = []
    done = threading.Event()

    def read():
        reader = open_run(run.id)
        while not done.is_set():
            n = reader.steps_done()
            for m in reader.metrics():
                got = len(reader.episodes(m["step"]))
                if got != 40:
                    errors.append(f"step {m['step']} had {got} of 40 episodes")
            if n and reader.last_metrics()["step"] < n:
                errors.append("metrics behind the count")

    t = threading.Thread(target=read)
    t.start()
    try:
        for n in range(1, 31):
            run.append_step(_step(n, eps=40))
    finally:
        done.set()
        t.join()
    assert not errors, errors[:3]
    assert run.steps_done() == 30


def test_status_is_atomic_and_only_if_guards_a_claim():
    run = create_run(RunSpec())
    assert run.set_status("running", "starting", only_if=("queued",), pid=os.getpid(), pid_start=None)
    assert not run.set_status("running", "second claim", only_if=("queued",))  # already claimed
    st = run.status()
    assert st["state"] == "running" and st["reason"] == "starting" and st["started"] and st["ended"] is None
    run.set_status("finished")
    st = run.status()
    assert st["state"] == "finished" and st["ended"] >= st["started"]
    with pytest.raises(ValueError, match="unknown run state"):
        run.set_status("done")
    # no temp files left beside status.json
    assert not [p for p in run.dir.iterdir() if p.name.startswith(".status.json")]


def test_a_running_run_whose_worker_died_or_whose_pid_was_reused_reads_as_interrupted():
    run = create_run(RunSpec())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    run.set_status("running", pid=p.pid, pid_start=None)
    st = run.status()
    assert st["state"] == "interrupted" and st["state"] in RESUMABLE
    assert st["reason"].startswith("the worker process ended") and "`" not in st["reason"]  # no command
    assert run.raw_status()["state"] == "running"  # reading does not write; runner.reconcile() does
    me = osutil.process_start_time(os.getpid())
    run.set_status("running", pid=os.getpid(), pid_start=me)
    assert run.status()["state"] == "running"  # this process is alive and is the recorded one
    run.set_status("running", pid=os.getpid(), pid_start=me - 1)  # same pid, another process: reused
    assert run.status()["state"] == "interrupted"


def test_zombie_worker_counts_as_dead():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = osutil.process_start_time(p.pid)
    import time

    for _ in range(100):  # not reaped yet: a zombie, still in the process table
        if not osutil.pid_alive(p.pid, start):
            break
        time.sleep(0.02)
    assert not osutil.pid_alive(p.pid, start)
    p.wait()


def test_checkpoints_appear_whole_and_only_the_latest_are_kept():
    run = create_run(RunSpec())
    assert run.latest_checkpoint() is None and run.final_adapter() is None
    for step in (2, 4, 6):
        tmp = run.new_checkpoint_tmp(step)
        (tmp / "adapter_model.safetensors").write_bytes(b"x" * 10)
        assert run.latest_checkpoint() != tmp  # not visible while being written
        run.commit_checkpoint(tmp, step)
    assert [p.name for p in run.checkpoints()] == ["step-000004", "step-000006"]
    assert store.Run.checkpoint_step(run.latest_checkpoint()) == 6
    # re-saving a step (after a resume) replaces it whole
    tmp = run.new_checkpoint_tmp(6)
    (tmp / "marker").write_text("new")
    run.commit_checkpoint(tmp, 6)
    assert (run.latest_checkpoint() / "marker").read_text() == "new"
    tmp = run.adapter_tmp_dir()
    (tmp / "adapter_config.json").write_text("{}")
    assert run.commit_adapter(tmp) == run.final_adapter()
    assert not [p for p in (run.dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_writer_killed_mid_transaction_leaves_a_readable_store():
    run = create_run(RunSpec())
    run.append_step(_step(1))
    # a process that opens a transaction, writes half a step, and dies by SIGKILL before committing
    code = (
        "import os, signal, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1]); con.execute('BEGIN')\n"
        "con.execute(\"INSERT INTO steps VALUES (2, 0, '{}')\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(run.db_path)])
    assert p.returncode == -9
    assert run.steps_done() == 1 and [m["step"] for m in run.metrics()] == [1]
    run.append_step(_step(2))
    assert run.steps_done() == 2


def test_delete_run_refuses_a_live_worker():
    run = create_run(RunSpec())
    run.set_status("running", pid=os.getpid(), pid_start=osutil.process_start_time(os.getpid()))
    with pytest.raises(store.StoreError, match="stop it first"):
        delete_run(run.id)
    run.set_status("stopped")
    delete_run(run.id)
    assert list_runs() == []
    with pytest.raises(RunNotFound):
        open_run(run.id)


def test_stop_request_file():
    run = create_run(RunSpec())
    assert not run.stop_requested()
    open_run(run.id).request_stop()  # another process's handle sees it
    assert run.stop_requested()
    run.clear_stop()
    assert not run.stop_requested()


def test_json_safe_gives_what_a_strict_json_reader_takes():
    import json
    from pathlib import Path

    import numpy as np
    import pandas as pd

    # numpy scalars and arrays unwrapped, NaN/inf/NA as None (browsers reject NaN), keys as text, the rest as str
    doc = {
        1: [np.float32(0.5), math.nan, np.array([1, 2]), pd.NA],
        "x": (math.inf, None, True),
        "p": Path("/a"),
    }
    want = {"1": [0.5, None, [1, 2], None], "x": [None, None, True], "p": "/a"}
    assert osutil.json_safe(doc) == want
    assert json.loads(json.dumps(osutil.json_safe(doc), allow_nan=False)) == want
