"""Who may stop, resume or delete a run from the browser.

Locally everyone may (the server listens on 127.0.0.1: whoever reaches it owns the machine). On a shared Space a
visitor may act only on runs started from their own browser: each browser keeps a random token in its local
storage (gr.BrowserState); launching records the token's hash next to the run id in
`$WORKBENCH_HOME/ui-owners.json`; stop/resume/delete compare hashes. Watching and comparing stay open to all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from ..config import workbench_home
from ..osutil import file_lock, write_json_atomic
from .settings import on_space


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
