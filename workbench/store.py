"""The run store: every run on disk under `$WORKBENCH_HOME/runs/<run_id>/`, readable by any process.

    spec.json        the full RunSpec (loadable again with `workbench train --config`)
    versions.json    torch, transformers, peft, trl, workbench versions the run was created with
    status.json      {state, reason, pid, pid_start, started, ended, updated, ...}
    run.db           SQLite (WAL): one row per step (metrics), one per episode (prompt, completion, rewards, ...)
    task.json        the run's own copy of its train and held-out rows, written at its first start (recovery.py)
    checkpoints/step-000010/   adapter + optimizer state every `save_every` steps (the latest few are kept)
    adapter/         the final adapter (or full model), written when the run ends
    worker.log       the worker process's stdout and stderr

Every write is atomic: JSON files are written to a temp file and renamed over the old one, steps and their
episodes go in one SQLite transaction, checkpoints and the adapter are written into a temp folder that is renamed
into place. A reader (the UI, the CLI, a second tab) never sees a half-written record or checkpoint, and a run
killed at any point leaves a readable store. (The atomic writes, the lock and the "is its worker alive" check are
in osutil.py.)

Run ids are `YYYYmmdd-HHMMSS-xxxxxx` (UTC time + 6 random hex digits): they sort by creation time and are checked
against a strict pattern before they touch a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .config import RunSpec, workbench_home
from .errors import RunNotFound, StoreError
from .osutil import file_lock, fsync_tree, json_safe, pid_alive, replace_dir, write_json_atomic
from .store_evals import HeldOutRecords

STATES = ("queued", "running", "finished", "stopped", "failed", "interrupted")
TERMINAL = ("finished", "stopped", "failed", "interrupted")
RESUMABLE = ("stopped", "interrupted")  # a resume continues these (and a failed run that has a checkpoint)
FAILED = ("failed", "interrupted")  # ended by an error, or by losing its worker
RUN_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
# the latest and the one before it (a resume needs one; the other guards against a bad disk)
KEEP_CHECKPOINTS = 2
_STOP_FILE = "stop-requested"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, wall_time REAL NOT NULL, metrics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    step INTEGER NOT NULL, idx INTEGER NOT NULL, grp INTEGER NOT NULL, prompt TEXT NOT NULL,
    completion TEXT NOT NULL, rewards TEXT NOT NULL, reward REAL, advantage REAL, length INTEGER,
    truncated INTEGER, PRIMARY KEY (step, idx));
"""


