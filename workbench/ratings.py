"""Blind ratings in the run store: the comparisons they rate, and one file per rating session (no gradio, no torch).

    runs/<run_id>/comparisons/<cid>/comparison.json         what `compare` produced (Comparison.to_dict())
    runs/<run_id>/comparisons/<cid>/ratings/<session>.json  one rater's blind session over that comparison

    from workbench import ratings
    cid = ratings.save_comparison(cmp.to_dict())        # the UI and `workbench compare` do this for every comparison
    s = ratings.start_session(run_id, cid)              # sides shuffled with a recorded seed
    ratings.pair_view(s)                                # {"index", "n", "prompt", "left", "right", ...}: no sides
    s = ratings.rate(s["id"], "left")                   # left | right | tie | both_bad, then on to the next pair
    s = ratings.reveal(s["id"])                         # the sides may be shown from now on
    ratings.session_csv(s)                              # prompt, both answers, sides, choice, time per pair

A comparison's id is a hash of what decides its answers (run, weights folder and its time, decoding, seed, token cap,
prompts), so running the same comparison again lands in the same folder and keeps its ratings. Each rating copies
the prompt and both answers, so a rating whose answers the comparison no longer holds is noticed (rating_stats).

Blind by construction: a session keeps which side is base and which tuned, and `pair_view` (all a rater is shown
before the reveal) carries the texts only. Every write is a locked read-modify-write and an atomic rename.

Ownership is an opaque `owner` string (the UI passes a visitor's token hash on a Space): with `owner=None` every
session is open to the caller (locally, the CLI); otherwise only the sessions recorded with that owner.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .osutil import file_lock, json_safe, write_json_atomic
from .store import list_runs, open_run, runs_dir

CHOICES = ("left", "right", "tie", "both_bad")
SIDES = ("base", "tuned")
KEEP_UNRATED = 20  # comparisons of a run kept without ratings; older unrated ones are pruned as new ones land
SESSION_ID_LEN = 16  # hex digits; the only handle a browser holds (opaque: it names no run and no side)


class RatingError(UserError, ValueError):
    """A rating action that cannot be done; the message says what to do instead."""


# --- comparisons ------------------------------------------------------------------------------------------------
def comparison_id(doc: dict[str, Any]) -> str:
    """A hash of what decides a comparison's answers: run, weights (folder and its time), decoding, prompts."""
    run = open_run(doc["run_id"])
    adapter = Path(str(doc.get("adapter") or ""))
    try:
        weights, stamp = str(adapter.relative_to(run.dir)), adapter.stat().st_mtime_ns
    except (ValueError, OSError):  # weights outside the run, or gone: the path alone
        weights, stamp = str(adapter), 0
    key = {"run": run.id, "weights": weights, "stamp": stamp, "mode": doc.get("mode"), "seed": doc.get("seed"),
           "max_new_tokens": doc.get("max_new_tokens"), "prompts": [r.get("prompt") for r in doc["rows"]]}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _cmp_dir(run_id: str, cid: str) -> Path:
    if not (isinstance(cid, str) and len(cid) == 12 and all(c in "0123456789abcdef" for c in cid)):
        raise RatingError(f"{cid!r} is not a comparison id: list them with `workbench rate RUN --list`")
    return open_run(run_id).dir / "comparisons" / cid


def save_comparison(doc: dict[str, Any]) -> str:
    """Store a comparison (Comparison.to_dict()) in its run's folder; returns its id. The same comparison run again
    replaces its file and keeps its ratings; unrated comparisons beyond the newest KEEP_UNRATED are removed."""
    if not doc.get("rows"):
        raise RatingError("the comparison has no answers to store: compare on at least one prompt")
    cid = comparison_id(doc)
    folder = _cmp_dir(doc["run_id"], cid)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        folder / "comparison.json", {**json_safe(doc), "comparison_id": cid, "saved": time.time()}
    )
    for old in [c for c in list_comparisons(doc["run_id"]) if not c["sessions"]][KEEP_UNRATED:]:
        shutil.rmtree(_cmp_dir(doc["run_id"], old["id"]), ignore_errors=True)
    return cid


def load_comparison(run_id: str, cid: str) -> dict[str, Any]:
    path = _cmp_dir(run_id, cid) / "comparison.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise RatingError(
            f"run {run_id} has no comparison {cid}: compare the run first (`workbench compare {run_id}`)"
        ) from None


