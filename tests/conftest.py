"""Shared test fixtures: every test gets its own WORKBENCH_HOME; converted models are shared across the session;
stand-in workers for the runner's queue; the whole app on a free port; a page in headless chromium."""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

import pytest

from workbench.config import Limits, workbench_home

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


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch):
    """Workers that only sleep: the runner's queue logic without loading a model. Killed after the test."""
    from workbench import runner
    from workbench.store import list_runs

    monkeypatch.setattr(
        runner, "worker_argv", lambda run_id: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    yield
    for run in reversed(list_runs()):  # newest first: queued runs leave the queue before a slot frees
        runner.kill_run(run.id)


CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make chromium`); never a browser Playwright downloads


@pytest.fixture
def page():
    """A Playwright page in headless chromium, 1440×1000."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser.new_page(viewport={"width": 1440, "height": 1000})
        browser.close()


@pytest.fixture
def app_limits() -> Limits:
    """The server limits `app_url` builds the app with; a test module overrides this fixture to change them."""
    return Limits()


@pytest.fixture
def app_url(free_port: int, app_limits: Limits):
    """The whole app on a free local port, torn down after the test."""
    from workbench.ui import build_app, launch_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = build_app(app_limits)
        opts = {**launch_options(Limits()), "server_port": free_port, "server_name": "127.0.0.1"}
        demo.queue().launch(prevent_thread_lock=True, quiet=True, **opts)
    yield f"http://127.0.0.1:{opts['server_port']}/"
    demo.close()
