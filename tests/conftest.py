"""Shared test fixtures: every test gets its own WORKBENCH_HOME; converted models are shared across the session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from workbench.config import workbench_home

# Converted models stay where `make prepare` put them (converting takes ~20 s); runs go to a temp folder per test.
os.environ.setdefault("WORKBENCH_MODELS_DIR", str(workbench_home() / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the bundled SmolLM2, loaded once per session, fp32."""
    from workbench.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): a tiny random Llama with the bundled tokenizer."""
    from workbench.models import load_model

    return load_model("tiny-random", dtype="float32", device="cpu")


@pytest.fixture
def free_port() -> int:
    """A local TCP port nobody listens on (for the app tests' servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
