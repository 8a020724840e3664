"""The Compare tab's blind rating on a canned comparison: what the page and the API return before the reveal names no
side, no score, no run and no model; the last choice reveals the win rate and the agreement table; a reload finds
the session in the store; on a Space a session belongs to the browser that started it."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import pytest
from rating_data import MODEL, PAIRS, canned_comparison

from workbench import ratings
from workbench.config import Limits
from workbench.ui import rating

SCORES = [f"{x:g}" for p in PAIRS for x in p[3]]  # every reward value of the canned comparison


def _text(outputs) -> str:
    """Everything a callback returned, as the text the browser would receive."""
    return json.dumps(outputs, default=str).lower()


def _assert_blind(text: str, *names: str) -> None:
    for leak in ("base", "tuned", MODEL, "length", "degenerate", *SCORES, *names):
        assert leak.lower() not in text, f"{leak!r} is visible before the reveal"


def test_before_the_reveal_the_page_and_the_api_name_no_side_score_run_or_model():
    run_id, cid = canned_comparison()
    s = rating.start(run_id, cid, None)
    for action in ("", "left", "skip", "back", "tie"):
        s = rating.act(s["id"], action, None)
        outputs = rating.session_outputs(s)
        _assert_blind(_text(outputs), run_id, cid)
        _assert_blind(_text(rating.api_view(s)), run_id, cid)
    assert "Pair 2 of 4" in rating.session_outputs(ratings.move(s["id"], -1))[1]
    assert rating.comparison_choices(run_id)[0][1] == cid
    _assert_blind(_text(rating.comparison_choices(run_id)))


def test_the_last_choice_reveals_the_win_rate_the_agreement_and_the_csv():
    run_id, cid = canned_comparison()
    sid = rating.start(run_id, cid, None)["id"]
    for choice in ("left", "right", "tie"):
        s = rating.act(sid, choice, None)
        assert not s["revealed"]
    s = rating.act(sid, "both_bad", None, shown=3)
    assert s["revealed"]
    _, note, shown, result, agree, pairs, path = rating.session_outputs(s)
    assert "Revealed" in note and shown == -1
    assert "Win rate tuned over base" in result and "ties and both-bad count half" in result
    table = agree["value"]
    assert agree["visible"] and list(table["reward or check"]) == ["length", "total", "degenerate", "naturalness",
                                                                    "words"]  # fmt: skip
    assert "left: base" in pairs or "left: tuned" in pairs
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert len(rows) == 4 and {r["left_side"] for r in rows} <= {"base", "tuned"}
    with pytest.raises(ratings.RatingError, match="would not be blind"):
        rating.act(sid, "left", None)


def test_a_reload_finds_the_session_in_the_store():
    run_id, cid = canned_comparison()
    sid = rating.start(run_id, cid, None)["id"]
    rating.act(sid, "left", None)
    assert rating.restore(sid, None)["id"] == sid
    s = rating.restore("", None)  # the browser forgot: the store still knows
    assert s["id"] == sid and s["position"] == 1
    assert rating.restore("0123456789abcdef", None)["id"] == sid  # a stale id falls back too


def test_on_a_space_a_rating_session_belongs_to_the_browser_that_started_it(monkeypatch):
    run_id, cid = canned_comparison()
    monkeypatch.setenv("SPACE_ID", "someone/space")
    mine, theirs = "token-of-a", "token-of-b"
    s = rating.start(run_id, cid, mine)
    rating.act(s["id"], "left", mine)
    for action in ("left", "skip", "reveal", ""):
        with pytest.raises(PermissionError, match="another visitor"):
            rating.act(s["id"], action, theirs)
    assert rating.restore(s["id"], theirs) is None and rating.restore("", theirs) is None
    assert rating.restore("", mine)["id"] == s["id"]
    with pytest.raises(PermissionError, match="reload the page"):
        rating.start(run_id, cid, "")
    other = rating.start(run_id, cid, theirs)  # the comparison itself is open to every visitor
    assert ratings.sessions(run_id, cid, rating.visitor(theirs))[0]["id"] == other["id"]
    assert [x["id"] for x in ratings.sessions(run_id, cid, rating.visitor(mine))] == [s["id"]]


def test_the_rating_api_answers_blind_then_reveals(app_url):
    from gradio_client import Client

    run_id, cid = canned_comparison()
    client = Client(app_url, verbose=False)
    first = client.predict(run_id, "", "", api_name="/rate_start")
    _assert_blind(_text(first), run_id, cid)
    doc = first
    for choice in ("left", "left", "right", "tie"):
        assert not doc["revealed"]
        doc = client.predict(doc["session"], choice, -1, "", api_name="/rate")
        if not doc["revealed"]:
            _assert_blind(_text(doc), run_id, cid)
    assert doc["summary"]["win_rate"]["n"] == 4 and doc["summary"]["sentences"]
    with pytest.raises(Exception, match="would not be blind"):
        client.predict(doc["session"], "left", -1, "", api_name="/rate")


def test_the_app_builds_with_the_rating_api():
    from workbench.ui import build_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = build_app(Limits())
    assert {"/rate_start", "/rate", "/compare"} <= set(demo.get_api_info()["named_endpoints"])
