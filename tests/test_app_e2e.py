"""The app end to end through its HTTP API (gradio_client): launched in the test, a real run of the tiny random
model trains in a real worker process, then the base-vs-tuned comparison runs and returns numbers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from workbench.config import Limits

pytestmark = pytest.mark.slow
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


@pytest.fixture
def app_limits() -> Limits:
    """This module's server caps runs at 20 steps (conftest's app_url builds the app with them)."""
    return Limits(max_steps=20)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_launch_poll_compare_through_the_api(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    # Only the settings that differ from the page's defaults (the quick preset); the rest come from the form.
    client.predict(model="tiny-random", max_steps=3, save_every=2, eval_size=4, api_name="/launch")
    table = client.predict(api_name="/runs")[0]
    run_id = table["data"][0][0]
    assert RUN_ID.fullmatch(run_id) and table["data"][0][1] in ("running", "queued", "finished")

    # Above this server's limit: refused, and no run is created. The max_steps slider is capped at the limit, so
    # gradio itself refuses the value (an error naming the maximum) before the launch callback runs.
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="maximum value 20"):
        client.predict(model="tiny-random", max_steps=21, api_name="/launch")
    assert len(client.predict(api_name="/runs")[0]["data"]) == 1

    st = wait_for(lambda: (s := client.predict(run_id, api_name="/run_status"))["state"] not in ("queued", "running")
                  and s, 240, "the run to end")  # fmt: skip
    assert st["state"] == "finished", st
    assert st["steps_done"] == 3 and isinstance(st["last_metrics"]["reward"], float)

    headline, _chart, summary, csv_path, pairs = client.predict(
        run_id, "held-out prompts", 2, "", "", "greedy", 0, 8, api_name="/compare"
    )
    assert "Degenerate answers: base" in headline  # the verdict and the degenerate counts per side
    rows = {(r[0], r[1]): r for r in summary["data"]}  # kind, name, better, base_mean, tuned_mean, diff, ...
    assert ("reward", "total") in rows and all(
        isinstance(x, (int, float)) for x in rows[("reward", "total")][3:6]
    )
    assert {("check", "degenerate"), ("check", "naturalness")} <= set(rows)
    per_prompt, stats = sorted(csv_path, key=len)  # the per-prompt table and its -summary.csv
    assert Path(per_prompt).read_text().count("\n") >= 3  # header + 2 prompts
    assert "verdict" in Path(stats).read_text()
    assert pairs.count('class="wb-pair"') == 2
