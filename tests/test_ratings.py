"""Blind ratings: the store (sides shuffled with a recorded seed, resumable, atomic, owned), the statistics on
constructed ratings (win rate with ties counted half, agreement per reward and check), and `workbench rate`."""

from __future__ import annotations

import csv
import io
import json
import math
import sys

import pytest
from rating_data import MODEL, canned_comparison, canned_doc

from workbench import cli, ratings
from workbench.rating_stats import longer_chosen, summarize, wilson, win_rate
from workbench.store import open_run


def _rate_as(sid: str, want: dict[int, str], owner=None) -> dict:
    """Rate pair i so that the rater prefers want[i] (base | tuned | tie | both_bad), whatever side it sits on."""
    s = ratings.load_session(sid, owner)
    for i, pref in want.items():
        choice = pref if pref in ("tie", "both_bad") else ("left" if s["left"][i] == pref else "right")
        s = ratings.rate(sid, choice, owner, index=i)
    return s


# --- the store ----------------------------------------------------------------------------------------------------
def test_sides_are_balanced_shuffled_and_reproducible_from_the_recorded_seed():
    assert sorted(ratings.balanced_sides(4, 7)) == ["base", "base", "tuned", "tuned"]
    assert ratings.balanced_sides(9, 7) == ratings.balanced_sides(9, 7)
    assert len({tuple(ratings.balanced_sides(12, s)) for s in range(20)}) > 10  # the seed changes the layout
    run_id, cid = canned_comparison()
    s = ratings.start_session(run_id, cid, seed=7)
    assert s["seed"] == 7 and s["left"] == ratings.balanced_sides(4, 7)
    assert ratings.start_session(run_id, cid)["seed"] != ratings.start_session(run_id, cid)["seed"]  # random


def test_the_blind_view_carries_the_texts_and_nothing_that_names_a_side():
    run_id, cid = canned_comparison()
    s = ratings.start_session(run_id, cid, seed=3)
    for _ in range(4):
        v = ratings.pair_view(s)
        assert set(v) == {"index", "n", "prompt", "left", "right", "choice", "rated"}
        text = json.dumps(v).lower()
        for leak in ("base", "tuned", run_id, cid, MODEL, "0.8125", "0.1875", "0.4375", "0.9375", "length"):
            assert leak not in text
        s = ratings.move(s["id"], 1)


def test_rating_moves_to_the_next_unrated_pair_skip_and_back_wrap_and_a_reload_finds_the_place():
    run_id, cid = canned_comparison()
    sid = ratings.start_session(run_id, cid, seed=1)["id"]
    s = ratings.rate(sid, "left")
    assert s["position"] == 1 and list(s["ratings"]) == ["0"]
    s = ratings.move(sid, 1)  # skip pair 2
    s = ratings.rate(sid, "tie")  # pair 3
    assert s["position"] == 3
    s = ratings.move(sid, -1)
    s = ratings.move(sid, -1)
    assert s["position"] == 1  # back at the skipped pair
    s = ratings.rate(sid, "both_bad")
    assert s["position"] == 3  # the next pair with no rating
    # a reload, a new process: the store alone knows where the rater was
    again = ratings.open_session(run_id=run_id)
    assert again["id"] == sid and again["position"] == 3 and ratings.pair_view(again)["rated"] == 3
    s = ratings.rate(sid, "right", index=0)  # coming back to change a choice replaces it
    assert s["ratings"]["0"]["choice"] == "right" and len(s["ratings"]) == 3
    r = s["ratings"]["2"]
    assert r["prompt"] == "Say hello." and {r["left"], r["right"]} == {"base", "tuned"} and r["time"] > 0
    assert r["base_answer"] == "Hello there, friend!" and r["tuned_answer"] == "Hi."
    with pytest.raises(ratings.RatingError, match="not one of"):
        ratings.rate(sid, "better")
    with pytest.raises(ratings.RatingError, match="pair 9 does not exist"):
        ratings.rate(sid, "tie", index=8)
    assert not list(open_run(run_id).dir.glob("comparisons/*/ratings/.*.json.*"))  # no temp file left behind


def test_reveal_ends_the_blind_part_and_the_csv_names_the_sides_only_after_it():
    run_id, cid = canned_comparison()
    sid = ratings.start_session(run_id, cid, seed=5)["id"]
    s = _rate_as(sid, {0: "tuned", 1: "base"})
    with pytest.raises(ratings.RatingError, match="reveal the session first"):
        ratings.session_csv(s)
    s = ratings.reveal(sid)
    with pytest.raises(ratings.RatingError, match="would not be blind"):
        ratings.rate(sid, "left")
    rows = list(csv.DictReader(io.StringIO(ratings.session_csv(s))))
    assert [r["pair"] for r in rows] == ["1", "2"] and list(rows[0]) == ratings.CSV_COLUMNS
    assert [r["preferred"] for r in rows] == ["tuned", "base"] and rows[0]["seed"] == "5"
    left = rows[0]["left_side"]
    assert rows[0]["left_answer"] == canned_doc(open_run(run_id))["rows"][0][left]
    assert ratings.open_session(run_id=run_id) is None  # revealed: nothing left to resume


