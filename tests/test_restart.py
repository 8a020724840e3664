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


def _load_fn(url: str) -> int:
    """The id of the page-load event whose one input is the owner token."""
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    (owner,) = [
        c["id"]
        for c in config["components"]
        if c.get("props", {}).get("storage_key") == "grpo-workbench-owner"
    ]
    (dep,) = [
        d
        for d in config["dependencies"]
        if d["inputs"] == [owner] and any(t[1] == "load" for t in d["targets"])
    ]
    return dep["id"]


def _pump(page, pred, what: str, timeout_s: float = 60) -> None:
    """Wait in Playwright's own loop (a plain sleep would hold back the events that make `pred` true)."""
    for _ in range(int(timeout_s * 10)):
        if pred():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.mark.slow
def test_the_browser_keeps_its_token_across_a_restart(monkeypatch, free_port):
    """In Chromium: the page stores its owner token (encrypted in local storage) while the first server runs; after
    a restart on the same home and address, the page decrypts it and sends the same token to the second server.
    Had it failed to decrypt it, the page would have sent "" and been given a new token: its runs lost."""
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} is missing: install Debian's chromium (`make chromium`)")
    monkeypatch.setenv("SPACE_ID", "someone/grpo-workbench")
    monkeypatch.delenv(access.SECRET_ENV, raising=False)
    sent: list = []  # the token each page load sends

    def on_request(req):
        if "/queue/join" in req.url and req.method == "POST":
            body = req.post_data_json or {}
            if body.get("fn_index") == fn:
                sent.append(body["data"][0])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("request", on_request)
        demo, url = _serve(free_port)
        fn = _load_fn(url)
        try:
            page.goto(url)
            page.wait_for_function("() => localStorage.getItem('grpo-workbench-owner')", timeout=60_000)
            page.reload()  # the same server: the page reads its stored token back
            _pump(page, lambda: len(sent) >= 2, "the second page load")
        finally:
            demo.close()
        first, token = sent[:2]
        assert first in ("", None) and token and len(token) >= 20
        demo, url = _serve(free_port)
        try:
            assert _load_fn(url) == fn
            page.reload()
            _pump(page, lambda: len(sent) >= 3, "the page load after the restart")
            assert sent[2] == token
        finally:
            demo.close()
            browser.close()
