"""From Launch to the first curve point on the bundled model, in a real browser, served as `make run` serves it
(housekeeping and the standby worker on): the default preset under 10 s, an uploaded 40-row CSV with
contains_answer ticked under 20 s.

    pytest tests/test_browser_launch.py -s      # prints both times
"""

from __future__ import annotations

import csv
import sqlite3
import time
import warnings

import pytest
from test_browser import POINTS_JS

from workbench import runner
from workbench.config import Limits
from workbench.store import list_runs

pytestmark = pytest.mark.slow
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Chile": "Santiago", "Norway": "Oslo"}  # fmt: skip


@pytest.fixture
def served(free_port):
    """The app with the server's housekeeping (which keeps a standby worker for the form's model)."""
    from workbench.ui import build_app, launch_options
    from workbench.ui.build import start_server_housekeeping

    limits = Limits()
    keeper = start_server_housekeeping(limits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = build_app(limits)
        opts = {**launch_options(limits), "server_port": free_port, "server_name": "127.0.0.1"}
        demo.queue().launch(prevent_thread_lock=True, quiet=True, **opts)
    try:
        yield f"http://127.0.0.1:{free_port}/", keeper
    finally:
        demo.close()
        keeper.stop()
        runner.keep_standby(None)
        for run in list_runs():  # a failed check must not leave a worker training for minutes
            runner.kill_run(run.id)


def standby_warm(keeper, timeout: float = 120.0) -> None:
    """Wait as a visitor reading the form would, until the standby is warm (the housekeeping tick starts one once
    the slot is free)."""
    deadline = time.monotonic() + timeout
    while not runner.standby_ready():
        assert time.monotonic() < deadline, "no standby worker got warm"
        runner.reconcile(keeper.limits)  # the housekeeping tick, without waiting up to 10 s for it
        time.sleep(0.2)


def launch_and_time(page) -> tuple[float, float, str]:
    """Seconds from the Launch click to the first point on the page, the first step's own seconds, and where the
    time went."""
    t0, wall0 = time.monotonic(), time.time()
    page.locator("#wb-launch").click()
    # the running badge: the plot now shows the new run, not the last one
    page.locator(".wb-badge-running").wait_for(timeout=60_000)
    page.wait_for_function(f"({POINTS_JS})() >= 1", timeout=120_000, polling=100)
    took = time.monotonic() - t0
    run = list_runs()[-1]
    stored = sqlite3.connect(run.db_path).execute("SELECT wall_time FROM steps WHERE step = 1").fetchone()[0]
    step_s = run.metrics()[0]["step_time"]
    where = (f"run created at +{run.raw_status()['created'] - wall0:.1f} s, step 1 ({step_s:.1f} s) stored at "
             f"+{stored - wall0:.1f} s, on the page at +{took:.1f} s")  # fmt: skip
    page.locator("#wb-stop").click()
    page.locator(".wb-badge-stopped, .wb-badge-finished").wait_for(timeout=120_000)
    return took, step_s, where


def test_first_curve_point_after_launch(served, page, tmp_path):
    url, keeper = served
    page.goto(url)
    page.wait_for_selector("#wb-launch")
    standby_warm(keeper)
    preset_s, preset_step, preset_where = launch_and_time(page)

    data = tmp_path / "capitals.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "answer"])
        for i in range(40):
            country = list(CAPITALS)[i % len(CAPITALS)]
            w.writerow([f"What is the capital of {country}? Answer in one word. (#{i})", CAPITALS[country]])
    page.locator("#wb-upload input[type=file]").set_input_files(str(data))
    page.get_by_text("✓").first.wait_for(timeout=60_000)
    box = page.locator("#wb-rewards label", has_text="contains_answer").locator("input")
    if not box.is_checked():
        box.check()
    standby_warm(keeper)
    upload_s, upload_step, upload_where = launch_and_time(page)
    print(f"first curve point after Launch: default preset {preset_where}; uploaded CSV {upload_where}")
    # What the app adds to the first step (hand-over, engine, held-out baseline, store, page): measured 2-3 s
    # on the preset, 4-5 s on an upload (its own baseline).
    assert preset_s - preset_step < 5, f"default preset: {preset_where}"
    assert upload_s - upload_step < 10, f"uploaded CSV: {upload_where}"
    # The goals, on this kind of machine at its usual speed. Machines of this kind differ by up to 2x from one day
    # to the next; where the step alone shows a slow one (the preset's first step is 3-5 s here), the totals are
    # printed above rather than held to.
    if preset_step < 5.5:
        assert preset_s < 10, f"default preset: the first curve point took {preset_s:.1f} s: {preset_where}"
    if upload_step < 5.5:
        assert upload_s < 20, f"uploaded CSV: the first curve point took {upload_s:.1f} s: {upload_where}"
