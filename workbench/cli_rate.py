"""`workbench rate RUN`: judge base vs tuned answers blind in the terminal, then see how your rewards agree with you.

    workbench compare RUN                 # stores the comparison in the run (every comparison is stored)
    workbench rate RUN                    # one pair at a time, sides shuffled: 1 left, 2 right, 3 tie, 4 both bad,
                                          # s skip, b back, r reveal now, q quit (your place is kept)
    workbench rate RUN --summary [--json] # what the revealed sessions say, without rating
    workbench rate RUN --list             # the run's stored comparisons

The same data as the Compare tab's blind mode (workbench.ratings): a quit session is picked up where it was left by
the next `workbench rate RUN`, in this terminal or another. Only revealed sessions are summarised, by `--summary`
and by `workbench compare --json`, so asking never unblinds a session still being rated. Imports stay inside the
functions: `workbench --help` must not pay for numpy.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

KEYS = {"1": "left", "2": "right", "3": "tie", "4": "both_bad"}
HELP = "1 left better · 2 right better · 3 tie · 4 both bad · s skip · b back · r reveal now · q quit (kept)"


def add_rate_command(cmd) -> None:
    """Register `rate` with cli_args' `cmd(name, help, run=True)` helper."""
    r = cmd(
        "rate", "rate base vs tuned answers blind (sides shuffled), then see how your rewards agree", run=True
    )
    r.add_argument(
        "--comparison", metavar="ID", help="which stored comparison (default: the newest; see --list)"
    )
    r.add_argument("--list", action="store_true", help="list the run's stored comparisons and their sessions")
    r.add_argument("--summary", action="store_true", help="what the revealed sessions say, without rating")
    r.add_argument("--new", action="store_true", help="start a new session even when one is open")
    r.add_argument(
        "--seed", type=int, help="seed of the left/right shuffle (default: random; always recorded)"
    )
    r.add_argument("--csv", metavar="FILE", help="after the reveal, write the session's ratings to FILE")


def _comparison(run_id: str, cid: str | None) -> str:
    from . import ratings

    if cid:
        return cid
    found = ratings.list_comparisons(run_id)
    if not found:
        raise ratings.RatingError(
            f"run {run_id} has no stored comparison: run `workbench compare {run_id}` first"
        )
    return found[0]["id"]


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A summary (rating_stats.summarize) for the terminal: the win rate, one sentence per reward and check, and
    the pairs where your rewards disagree with you."""
    lines = [doc["headline"], doc["decided"]]
    if doc["stale"]:
        lines.append(f"  {doc['stale']} ratings rate answers this comparison no longer holds: left out")
    lines += ["", "Agreement with you, on the pairs where you chose a side:"]
    lines += [f"  {s}" for s in doc["sentences"]] or ["  (no pair where you chose a side)"]
    against = [p for p in doc["pairs"] if p["disagree"]]
    if against:
        lines += ["", "Pairs where rewards or checks disagree with you (most disagreement first):"]
        for p in against[:10]:
            lines.append(f"  pair {p['pair']}: you preferred {p['preferred']}; against you: {', '.join(p['disagree'])}"
                         f" — {str(p['prompt'])[:70]!r}")  # fmt: skip
    return lines


def with_ratings(doc: dict[str, Any]) -> dict[str, Any]:
    """A comparison's JSON (Comparison.to_dict()) stored in its run, with its id and, when revealed sessions rate
    it, what they say under "ratings". `workbench compare` calls this."""
    from . import ratings
    from .rating_stats import summarize

    cid = ratings.save_comparison(doc)
    done = [s for s in ratings.sessions(doc["run_id"], cid) if s.get("revealed")]
    out = {**doc, "comparison_id": cid}
    if done:
        out["ratings"] = summarize(ratings.load_comparison(doc["run_id"], cid), done)
    return out


def _read(prompt: str) -> str | None:
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return None if not line else line.strip().lower()


def _show(v: dict[str, Any]) -> None:
    def block(title: str, text: str) -> str:
        body = "\n".join(textwrap.fill(p, 100, initial_indent="  ", subsequent_indent="  ") or "  "
                         for p in (text or "(empty)").splitlines())  # fmt: skip
        return f"{title}\n{body}"

    seen = f" — you chose {v['choice'].replace('_', ' ')}" if v["choice"] else ""
    print(f"\n=== pair {v['index'] + 1} of {v['n']} ({v['rated']} rated){seen} ===", file=sys.stderr)
    print(block("PROMPT", str(v["prompt"])), file=sys.stderr)
    print(block("[1] LEFT", v["left"]), file=sys.stderr)
    print(block("[2] RIGHT", v["right"]), file=sys.stderr, flush=True)


def cmd_rate(args: argparse.Namespace) -> tuple[int, Any, str]:
    from . import ratings
    from .rating_stats import summarize
    from .store import open_run

    run = open_run(args.run)
    if args.list:
        rows = ratings.list_comparisons(run.id)
        lines = [f"{c['id']}  {c['n_prompts']:>3} prompts  {c['mode']} seed {c['seed']}  weights {c['weights']}  "
                 f"{c['sessions']} sessions" for c in rows]  # fmt: skip
        return 0, rows, "\n".join(lines) or f"no stored comparison: run `workbench compare {run.id}`"
    cid = _comparison(run.id, args.comparison)
    if args.summary:
        done = [s for s in ratings.sessions(run.id, cid) if s.get("revealed")]
        if not done:
            raise ratings.RatingError(f"comparison {cid} has no revealed rating session: rate it with "
                                      f"`workbench rate {run.id}`")  # fmt: skip
        doc = summarize(ratings.load_comparison(run.id, cid), done)
        return 0, doc, "\n".join(summary_lines(doc))
    old = None if args.new else ratings.open_session(rater="cli", run_id=run.id, cid=cid)
    s = old or ratings.start_session(run.id, cid, seed=args.seed, rater="cli")
    print(
        f"{'continuing' if old else 'new'} blind session {s['id']} over comparison {cid}\n{HELP}",
        file=sys.stderr,
    )
    while not ratings.finished(s):
        v = ratings.pair_view(s)
        _show(v)
        key = _read("your choice [1/2/3/4/s/b/r/q]: ")
        if key is None or key == "q":
            doc = {"session": s["id"], "comparison": cid, "rated": len(s["ratings"]), "n": len(s["left"])}
            return 0, doc, f"saved {doc['rated']} of {doc['n']}; continue with `workbench rate {run.id}`"
        if key in KEYS:
            s = ratings.rate(s["id"], KEYS[key], index=v["index"])
        elif key in ("s", "b"):
            s = ratings.move(s["id"], 1 if key == "s" else -1)
        elif key == "r":
            break
        else:
            print(HELP, file=sys.stderr)
    s = ratings.reveal(s["id"])
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            f.write(ratings.session_csv(s))
    doc = summarize(ratings.load_comparison(run.id, cid), [s])
    lines = summary_lines(doc) + [f"\nthis session: {s['id']} (sides seed {s['seed']})"]
    return 0, {**doc, "session": s["id"], "seed": s["seed"]}, "\n".join(lines)