def list_comparisons(run_id: str) -> list[dict[str, Any]]:
    """The run's stored comparisons, newest first: {id, saved, n_prompts, mode, seed, weights, sessions, rated}."""
    root = open_run(run_id).dir / "comparisons"
    out = []
    for folder in root.iterdir() if root.is_dir() else []:
        try:
            doc = json.loads((folder / "comparison.json").read_text())
        except (OSError, ValueError):
            continue  # being written, or pruned under us
        sessions = _session_files(folder)
        out.append({"id": folder.name, "saved": doc.get("saved", 0), "n_prompts": len(doc.get("rows", [])),
                    "mode": doc.get("mode"), "seed": doc.get("seed"), "weights": Path(str(doc.get("adapter"))).name,
                    "sessions": len(sessions)})  # fmt: skip
    return sorted(out, key=lambda c: c["saved"], reverse=True)


# --- sessions ---------------------------------------------------------------------------------------------------
def _session_files(cmp_folder: Path) -> list[Path]:
    root = cmp_folder / "ratings"
    return sorted(root.glob("*.json")) if root.is_dir() else []


def _session_path(sid: str) -> Path:
    """Where session `sid` lives: found by its id alone, so a browser needs to hold nothing but that id."""
    if not (
        isinstance(sid, str) and len(sid) == SESSION_ID_LEN and all(c in "0123456789abcdef" for c in sid)
    ):
        raise RatingError("no such rating session: start a new one")
    found = list(runs_dir().glob(f"*/comparisons/*/ratings/{sid}.json"))
    if not found:
        raise RatingError("that rating session is gone (its run was deleted?): start a new one")
    return found[0]