def test_the_same_comparison_again_keeps_its_ratings_and_a_changed_answer_is_left_out():
    run_id, cid = canned_comparison()
    doc = canned_doc(open_run(run_id))
    sid = ratings.start_session(run_id, cid)["id"]
    _rate_as(sid, {0: "tuned", 1: "base", 2: "tuned"})
    assert ratings.save_comparison(doc) == cid  # same run, weights, decoding and prompts: same id
    doc["rows"][1]["tuned"] = "a different answer"
    assert ratings.save_comparison(doc) == cid
    out = summarize(ratings.load_comparison(run_id, cid), [ratings.reveal(sid)])
    assert out["stale"] == 1 and out["n_ratings"] == 2
    assert ratings.save_comparison({**doc, "seed": 1}) != cid


def test_unrated_comparisons_are_pruned_and_rated_ones_kept(monkeypatch):
    monkeypatch.setattr(ratings, "KEEP_UNRATED", 3)
    run_id, cid = canned_comparison()
    ratings.start_session(run_id, cid)
    doc = canned_doc(open_run(run_id))
    for seed in range(1, 6):
        ratings.save_comparison({**doc, "seed": seed})
    kept = ratings.list_comparisons(run_id)
    assert len(kept) == 4 and cid in [c["id"] for c in kept]
    assert [c["seed"] for c in kept[:3]] == [5, 4, 3]


def test_a_session_belongs_to_its_owner():
    run_id, cid = canned_comparison()
    mine = ratings.start_session(run_id, cid, owner="hash-a")
    ratings.rate(mine["id"], "left", "hash-a")
    for act in (lambda: ratings.rate(mine["id"], "left", "hash-b"), lambda: ratings.move(mine["id"], 1, "hash-b"),
                lambda: ratings.reveal(mine["id"], "hash-b"), lambda: ratings.load_session(mine["id"], "hash-b")):  # fmt: skip
        with pytest.raises(PermissionError, match="another visitor"):
            act()
    assert ratings.sessions(run_id, cid, owner="hash-b") == [] and ratings.open_session("hash-b") is None
    assert ratings.open_session("hash-a")["id"] == mine["id"]
    assert len(ratings.sessions(run_id, cid)) == 1  # owner None: the local user and the CLI see all
    with pytest.raises(ratings.RatingError, match="no such rating session"):
        ratings.load_session("../../etc/passwd")


# --- statistics ---------------------------------------------------------------------------------------------------
def test_wilson_interval_is_honest_at_the_edges():
    lo, hi = wilson(3, 3)
    assert hi == 1.0 and lo == pytest.approx(0.4385, abs=1e-3)  # 3 of 3 is far from proof
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_win_rate_counts_ties_and_both_bad_as_half_and_reports_decided_pairs_apart():
    w = win_rate(["tuned", "tuned", "base", "tie", "both_bad"])
    assert (w["tuned"], w["base"], w["tie"], w["both_bad"], w["n"]) == (2, 1, 1, 1, 5)
    assert w["rate"] == pytest.approx(3 / 5)  # 2 wins + 2 halves
    assert w["rate_decided"] == pytest.approx(2 / 3) and w["decided"] == 3
    assert w["ci_low"] < w["rate"] < w["ci_high"] and "half" in w["ties"]
    assert math.isnan(win_rate([])["rate"])


