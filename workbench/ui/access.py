"""Who may stop, resume or delete a run from the browser.

Locally everyone may (the server listens on 127.0.0.1: whoever reaches it owns the machine). On a shared Space a
visitor may act only on runs started from their own browser: each browser keeps a random token in its local
storage (gr.BrowserState); launching records the token's hash next to the run id in
`$WORKBENCH_HOME/ui-owners.json`; stop/resume/delete compare hashes. Watching and comparing stay open to all.

The browser keeps the token encrypted with the BrowserState's secret. A secret made afresh at each start would make
every stored token unreadable after a restart (the browser falls back to "" and gets a new token, so its owner loses
its runs); `browser_secret()` is kept instead: WORKBENCH_BROWSER_SECRET, else one generated once and kept in
`$WORKBENCH_HOME/browser-secret` (mode 0600). Gradio sends the secret to the page, so it only scrambles local
storage: what proves ownership is the token, whose hash alone the server keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

from ..config import workbench_home
from ..osutil import file_lock, write_json_atomic
from .settings import on_space

SECRET_ENV = "WORKBENCH_BROWSER_SECRET"


def browser_secret() -> str:
    """The BrowserState secret: the same across restarts (see the module docstring)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = workbench_home() / "browser-secret"
    with contextlib.suppress(OSError):
        if text := path.read_text().strip():
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-browser-secret-{secrets.token_hex(4)}")
    fresh = secrets.token_urlsafe(32)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(fresh)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails when another process got there first: then theirs is the secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    # an empty file (a disk that was full): this one is not kept, but still usable for now
    return path.read_text().strip() or fresh


def new_token() -> str:
    return secrets.token_urlsafe(18)


def _path() -> Path:
    return workbench_home() / "ui-owners.json"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read() -> dict[str, str]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_owner(run_id: str, token: str | None) -> None:
    """Remember that the browser holding `token` started `run_id` (only on a Space: locally nothing is kept)."""
    if not on_space() or not token:
        return
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        data = _read()
        data[run_id] = _hash(token)
        write_json_atomic(path, data)


def check_owner(run_id: str, token: str | None, action: str) -> None:
    """Raise PermissionError (with what to do instead) when this browser may not `action` the run."""
    if not on_space():
        return
    owner = _read().get(run_id)
    if not token or owner != _hash(token):
        raise PermissionError(
            f"run {run_id} was started by another visitor, so you cannot {action} it here; launch your own run "
            "(it will queue behind theirs) or duplicate this Space to get a private copy"
        )
