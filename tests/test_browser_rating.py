"""Blind rating in a real browser (Playwright driving Debian's chromium, as tests/test_browser.py): three pairs of a
canned comparison rated by keyboard, a reload in the middle keeps the place, then the reveal and the agreement table.

    pytest tests/test_browser_rating.py
"""

from __future__ import annotations

import pytest
from rating_data import MODEL, PAIRS, canned_comparison

pytestmark = pytest.mark.slow
# The rating section's markup, and the text of the whole page, as the rater's browser holds them.
RATE_HTML = "() => document.querySelector('#wb-rate').innerHTML.toLowerCase()"
PAGE_TEXT = "() => document.body.innerText"


def open_compare(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#wb-rate-start").wait_for()


def wait_pair(page, k: int, n: int) -> None:
    page.locator("#wb-rate-pair .wb-rate-live", has_text=f"Pair {k} of {n}").wait_for(timeout=30_000)


def assert_blind(page, run_id: str, cid: str) -> None:
    html = page.evaluate(RATE_HTML)
    for leak in ("base", "tuned", run_id, cid, MODEL, *[f"{x:g}" for p in PAIRS for x in p[3]]):
        assert leak.lower() not in html, f"{leak!r} is in the rating section before the reveal"
    text = page.evaluate(PAGE_TEXT)
    for _, base, tuned, *_ in PAIRS[:3]:  # no labelled copy of an answer anywhere else on the page
        assert text.count(base) <= 1 and text.count(tuned) <= 1


def test_rate_three_pairs_by_keyboard_then_reveal(app_url, page, tmp_path):
    run_id, cid = canned_comparison(3)
    open_compare(page, app_url)
    page.wait_for_function(
        "() => document.querySelector('#wb-compare-run input').value.length > 0", timeout=30_000
    )
    page.locator("#wb-rate-start").click()
    wait_pair(page, 1, 3)
    assert_blind(page, run_id, cid)
    page.keyboard.press("1")  # left better
    wait_pair(page, 2, 3)
    assert_blind(page, run_id, cid)

    page.reload()  # the place is kept: the store knows the session
    open_compare(page, app_url)
    wait_pair(page, 2, 3)
    assert "1 rated" in page.locator("#wb-rate-pair").inner_text()
    page.locator("#wb-rate-start").focus()  # keys act while the focus is not in a text field
    page.keyboard.press("ArrowRight")  # right better
    wait_pair(page, 3, 3)
    assert_blind(page, run_id, cid)
    page.screenshot(path=str(tmp_path / "rating-blind.png"), full_page=True)
    page.keyboard.press("3")  # a tie: the last pair, so the reveal follows

    page.locator("#wb-rate-result", has_text="Win rate tuned over base").wait_for(timeout=30_000)
    result = page.locator("#wb-rate-result").inner_text()
    assert "ties and both-bad count half" in result and "length agreed with you on" in result
    table = page.locator("#wb-rate-agreement").inner_text()
    for name in ("length", "total", "degenerate", "words"):
        assert name in table
    revealed = page.locator("#wb-rate-revealed").inner_text().lower()
    assert "left: base" in revealed or "left: tuned" in revealed
    assert page.locator("#wb-rate-pair .wb-rate-live").count() == 0  # no more blind keys
    page.screenshot(path=str(tmp_path / "rating-revealed.png"), full_page=True)
