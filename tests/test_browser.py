"""The app in a real browser (Playwright driving Debian's chromium; never a downloaded browser): open the page,
launch a run on a tiny model, watch the reward plot appear and gain points, stop, compare; save screenshots.

    WORKBENCH_UI_TEST_MODEL=smollm2-135m-instruct pytest tests/test_browser.py   # also refreshes assets/*.png

On the tiny model (the default, and CI) the screenshots stay in the test's temp folder; on a real model they become
the README's pictures.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # the README's pictures
# Points on the total-reward curve: the plotly div keeps its traces in `.data`.
POINTS_JS = """() => {
  const div = document.querySelector('#wb-reward-plot .js-plotly-plot');
  if (!div || !div.data) return 0;
  const mean = (div._fullData || []).find(t => t.name === 'mean');  // decoded traces (x may be base64 in .data)
  return mean ? mean._length : 0;
}"""


def set_field(page, name: str, value: str) -> None:
    box = page.locator(f"#wb-field-{name} input").first
    box.fill(value)
    box.press("Enter")  # dropdowns with custom values take the typed text on Enter; numbers commit on it


def test_train_watch_stop_compare_in_chromium(app_url, page, tmp_path):
    model = os.environ.get("WORKBENCH_UI_TEST_MODEL", "tiny-random")
    page.goto(app_url)
    page.wait_for_selector("#wb-launch")
    page.get_by_text("NO RUN").wait_for()
    set_field(page, "model", model)
    page.get_by_text("Optimisation").click()
    set_field(page, "max_steps", "1000" if model == "tiny-random" else "12")
    t0 = time.monotonic()
    page.locator("#wb-launch").click()
    page.locator(".wb-badge-running").wait_for(timeout=60_000)
    page.wait_for_function(f"({POINTS_JS})() >= 1", timeout=120_000, polling=500)
    first_point_s = time.monotonic() - t0
    assert first_point_s < 20, f"the first curve point took {first_point_s:.1f}s after Launch"
    n1 = page.evaluate(POINTS_JS)
    page.wait_for_function(
        f"({POINTS_JS})() > {n1 + 1}", timeout=120_000, polling=500
    )  # the curve grows live
    assert page.locator("#wb-groups .wb-group").count() >= 1  # the latest step's groups are shown
    assert "advantage" in page.locator("#wb-groups").inner_text()

    page.locator("#wb-stop").click()
    page.locator(".wb-badge-stopped, .wb-badge-finished").wait_for(timeout=120_000)
    steps = page.evaluate(POINTS_JS)
    if model == "tiny-random":  # 1000 steps take a minute or more: the stop landed first
        assert page.locator(".wb-badge-stopped").count() == 1 and 3 <= steps < 1000
    page.screenshot(path=str(tmp_path / "train.png"), full_page=False)

    page.get_by_role("tab", name="Compare").click()
    page.locator("#wb-compare-run input").wait_for()
    page.wait_for_function(
        "() => document.querySelector('#wb-compare-run input').value.length > 0", timeout=30_000
    )
    page.locator("#wb-compare-go").click()
    page.locator("#wb-compare-pairs .wb-pair").first.wait_for(timeout=240_000)
    assert "tuned" in page.locator("#wb-compare-headline").inner_text()
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    # The README's picture: the Train tab with the finished curves.
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function(f"({POINTS_JS})() >= {steps}", timeout=30_000)
    page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=False)
    if model != "tiny-random":
        ASSETS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "screenshot.png", ASSETS / "screenshot.png")
        shutil.copy(tmp_path / "compare.png", ASSETS / "screenshot-compare.png")
    print(
        f"first curve point {first_point_s:.1f}s after the run started; {steps} steps before the stop landed"
    )
