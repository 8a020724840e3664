"""What keeps a long-lived server's disk bounded and its queue moving, with nobody at the keyboard.

    sweep_leftovers()                 # .tmp-* / .old-* / .trash-* folders a crash left behind (never a live run's)
    expire_runs(limits)               # ended runs older than limits.run_ttl_days are deleted
    prune_uploads(folder, limits)     # uploads past their age, count or total size, unless a waiting run needs one
    download_folder()                 # a fresh temp folder for a file handed to the browser; old ones are removed
    keeper = start(limits)            # at server start: all of the above, then a daemon thread that reconciles the
                                      # runner every few seconds and tidies the disk every half hour

The runner starts a queued run when a worker ends normally (the worker does it on its way out), but a worker killed
by SIGKILL or the out-of-memory killer says nothing: the thread's reconcile() notices the dead pid and starts the
next run within seconds, whether or not anyone has a page open. Gradio's own cache (uploaded files, downloads) is
cleared by `gr.Blocks(delete_cache=GRADIO_CACHE)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from . import runner
from .config import workbench_home
from .errors import UserError
from .limits import Limits
from .store import TERMINAL, delete_run, list_runs, runs_dir, worker_alive

log = logging.getLogger("workbench.housekeeping")

# gr.Blocks(delete_cache=(every, age)): every 10 minutes, Gradio deletes the files it cached over an hour ago
# (uploads are copied into the uploads folder at once, downloads are fetched within seconds of being offered).
GRADIO_CACHE = (600, 3600)
LEFTOVER_AGE_S = 600  # a temp folder younger than this may belong to a writer that is still at work
DOWNLOAD_AGE_S = 3600  # Gradio copies a returned file into its cache at once: ours are spares after that
KEEP_UPLOADS = 200  # uploads beyond the newest 200 are removed once an hour old
UPLOAD_GRACE_S = 3600  # never one younger: a visitor may be about to launch with it
_JSON_TMP = re.compile(r"^\.[\w.-]+\.json\.\w+$")  # osutil.write_json_atomic's temp files
TICK_S = 10.0
DISK_EVERY_S = 1800.0


def _age(p: Path, now: float) -> float:
    try:
        return now - p.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _leftover(name: str) -> bool:
    if name.startswith((".tmp-", ".old-", ".trash-")) or name == ".trl-output":
        return True
    return bool(_JSON_TMP.match(name))


def sweep_leftovers(min_age_s: float = LEFTOVER_AGE_S, now: float | None = None) -> list[Path]:
    """Remove what crashed writers left: temp and trash folders in the runs folder, and in each run without a live
    worker its temp adapters, checkpoints, JSON files and TRL scratch folder. Returns what was removed."""
    now = time.time() if now is None else now
    root, removed = runs_dir(), []
    if not root.is_dir():
        return removed
    places = [root]
    for run in list_runs():
        if not worker_alive(run.raw_status()):  # a live worker's temp files are work in progress
            places += [run.dir, run.dir / "checkpoints"]
    for place in places:
        with contextlib.suppress(FileNotFoundError):
            for p in place.iterdir():
                if _leftover(p.name) and _age(p, now) > min_age_s:
                    _remove(p)
                    removed.append(p)
    uploads = workbench_home() / "uploads"  # ui/uploads.py copies to .<name>.tmp, then renames
    if uploads.is_dir():
        for p in uploads.glob(".*.tmp"):
            if _age(p, now) > min_age_s:
                _remove(p)
                removed.append(p)
    return removed


def expire_runs(limits: Limits, now: float | None = None) -> list[str]:
    """Delete runs that ended more than limits.run_ttl_days ago (never a queued or running one). Returns their ids."""
    if not limits.run_ttl_days:
        return []
    cutoff = (time.time() if now is None else now) - limits.run_ttl_days * 86400
    gone = []
    for run in list_runs():
        st = run.raw_status()
        ended = st.get("ended") or st.get("updated") or st.get("created")
        if st.get("state") in TERMINAL and ended and ended < cutoff:
            try:
                delete_run(run.id)
            except (UserError, OSError):  # its worker came back to life, or someone deleted it first
                continue
            gone.append(run.id)
    return gone


def needed_uploads() -> set[Path]:
    """Uploads a run will still read: the `file:` task of a run that may still train (queued, running, or one a
    resume would continue) and has no copy of its rows yet (recovery.py)."""
    from .recovery import TASK_FILE

    out = set()
    for run in list_runs():
        try:
            task = run.spec.task.strip()
        except (OSError, ValueError):
            continue
        if not task.startswith("file:") or (run.dir / TASK_FILE).exists():
            continue
        state = run.raw_status().get("state")
        if state != "finished" and (state != "failed" or run.checkpoints()):
            out.add(Path(task[5:].strip()).resolve())
    return out


def prune_uploads(
    folder: Path, limits: Limits, keep: Path | None = None, now: float | None = None
) -> list[Path]:
    """Remove uploads, oldest first, that are past limits.upload_ttl_hours, beyond the newest KEEP_UPLOADS (once an
    hour old) or over limits.max_uploads_mb in all; never `keep` (the one just saved) nor one a waiting run needs."""
    now = time.time() if now is None else now
    from .tasks.files import FORMATS

    files = []
    for p in folder.iterdir() if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            if p.suffix in FORMATS and not p.name.startswith("."):
                files.append((p.stat().st_mtime, p.stat().st_size, p))
    files.sort()
    total = sum(size for _, size, _ in files)
    needed: set[Path] | None = None
    removed = []
    for i, (mtime, size, p) in enumerate(files):
        age = now - mtime
        expired = limits.upload_ttl_hours is not None and age > limits.upload_ttl_hours * 3600
        too_many = i < len(files) - KEEP_UPLOADS and age > UPLOAD_GRACE_S
        too_big = limits.max_uploads_mb is not None and total > limits.max_uploads_mb * 1e6
        if not (expired or too_many or too_big) or (keep is not None and p == keep):
            continue
        needed = needed_uploads() if needed is None else needed
        if p.resolve() in needed:
            continue
        _remove(p)
        total -= size
        removed.append(p)
    return removed


def download_folder(prefix: str = "wb-") -> Path:
    """A fresh folder for a file the browser downloads (an adapter zip, a config, a comparison CSV), under the
    system temp folder (where Gradio accepts files from); folders from earlier downloads are removed."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_sweep_downloads()))