def runs_dir() -> Path:
    return workbench_home() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide a run's numbers (read from package metadata: no torch import)."""
    out: dict[str, str | None] = {"workbench": __version__}
    for name in ("torch", "transformers", "peft", "trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Run(HeldOutRecords):
    """One run's folder. Cheap to construct; every read goes to disk, so any process sees the latest state."""

    def __init__(self, path: Path):
        self.dir = path
        self.id = path.name

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    @property
    def log_path(self) -> Path:
        return self.dir / "worker.log"

    @property
    def db_path(self) -> Path:
        return self.dir / "run.db"

    @property
    def spec(self) -> RunSpec:
        return RunSpec.from_json((self.dir / "spec.json").read_text())

    def versions(self) -> dict[str, Any]:
        return json.loads((self.dir / "versions.json").read_text())

    # --- status
    def raw_status(self) -> dict[str, Any]:
        """status.json as written, without the liveness check."""
        try:
            return json.loads((self.dir / "status.json").read_text())
        except (OSError, ValueError):
            return {"state": "interrupted", "reason": "status.json is missing or unreadable"}

    def status(self) -> dict[str, Any]:
        """{state, reason, pid, started, ended, steps_done, max_steps, updated, ...}. A run marked running whose
        worker is gone reads as interrupted (runner.reconcile() writes that down)."""
        st = self.raw_status()
        if st.get("state") == "running" and not worker_alive(st):
            st["state"] = "interrupted"
            st["reason"] = dead_worker_reason(self)
        st.setdefault("reason", None)
        for k in ("pid", "started", "ended", "updated"):
            st.setdefault(k, None)
        st["steps_done"] = self.steps_done()
        try:
            st["max_steps"] = self.spec.max_steps
        except (OSError, ValueError):
            st["max_steps"] = None
        # a failure (out of memory, a full disk) need not recur: what was saved before it can go on
        st["resumable"] = st["state"] in RESUMABLE or (st["state"] == "failed" and bool(self.checkpoints()))
        return st

    def set_status(
        self, state: str, reason: str | None = None, *, only_if: tuple[str, ...] | None = None, **extra: Any
    ) -> bool:
        """Change the state (and any extra fields) atomically. With `only_if`, change it only when the current
        state is one of those; returns whether it changed (so two processes cannot both claim a queued run)."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}: one of {', '.join(STATES)}")
        with file_lock(self.dir / ".status.lock"):
            st = self.raw_status()
            if only_if is not None and st.get("state") not in only_if:
                return False
            now = time.time()
            st.update(extra, state=state, reason=reason, updated=now)
            if state == "running" and not st.get("started"):
                st["started"] = now
            st["ended"] = now if state in TERMINAL else None
            write_json_atomic(self.dir / "status.json", st)
        return True

    # --- stop requests: a file the worker looks for between steps (works across processes and machines' NFS)
    def request_stop(self) -> None:
        (self.dir / _STOP_FILE).write_text(str(time.time()))

    def stop_requested(self) -> bool:
        return (self.dir / _STOP_FILE).exists()

    def clear_stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / _STOP_FILE).unlink()

    # --- steps and episodes
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction (committed on success, rolled back on error)."""
        con = sqlite3.connect(self.db_path, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def append_step(self, result: Any) -> None:
        """Store a StepResult (step, episodes, metrics) in one transaction; a repeated step replaces the old one."""
        step, rows = int(result.step), []
        for i, ep in enumerate(result.episodes):
            e = asdict(ep) if is_dataclass(ep) else dict(ep)
            rewards = json.dumps({k: json_safe(v) for k, v in (e.get("rewards") or {}).items()})
            rows.append((step, i, int(e.get("group", 0)), _as_text(e.get("prompt", "")),
                         _as_text(e.get("completion", "")), rewards, json_safe(e.get("reward")),
                         json_safe(e.get("advantage")), int(e.get("length") or 0),
                         int(bool(e.get("truncated")))))  # fmt: skip
        metrics = json.dumps({k: json_safe(v) for k, v in result.metrics.items()})
        with self._db() as con:  # the step and all its episodes, or nothing
            con.execute("DELETE FROM episodes WHERE step = ?", (step,))
            con.execute("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", (step, time.time(), metrics))
            con.executemany("INSERT INTO episodes VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def truncate_steps(self, after: int) -> None:
        """Forget steps and held-out evals after `after` (a resume redoes them from the checkpoint, same prompts)."""
        with self._db() as con:
            con.execute("DELETE FROM episodes WHERE step > ?", (after,))
            con.execute("DELETE FROM steps WHERE step > ?", (after,))
            self._truncate_evals(con, after)

    def steps_done(self) -> int:
        with self._db() as con:
            return int(con.execute("SELECT COUNT(*) FROM steps").fetchone()[0])

    def metrics(self, since_step: int = 0) -> list[dict[str, Any]]:
        """One dict per step after `since_step`, in order: {"step", "wall_time", **TRL-named metrics}."""
        return self._metrics("WHERE step > ? ORDER BY step", (since_step,))

    def last_metrics(self) -> dict[str, Any]:
        """The latest step's metrics ({} before the first step)."""
        return (self._metrics("ORDER BY step DESC LIMIT 1", ()) or [{}])[0]

    def _metrics(self, where: str, args: tuple) -> list[dict[str, Any]]:
        with self._db() as con:
            cur = con.execute(f"SELECT step, wall_time, metrics FROM steps {where}", args)
            return [{"step": r[0], "wall_time": r[1], **json.loads(r[2])} for r in cur]

    def metrics_df(self):
        import pandas as pd

        return pd.DataFrame(self.metrics())

    def episodes(self, step: int | None = None) -> list[dict[str, Any]]:
        """Every episode of `step` (None = the latest step), in the order the engine produced them."""
        with self._db() as con:
            if step is None:
                step = con.execute("SELECT MAX(step) FROM steps").fetchone()[0]
            rows = [
                dict(r) for r in con.execute("SELECT * FROM episodes WHERE step = ? ORDER BY idx", (step,))
            ]
        for d in rows:
            d["group"] = d.pop("grp")
            d["rewards"] = json.loads(d["rewards"])
            d["truncated"] = bool(d["truncated"])
        return rows

    # --- checkpoints and the final adapter: written into a temp folder, renamed into place
    def new_checkpoint_tmp(self, step: int) -> Path:
        """A fresh temp folder to save the checkpoint of `step` into; pass it to commit_checkpoint()."""
        root = self.dir / "checkpoints"
        root.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))

    def commit_checkpoint(self, tmp: Path, step: int) -> Path:
        final = self.dir / "checkpoints" / f"step-{step:06d}"
        replace_dir(tmp, final)
        done = self.checkpoints()
        for old in done[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        root = self.dir / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if re.fullmatch(r"step-[0-9]{6}", p.name))

    def latest_checkpoint(self) -> Path | None:
        done = self.checkpoints()
        return done[-1] if done else None

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        return int(path.name.split("-")[1])

    def adapter_tmp_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=self.dir))

    def commit_adapter(self, tmp: Path) -> Path:
        replace_dir(tmp, self.dir / "adapter")
        return self.dir / "adapter"

    def final_adapter(self) -> Path | None:
        p = self.dir / "adapter"
        return p if p.is_dir() else None

    def latest_weights(self) -> Path | None:
        """What to compare or export: the final adapter, else the latest checkpoint (None before the first save)."""
        return self.final_adapter() or self.latest_checkpoint()

    def require_weights(self, which: str = "last") -> Path:
        """latest_weights() ("last") or best_weights() ("best"), or a StoreError that says when a run has them."""
        if which != "last":
            return self.require_best(which)
        src = self.latest_weights()
        if src is None:
            raise StoreError(
                f"run {self.id} has no adapter or checkpoint yet: it saves a checkpoint every save_every steps "
                "and the adapter when it ends; wait for one, stop the run, or resume it"
            )
        return src

    def summary(self) -> dict[str, Any]:
        """A JSON-able overview: id, folder, status, a few spec fields, the last step's metrics."""
        spec = self.spec
        return {
            "id": self.id,
            "dir": str(self.dir),
            "status": self.status(),
            "model": spec.model,
            "task": spec.task,
            "engine": spec.engine,
            "last_metrics": self.last_metrics(),
            "adapter": str(self.final_adapter()) if self.final_adapter() else None,
            "latest_checkpoint": str(self.latest_checkpoint()) if self.latest_checkpoint() else None,
            "log": str(self.log_path),
        }