def test_agreement_counts_where_each_reward_and_check_chose_your_answer():
    run_id, cid = canned_comparison()
    sid = ratings.start_session(run_id, cid, seed=11)["id"]
    # pair 1: length prefers tuned (you agree); 2: length prefers tuned, degenerate prefers base (you chose base);
    # 3: length prefers base, you chose tuned; 4: a tie (no side chosen, left out of agreement)
    _rate_as(sid, {0: "tuned", 1: "base", 2: "tuned", 3: "tie"})
    out = summarize(ratings.load_comparison(run_id, cid), [ratings.reveal(sid)])
    w = out["win_rate"]
    assert (w["tuned"], w["base"], w["tie"]) == (2, 1, 1) and w["rate"] == pytest.approx(2.5 / 4)
    by = {a["name"]: a for a in out["agreement"]}
    assert (by["length"]["agreed"], by["length"]["disagreed"], by["length"]["n"]) == (1, 2, 3)
    assert by["length"]["disagree_pairs"] == [2, 3] and by["total"]["agreed"] == 1
    # degenerate is lower-is-better: it prefers the base answer of pair 2 (yours) and cannot tell pairs 1 and 3 apart
    assert (by["degenerate"]["agreed"], by["degenerate"]["disagreed"], by["degenerate"]["tied"]) == (1, 0, 2)
    assert by["naturalness"]["n"] == 0  # not scored on this comparison: no claim either way
    assert by["words"]["agreed"] == 1  # a length has no better side: you preferred the longer answer once
    assert longer_chosen([]) == (0, 0)
    assert (
        "length agreed with you on 1 of 3 pairs; you preferred the longer answer 1 time" in out["sentences"]
    )
    assert "degenerate agreed with you on 1 of 3 pairs (it scored 2 of them the same)" in out["sentences"]
    assert not any(s.startswith("naturalness") for s in out["sentences"])
    # the pairs where most rewards disagree with you come first
    assert [p["pair"] for p in out["pairs"]] == [2, 3, 1, 4]
    assert out["pairs"][0]["disagree"] == ["length", "total"] and out["pairs"][0]["preferred"] == "base"


# --- the command line ---------------------------------------------------------------------------------------------
def _cli(monkeypatch, capsys, keys: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(keys))
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_workbench_rate_is_blind_resumable_and_reports_after_the_reveal(monkeypatch, capsys, tmp_path):
    run_id, cid = canned_comparison()
    code, out, err = _cli(monkeypatch, capsys, "1\nq\n", "rate", run_id)
    assert code == 0 and "saved 1 of 4" in out and "pair 1 of 4" in err
    blind = err.lower()
    assert "base" not in blind and "tuned" not in blind and "0.8125" not in blind
    code, out, err = _cli(monkeypatch, capsys, "s\n2\nb\nb\n3\n4\n", "rate", run_id, "--json",
                          "--csv", str(tmp_path / "s.csv"))  # fmt: skip
    assert code == 0 and "continuing" in err and "pair 2 of 4" in err
    doc = json.loads(out)
    assert doc["n_ratings"] == 4 and doc["win_rate"]["n"] == 4 and doc["sentences"]
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))) == 4
    code, out, _ = _cli(monkeypatch, capsys, "", "rate", run_id, "--summary", "--json")
    assert code == 0 and json.loads(out)["sessions"] == [doc["session"]]
    code, out, _ = _cli(monkeypatch, capsys, "", "rate", run_id, "--list")
    assert cid in out and "1 sessions" in out


def test_compare_json_carries_the_revealed_ratings():
    from workbench.cli_rate import with_ratings

    run_id, cid = canned_comparison()
    doc = canned_doc(open_run(run_id))
    assert "ratings" not in with_ratings(doc)
    sid = ratings.start_session(run_id, cid)["id"]
    _rate_as(sid, {0: "tuned", 1: "tuned"})
    assert "ratings" not in with_ratings(doc)  # still blind: asking must not unblind it
    ratings.reveal(sid)
    out = with_ratings(doc)
    assert out["comparison_id"] == cid and out["ratings"]["win_rate"]["tuned"] == 2


def test_rate_without_a_stored_comparison_says_what_to_run(monkeypatch, capsys):
    from rating_data import canned_run

    run = canned_run()
    code, out, err = _cli(monkeypatch, capsys, "", "rate", run.id)
    assert code == 2 and f"workbench compare {run.id}" in err


@pytest.mark.slow
def test_a_real_comparison_is_stored_rated_and_summarised(tmp_path):
    """compare() on the tiny model with a random adapter: its document (not a canned one) goes through the store,
    a blind session and the statistics, as `workbench compare` and the Compare tab use them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from rating_data import canned_run

    from workbench.cli_rate import with_ratings
    from workbench.evaluate import compare
    from workbench.models import load_model

    run = canned_run()
    model, _ = load_model(MODEL, dtype="float32", device="cpu")
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    doc = with_ratings(compare(run.id, tmp_path / "adapter", max_new_tokens=6).to_dict())
    cid = doc["comparison_id"]
    assert ratings.list_comparisons(run.id)[0]["id"] == cid and "ratings" not in doc
    s = ratings.start_session(run.id, cid, seed=2)
    for _ in range(doc["n_prompts"]):
        s = ratings.rate(s["id"], "left")
    ratings.reveal(s["id"])
    out = with_ratings(doc)["ratings"]
    assert out["n_ratings"] == doc["n_prompts"] and out["stale"] == 0
    names = {a["name"] for a in out["agreement"]}
    assert {"length", "total", "degenerate", "repetition", "naturalness", "words", "tokens"} <= names