def _sweep_downloads() -> Path:
    root = Path(tempfile.gettempdir()) / f"grpo-workbench-downloads-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    now = time.time()
    for p in root.iterdir():
        if _age(p, now) > DOWNLOAD_AGE_S:
            _remove(p)
    return root


def tidy_disk(limits: Limits) -> None:
    """Everything that bounds the disk, once: expired runs, crash leftovers, old uploads, old downloads."""
    gone = expire_runs(limits)
    if gone:
        log.info("deleted %d run(s) that ended over %g days ago: %s", len(gone), limits.run_ttl_days, gone)
    sweep_leftovers()
    prune_uploads(workbench_home() / "uploads", limits)
    _sweep_downloads()


class Keeper:
    """The server's housekeeping thread: reconcile() every `tick_s` (queued runs start when a slot frees, even after
    a SIGKILL), tidy_disk() every `disk_every_s`. A failing round is logged and the next one tries again."""

    def __init__(self, limits: Limits, tick_s: float = TICK_S, disk_every_s: float = DISK_EVERY_S):
        self.limits, self.tick_s, self.disk_every_s = limits, tick_s, disk_every_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="workbench-housekeeping", daemon=True)

    def _loop(self) -> None:
        last_disk = time.monotonic()
        while not self._stop.wait(self.tick_s):
            try:
                started = runner.launch_queued(self.limits)
                if started:
                    log.info("started queued run(s) %s", ", ".join(started))
                if time.monotonic() - last_disk > self.disk_every_s:
                    last_disk = time.monotonic()
                    tidy_disk(self.limits)
            except Exception:  # never let the thread die: the queue would stall until someone opens a page
                log.warning("housekeeping round failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def start(limits: Limits | None = None, tick_s: float = TICK_S, disk_every_s: float = DISK_EVERY_S) -> Keeper:
    """At server start: mark dead workers' runs interrupted and start the queue, tidy the disk, start the thread."""
    limits = limits or Limits.from_env()
    runner.reconcile(limits)
    try:
        tidy_disk(limits)
    except Exception:  # a tidy that fails must not keep the server from starting
        log.warning("tidying the disk at start failed", exc_info=True)
    keeper = Keeper(limits, tick_s, disk_every_s)
    keeper.thread.start()
    return keeper