def _as_text(v: Any) -> str:
    """Prompts may be chat message lists: store them as JSON text so nothing is lost."""
    return v if isinstance(v, str) else json.dumps(v)


def worker_alive(status: dict[str, Any]) -> bool:
    """True when a status (raw_status()) says running and its worker is alive: the very process recorded."""
    return status.get("state") == "running" and pid_alive(status.get("pid"), status.get("pid_start"))


def dead_worker_reason(run: Run) -> str:
    """Why a run marked running has no worker. Reasons are plain facts: how to go on (the state says whether it
    can) is for the CLI and the UI to phrase."""
    return "the worker process ended without finishing (killed, out of memory, or the machine restarted)"


def _check_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise RunNotFound(
            f"{run_id!r} is not a run id (they look like 20250101-120000-a1b2c3): list runs with `workbench runs`"
        )
    return run_id


def create_run(spec: RunSpec, status: str = "queued") -> Run:
    """Create a run folder (built in a temp folder, then renamed: list_runs never sees a partial one)."""
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    while (root / run_id).exists():
        run_id = new_run_id()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run_id}-", dir=root))
    try:
        write_json_atomic(tmp / "spec.json", spec.to_dict())
        write_json_atomic(tmp / "versions.json", library_versions())
        now = time.time()
        write_json_atomic(
            tmp / "status.json", {"state": status, "reason": None, "created": now, "updated": now}
        )
        con = sqlite3.connect(tmp / "run.db")
        try:
            con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, and vice versa
            con.executescript(_SCHEMA)
            con.commit()
        finally:
            con.close()
        tmp.chmod(0o755)
        fsync_tree(tmp)
        os.replace(tmp, root / run_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run(root / run_id)


def open_run(run_id: str) -> Run:
    path = runs_dir() / _check_id(run_id)
    if not (path / "spec.json").is_file():
        raise RunNotFound(f"no run {run_id!r} under {runs_dir()}: list runs with `workbench runs`")
    return Run(path)


def list_runs() -> list[Run]:
    """All runs, oldest first (ids sort by creation time)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    return [
        Run(p) for p in sorted(root.iterdir()) if RUN_ID_RE.fullmatch(p.name) and (p / "spec.json").is_file()
    ]


def delete_run(run_id: str) -> None:
    """Remove a run's folder. Refuses a run whose worker is alive: stop it first."""
    run = open_run(run_id)
    st = run.raw_status()
    if worker_alive(st):
        raise StoreError(f"run {run_id} is running: stop it first (`workbench stop {run_id}`)")
    trash = run.dir.with_name(f".trash-{run_id}-{secrets.token_hex(3)}")
    os.replace(run.dir, trash)  # gone from listings at once; the slow delete happens after
    shutil.rmtree(trash, ignore_errors=True)