def balanced_sides(n: int, seed: int) -> list[str]:
    """Which model answers on the left of each of n pairs: half base, half tuned (the odd one by chance), shuffled
    with `seed`. Balanced rather than a coin per pair, so a rater who favours one position biases neither model."""
    rng = random.Random(seed)
    sides = ["base", "tuned"] * (n // 2) + ([rng.choice(SIDES)] if n % 2 else [])
    rng.shuffle(sides)
    return sides


def start_session(run_id: str, cid: str, owner: str | None = None, seed: int | None = None,
                  rater: str = "browser") -> dict[str, Any]:  # fmt: skip
    """A new blind session over every pair of comparison `cid`, sides shuffled with `seed` (random when None)."""
    doc = load_comparison(run_id, cid)
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    sides = balanced_sides(len(doc["rows"]), seed)
    now = time.time()
    session = {"id": secrets.token_hex(SESSION_ID_LEN // 2), "run_id": run_id, "comparison": cid,
               "owner": owner or "", "rater": rater, "seed": seed, "created": now, "updated": now, "position": 0,
               "revealed": None, "left": sides, "ratings": {}}  # fmt: skip
    folder = _cmp_dir(run_id, cid) / "ratings"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{session['id']}.json", session)
    return session


def _check_owner(session: dict[str, Any], owner: str | None) -> dict[str, Any]:
    if owner is not None and session.get("owner") != owner:
        raise PermissionError("this rating session belongs to another visitor: start your own")
    return session


def load_session(sid: str, owner: str | None = None) -> dict[str, Any]:
    path = _session_path(sid)
    try:
        return _check_owner(json.loads(path.read_text()), owner)
    except ValueError:
        raise RatingError(f"rating session {sid} cannot be read: start a new one") from None


def _update(sid: str, owner: str | None, change) -> dict[str, Any]:
    """Locked read-modify-write of one session: two tabs rating at once never lose each other's choices."""
    path = _session_path(sid)
    with file_lock(path.with_suffix(".lock")):
        session = _check_owner(json.loads(path.read_text()), owner)
        change(session)
        session["updated"] = time.time()
        write_json_atomic(path, session)
    return session


def sessions(run_id: str, cid: str, owner: str | None = None) -> list[dict[str, Any]]:
    """The sessions over comparison `cid` (only `owner`'s unless None), oldest first."""
    out = []
    for p in _session_files(_cmp_dir(run_id, cid)):
        try:
            s = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if owner is None or s.get("owner") == owner:
            out.append(s)
    return sorted(out, key=lambda s: s["created"])


def open_session(owner: str | None = None, rater: str | None = None, run_id: str | None = None,
                 cid: str | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The newest session not yet revealed (of `owner`, `rater`, run and comparison when given): where a rater
    left off, read from the store so a reload or a new terminal finds it."""
    best = None
    for run in list_runs():
        if run_id and run.id != run_id:
            continue
        for p in run.dir.glob(f"comparisons/{cid or '*'}/ratings/*.json"):
            try:
                s = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            mine = (owner is None or s.get("owner") == owner) and (rater is None or s.get("rater") == rater)
            if mine and not s.get("revealed") and (best is None or s["updated"] > best["updated"]):
                best = s
    return best


def _unrated_after(session: dict[str, Any], index: int) -> int | None:
    """The first pair after `index` (wrapping round) that has no rating yet; None when every pair has one."""
    n = len(session["left"])
    for k in range(1, n + 1):
        i = (index + k) % n
        if str(i) not in session["ratings"]:
            return i
    return None


def rate(sid: str, choice: str, owner: str | None = None, index: int | None = None) -> dict[str, Any]:
    """Record `choice` for pair `index` (default: the current one), then move to the next unrated pair. The pair
    index the rater saw is passed back so that a key pressed twice cannot rate a pair nobody has read."""
    if choice not in CHOICES:
        raise RatingError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")

    def change(s: dict[str, Any]) -> None:
        if s.get("revealed"):
            raise RatingError(
                "this session is revealed, so a new choice would not be blind: start a new session"
            )
        i = s["position"] if index is None else int(index)
        if not 0 <= i < len(s["left"]):
            raise RatingError(f"pair {i + 1} does not exist: this comparison has {len(s['left'])} pairs")
        row = load_comparison(s["run_id"], s["comparison"])["rows"][i]
        left = s["left"][i]
        right = "tuned" if left == "base" else "base"
        s["ratings"][str(i)] = {"choice": choice, "time": time.time(), "prompt": row.get("prompt"),
                                "base_answer": row.get("base"), "tuned_answer": row.get("tuned"),
                                "left": left, "right": right}  # fmt: skip
        nxt = _unrated_after(s, i)
        s["position"] = i if nxt is None else nxt

    return _update(sid, owner, change)


def move(sid: str, step: int, owner: str | None = None) -> dict[str, Any]:
    """Skip ahead (+1) or go back (-1) one pair, wrapping round; ratings are untouched."""

    def change(s: dict[str, Any]) -> None:
        s["position"] = (s["position"] + int(step)) % len(s["left"])

    return _update(sid, owner, change)


def reveal(sid: str, owner: str | None = None) -> dict[str, Any]:
    """End the blind part: from now on the sides may be shown, and choices are no longer taken."""

    def change(s: dict[str, Any]) -> None:
        s["revealed"] = s.get("revealed") or time.time()

    return _update(sid, owner, change)


def finished(session: dict[str, Any]) -> bool:
    return len(session["ratings"]) == len(session["left"])


# --- what a rater sees ------------------------------------------------------------------------------------------
def pair_view(session: dict[str, Any]) -> dict[str, Any]:
    """The current pair as a blind rater sees it: prompt and the two texts by position, progress, any earlier
    choice. No side, score, run id or model name: this dict is all the UI and the CLI show before the reveal."""
    i = session["position"]
    row = load_comparison(session["run_id"], session["comparison"])["rows"][i]
    left = session["left"][i]
    right = "tuned" if left == "base" else "base"
    done = session["ratings"].get(str(i))
    return {"index": i, "n": len(session["left"]), "rated": len(session["ratings"]),
            "prompt": row.get("prompt") or "", "left": row.get(left) or "", "right": row.get(right) or "",
            "choice": done["choice"] if done else None}  # fmt: skip


CSV_COLUMNS = ["session", "comparison", "run_id", "seed", "pair", "prompt", "left_answer", "right_answer",
               "left_side", "right_side", "choice", "preferred", "time"]  # fmt: skip


def preferred(rating: dict[str, Any]) -> str:
    """Which model the choice favours: base | tuned | tie | both_bad."""
    c = rating["choice"]
    return rating[c] if c in ("left", "right") else c


def session_rows(session: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per rated pair (CSV_COLUMNS), in pair order."""
    out = []
    for i in sorted(session["ratings"], key=int):
        r = session["ratings"][i]
        ans = {s: r[f"{s}_answer"] for s in SIDES}
        out.append({"session": session["id"], "comparison": session["comparison"], "run_id": session["run_id"],
                    "seed": session["seed"], "pair": int(i) + 1, "prompt": r["prompt"],
                    "left_answer": ans[r["left"]], "right_answer": ans[r["right"]], "left_side": r["left"],
                    "right_side": r["right"], "choice": r["choice"], "preferred": preferred(r),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r["time"])) + "Z"})  # fmt: skip
    return out


def session_csv(session: dict[str, Any]) -> str:
    """The session as CSV text. Refused before the reveal: the sides are in it."""
    if not session.get("revealed"):
        raise RatingError("reveal the session first: its CSV names which side was which model")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    w.writerows(session_rows(session))
    return buf.getvalue()
