"""What the run store and the runner need from the operating system, so that several processes can share a folder;
and the one JSON cleaner every writer of JSON uses.

    write_json_atomic(path, data)    # readers see the old file or the new one, never half of one
    json_safe(value)                 # plain JSON values: numpy/torch unwrapped, NaN/inf/NA as None
    replace_dir(tmp, final)          # a finished folder, fsynced, renamed into place (a checkpoint, an adapter)
    fsync_tree(path)                 # every file and folder under `path` on disk, not only in the page cache
    with file_lock(path): ...        # one process at a time (flock; freed when the holder dies, even by SIGKILL)
    pid_alive(pid, start)            # is the process we recorded still running, and still the same one?
    process_start_time(pid)          # what `start` above is: recorded next to a pid to detect pid reuse

Linux-first (/proc), with a fallback where /proc is missing. Imports nothing from the workbench.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, rename over `path`: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself: without this a power cut may bring the old file back


def json_safe(v: Any) -> Any:
    """`v` in plain JSON values: numpy and torch scalars and arrays unwrapped, NaN/inf/NA as None (strict JSON
    readers such as browsers reject NaN), keys as text, anything else as its str."""
    if hasattr(v, "tolist"):  # numpy and torch scalars and arrays (e.g. a list column read from Parquet)
        v = v.tolist()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (str, int)):  # bool is an int
        return v
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if type(v).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return str(v)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the folders (deepest first), to disk. A rename is journaled before the
    data it points at is written: without this, a crash soon after a rename can leave a checkpoint whose files are
    empty or cut short, under its final name."""
    dirs = []
    for folder, _, files in os.walk(root):
        dirs.append(folder)
        for name in files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(dirs):
        _fsync_dir(Path(folder))


def replace_dir(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it to `final`; an existing `final` is moved aside first and removed after
    (never half there)."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{secrets.token_hex(3)}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) across processes; released when the holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first); None when there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat[stat.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot, Linux /proc); None where /proc is not there."""
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])  # field 22 overall


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """True when `pid` runs and is the same process that was recorded (not a zombie, not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the start time below tells whether it is ours
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc on this OS: kill(0) is all we know
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return start is None or int(fields[19]) == start
