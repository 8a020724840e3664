"""Control survives a server restart: the browser's stored token stays readable (the BrowserState secret is kept
under WORKBENCH_HOME, or comes from WORKBENCH_BROWSER_SECRET) and the owner hashes written by one server are
honoured by the next one on the same home.
"""

from __future__ import annotations

import stat
import warnings

import pytest

from workbench import runner
from workbench.config import Limits, workbench_home
from workbench.store import list_runs, open_run
from workbench.ui import access


def test_the_secret_is_made_once_private_and_kept(monkeypatch):
    monkeypatch.delenv(access.SECRET_ENV, raising=False)
    first = access.browser_secret()
    path = workbench_home() / "browser-secret"
    assert len(first) >= 32 and path.read_text() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only the server's user reads it
    assert access.browser_secret() == first  # "after a restart": read back, not made afresh
    assert not list(path.parent.glob(".tmp-*"))
    monkeypatch.setenv(access.SECRET_ENV, "from-the-space-settings")
    assert access.browser_secret() == "from-the-space-settings"


def _serve(port: int):
    from workbench.ui import build_app, launch_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = build_app(Limits())
        opts = {**launch_options(Limits()), "server_port": port, "server_name": "127.0.0.1"}
        demo.queue().launch(prevent_thread_lock=True, quiet=True, **opts)
    return demo, f"http://127.0.0.1:{port}/"


def _browser_states(url: str) -> dict[str, str]:
    """storage key -> secret of every gr.BrowserState the page holds (the owner token, and any other)."""
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    states = [c["props"] for c in config["components"] if c.get("type") == "browserstate"]
    return {p["storage_key"]: p["secret"] for p in states}


@pytest.mark.parametrize("from_env", [False, True])
def test_a_visitor_resumes_their_run_after_the_server_restarts(stand_in, monkeypatch, free_port, from_env):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    monkeypatch.setenv("SPACE_ID", "someone/grpo-workbench")
    if from_env:
        monkeypatch.setenv(access.SECRET_ENV, "kept-in-the-space-settings")
    else:
        monkeypatch.delenv(access.SECRET_ENV, raising=False)
    mine, theirs = access.new_token(), access.new_token()

    demo, url = _serve(free_port)
    try:
        before = _browser_states(url)
        Client(url, verbose=False).predict(token=mine, model="tiny-random", api_name="/launch")
        (run,) = list_runs()
        run_id = run.id
    finally:
        demo.close()  # the restart: a new server process on the same WORKBENCH_HOME
        runner.kill_run(run_id)  # its worker went down with the machine

    demo, url = _serve(free_port)  # same origin: the browser's local storage is the one it wrote before
    try:
        # What the page stored, encrypted with the old server's secret, decrypts under the new server's secret.
        assert _browser_states(url) == before and "grpo-workbench-owner" in before
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="started by another visitor"):  # someone else's browser
            client.predict(run_id, theirs, api_name="/resume")
        assert open_run(run_id).status()["state"] == "interrupted"
        client.predict(run_id, mine, api_name="/resume")
        assert open_run(run_id).status()["state"] == "running"
    finally:
        demo.close()
