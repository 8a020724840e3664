"""How many runs one visitor may have training or queued at once (WORKBENCH_MAX_RUNS_PER_VISITOR; a Space sets 2).

Without it one visitor fills the only training slot and the whole queue. A visitor is known two ways: their
browser's token (gr.BrowserState, see access.py) and their network address as the request reports it (the first
X-Forwarded-For entry behind the Space's proxy, else the socket's peer). A run counts against every key it was
launched with, so a new token from the same address does not reset the count. Each key is kept only as a hash,
next to the run id, in `$WORKBENCH_HOME/ui-visitors.json`. This is a fairness rule, not a wall: a visitor with many
addresses can still queue more, and WORKBENCH_QUEUE_SIZE bounds them all together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import Limits, workbench_home
from ..errors import RunNotFound
from ..osutil import file_lock, write_json_atomic
from ..store import open_run, worker_alive


def _path() -> Path:
    return workbench_home() / "ui-visitors.json"


def _read() -> dict[str, list[str]]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def address(request: Any) -> str | None:
    """The visitor's network address from a gr.Request (None outside a request, e.g. a direct function call)."""
    if request is None:
        return None
    headers = getattr(request, "headers", None) or {}
    forwarded = str(headers.get("x-forwarded-for") or "").split(",")[0].strip()
    client = getattr(request, "client", None)
    return forwarded or (getattr(client, "host", None) if client else None)


def visitor_keys(token: str | None, request: Any = None) -> list[str]:
    """Hashed keys of this visitor: their browser token and their address, whichever are known."""
    raw = [f"token:{token}" if token else None, f"addr:{address(request)}" if address(request) else None]
    return [hashlib.sha256(k.encode()).hexdigest() for k in raw if k]


def _live(run_id: str) -> bool:
    try:
        st = open_run(run_id).raw_status()
    except RunNotFound:
        return False
    return st.get("state") == "queued" or (st.get("state") == "running" and worker_alive(st))


def active_runs(keys: list[str]) -> list[str]:
    """The runs launched with any of these keys that are queued or training now."""
    mine = set(keys)
    return [run_id for run_id, ks in _read().items() if mine & set(ks) and _live(run_id)]


def check(keys: list[str], limits: Limits, resuming: str | None = None) -> None:
    """Raise ConfigError when this visitor already has their share of runs queued or training."""
    cap = limits.max_runs_per_visitor
    if cap is None or not keys:
        return
    runs = [r for r in active_runs(keys) if r != resuming]
    if len(runs) >= cap:
        raise limits.refusal(
            "max_runs_per_visitor",
            f"you have {len(runs)} run(s) queued or training ({', '.join(runs)}), and one more",
            "wait for one to finish or stop one on the Train tab",
        )


def record(run_id: str, keys: list[str]) -> None:
    """Remember which visitor keys launched `run_id`; entries of runs that ended are dropped as it goes."""
    if not keys:
        return
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        data = {r: ks for r, ks in _read().items() if _live(r)}
        data[run_id] = sorted(set(data.get(run_id, [])) | set(keys))
        write_json_atomic(path, data)
