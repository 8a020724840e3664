"""Where the app runs and what that changes: a Hugging Face Space (SPACE_ID is set) or a local machine.

On a Space the default model is the hub copy of SmolLM2 (the Space preloads it, see README front matter), the server
listens on all interfaces, and visitors may only stop, resume or delete the runs they started (see access.py);
locally the default is the bundled offline model and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os

from ..config import BUNDLED, DEFAULT_MODEL, Limits
from ..limits import LIMITS, on_space

SPACE_MODEL = BUNDLED[DEFAULT_MODEL]["hub_id"]  # the hub copy of the bundled model
# Caps a public Space gets when its owner set none (limits.LIMITS is the one table).
SPACE_DEFAULT_CAPS = {lim.field: lim.space for lim in LIMITS}


def default_model() -> str:
    """The model a new run starts with: the hub id on a Space (no bundled package there), else the bundled one."""
    return SPACE_MODEL if on_space() else DEFAULT_MODEL


def server_name() -> str:
    """0.0.0.0 on a Space (the platform proxies to it); locally 127.0.0.1 unless GRADIO_SERVER_NAME says else."""
    return "0.0.0.0" if on_space() else os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def server_port() -> int:
    """GRADIO_SERVER_PORT, default 7860 (what a Space expects)."""
    value = os.environ.get("GRADIO_SERVER_PORT") or "7860"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"GRADIO_SERVER_PORT={value!r} is not a port number: set it to e.g. 7860") from None


def deployment_limits() -> Limits:
    """Limits.from_env(): the owner's variables, and on a Space its defaults for the ones left unset."""
    return Limits.from_env()
