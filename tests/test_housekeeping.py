"""The server keeps its disk bounded and its queue moving with nobody at the keyboard: a SIGKILLed worker's queued
successor starts within seconds, old runs expire, crash leftovers and old downloads are swept, uploads pruned."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from workbench import housekeeping, runner
from workbench.config import RunSpec, workbench_home
from workbench.limits import Limits
from workbench.osutil import write_json_atomic
from workbench.store import create_run, list_runs, open_run, runs_dir

HOUR = 3600.0


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_queued_run_starts_after_a_sigkill_with_no_page_open(stand_in):
    a, b = runner.start_run(RunSpec()), runner.start_run(RunSpec())
    assert open_run(b).raw_status()["state"] == "queued"
    keeper = housekeeping.start(Limits(), tick_s=0.2)
    try:
        os.kill(open_run(a).raw_status()["pid"], signal.SIGKILL)  # the fault: the OOM killer, behind our back
        # nobody calls reconcile(), lists runs or opens the Runs tab: the server's own thread notices
        _wait_for(lambda: open_run(b).raw_status()["state"] == "running", 10, "the queued run to start")
        assert open_run(a).raw_status()["state"] == "interrupted"
    finally:
        keeper.stop()
    assert not keeper.thread.is_alive()


def test_runs_expire_after_their_age_never_a_live_one(stand_in):
    now = time.time()
    old = create_run(RunSpec(), status="finished")
    recent = create_run(RunSpec(), status="failed")
    live = runner.start_run(RunSpec())
    queued = runner.start_run(RunSpec())
    write_json_atomic(old.dir / "status.json", {**old.raw_status(), "ended": now - 8 * 86400})
    for run_id in (live, queued):  # older still, but training or waiting: kept
        write_json_atomic(
            open_run(run_id).dir / "status.json", {**open_run(run_id).raw_status(), "created": 0}
        )
    assert housekeeping.expire_runs(Limits(), now) == []  # locally off by default
    assert housekeeping.expire_runs(Limits(run_ttl_days=7), now) == [old.id]
    assert {r.id for r in list_runs()} == {recent.id, live, queued}
    assert Limits.from_env(space=True).run_ttl_days == 7 and Limits.from_env(space=False).run_ttl_days is None


def test_crash_leftovers_are_swept_but_not_a_live_runs_work(stand_in):
    dead = create_run(RunSpec(), status="interrupted")
    live = open_run(runner.start_run(RunSpec()))
    (dead.dir / "checkpoints").mkdir()
    junk = [
        runs_dir() / ".tmp-20250101-000000-abcdef-x1",  # create_run killed half way
        runs_dir() / ".trash-20250101-000000-abcdef-12ab",  # delete_run killed half way
        dead.dir / ".tmp-adapter-x",
        dead.dir / ".old-adapter-1a2b3c",
        dead.dir / ".trl-output",
        dead.dir / "checkpoints" / ".tmp-step-000004-x",
        dead.dir / "checkpoints" / ".old-step-000004-1a2b3c",
    ]
    for d in junk:
        d.mkdir()
        (d / "weights.bin").write_bytes(b"w")
    stray_json = dead.dir / ".status.json.k3j4h5"
    stray_json.write_text("{")
    kept = [live.dir / ".tmp-adapter-being-written", dead.dir / "checkpoints" / "step-000002"]
    for d in kept:
        d.mkdir()
    fresh = runs_dir() / ".tmp-20250101-000000-abcdef-now"  # may be a create_run in progress elsewhere
    fresh.mkdir()
    for p in [*junk, stray_json, *kept]:
        _age(p, HOUR)
    removed = set(housekeeping.sweep_leftovers())
    assert removed == {*junk, stray_json}
    assert all(p.exists() for p in [*kept, fresh])


def test_uploads_pruned_by_age_count_and_size_never_one_a_queued_run_needs(stand_in, monkeypatch):
    folder = workbench_home() / "uploads"
    folder.mkdir(parents=True)
    files = []
    for i in range(6):
        p = folder / f"{i:016x}.csv"
        p.write_bytes(b"prompt\n" + b"x" * 1_000_000)
        _age(p, (10 - i) * HOUR)  # 0 is the oldest (10 h), 5 the newest (5 h)
        files.append(p)
    runner.start_run(RunSpec())  # the only slot is taken: the next run waits, needing its upload
    needs = runner.start_run(RunSpec(task=f"file:{files[0]}"))
    assert open_run(needs).raw_status()["state"] == "queued"
    create_run(RunSpec(task=f"file:{files[1]}"), status="finished")  # done with it: does not keep it
    assert housekeeping.prune_uploads(folder, Limits()) == []  # locally: only beyond the newest 200
    removed = housekeeping.prune_uploads(folder, Limits(upload_ttl_hours=7.5))
    assert removed == files[1:3]  # 10 h (needed by the queued run), 9 h, 8 h old; 7 h and newer kept
    removed = housekeeping.prune_uploads(folder, Limits(max_uploads_mb=2.5), keep=files[3])
    assert removed == files[4:6]  # down to 2.5 MB, oldest first, sparing the needed and the kept one
    assert sorted(folder.iterdir()) == [files[0], files[3]]
    newest = folder / "ffffffffffffffff.csv"
    newest.write_text("prompt\nhi\n")
    monkeypatch.setattr(housekeeping, "KEEP_UPLOADS", 1)
    assert housekeeping.prune_uploads(folder, Limits()) == [files[3]]  # beyond the newest 1, over an hour old


def test_downloads_get_fresh_folders_and_old_ones_are_removed():
    first = housekeeping.download_folder("wb-export-")
    (first / "run-config.json").write_text("{}")
    second = housekeeping.download_folder("wb-export-")
    assert first.exists() and second != first and second.parent == first.parent
    _age(first, 2 * HOUR)
    third = housekeeping.download_folder("wb-compare-")
    assert not first.exists() and second.exists() and third.exists()


def test_downloads_from_the_runs_tab_use_them():
    from workbench.ui.runs import export_config

    run = create_run(RunSpec())
    path = Path(export_config(run.id))
    assert path.parent.parent == housekeeping.download_folder().parent


def test_an_upload_makes_room_for_itself_and_gradio_clears_its_cache(tmp_path):
    from workbench.ui import build_app
    from workbench.ui.uploads import save_upload, uploads_dir

    src = tmp_path / "rows.csv"
    src.write_bytes(b"prompt\n" + b"y" * 600_000)
    limits = Limits(max_uploads_mb=1.0)
    first = save_upload(src, "rows.csv", limits)
    second = save_upload(src, "rows.csv", limits)  # 1.2 MB together: the older one goes, the new one stays
    assert list(uploads_dir().iterdir()) == [second] and not first.exists()
    assert build_app(Limits()).delete_cache == housekeeping.GRADIO_CACHE
