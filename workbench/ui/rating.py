"""Compare tab, blind rating: you judge base vs tuned one pair at a time without knowing which is which.

Sides are shuffled per pair with a recorded seed (workbench.ratings); until the reveal the page and every API
response carry the prompt and the two texts by position only: no side, score, run id or model name. Keys: 1 or ←
left better, 2 or → right better, 3 tie, 4 both bad, S skip, B back. Each choice is written to the run store at
once, so a reload (or another browser on the same machine) finds the session where it was left.

After the last pair (or "Reveal now"): your win rate for tuned over base, how far each reward and check agrees with
you (rating_stats), the pairs where they disagree first, and the session as CSV. On a Space a session belongs to
the browser that started it, as runs do (access.py): the owner is the hash of the browser's token.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import ratings
from ..errors import UserError
from ..rating_stats import summarize
from . import access, plots, views
from .common import guarded, user_message
from .compare import pairs_html, run_comparison
from .settings import on_space

CHOICE_TEXT = {"left": "left", "right": "right", "tie": "a tie", "both_bad": "both bad"}
AGREE_COLUMNS = ["reward or check", "kind", "better", "agreed", "of", "disagreed", "scored the same",
                 "pairs where it disagrees"]  # fmt: skip
EMPTY = '<div class="wb-empty">Pick a stored comparison and press Start, or Compare blind to make a new one.</div>'
# Keyboard shortcuts: a document listener (installed once) clicks the buttons while a blind pair is on screen and
# the focus is not in a text field.
KEYS_JS = """
if (!window.__wbRateKeys) {
  window.__wbRateKeys = true;
  const map = {'1': 'left', 'ArrowLeft': 'left', '2': 'right', 'ArrowRight': 'right', '3': 'tie', 't': 'tie',
               '4': 'bad', 'x': 'bad', 's': 'skip', 'n': 'skip', 'b': 'back', 'p': 'back'};
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)))) return;
    const live = document.querySelector('#wb-rate-pair .wb-rate-live');
    const name = map[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (!live || !live.offsetParent || !name) return;
    const el = document.getElementById('wb-rate-' + name);
    const btn = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button'));
    if (btn) { e.preventDefault(); btn.click(); }
  });
}
"""
RATE_CSS = """
.wb-rate-progress { font-size:0.85rem; color:var(--body-text-color-subdued); margin-bottom:4px; }
.wb-rate-keys { font-size:0.8rem; color:var(--body-text-color-subdued); margin-top:4px; }
.wb-rate-note { font-size:0.85rem; color:#92400e; }
kbd { font-family:var(--font-mono); font-size:0.75rem; border:1px solid var(--border-color-primary);
  border-radius:4px; padding:0 4px; }
"""


def visitor(token: str | None) -> str | None:
    """Whose sessions these are: None locally (whoever reaches the server owns it, as for runs); on a Space the hash
    of this browser's token."""
    if not on_space():
        return None
    if not token:
        raise PermissionError(
            "this browser has no visitor token yet: reload the page (an API client passes any private string as "
            "its token, and the same one each time)"
        )
    return hashlib.sha256(token.encode()).hexdigest()


def comparison_choices(run_id: str | None) -> list[tuple[str, str]]:
    """The run's stored comparisons, newest first, labelled by what they did (never by a score)."""
    if not run_id:
        return []
    return [(f"{views.clock(c['saved'])} · {c['n_prompts']} prompts · {c['mode']}, seed {c['seed']} · "
             f"{c['sessions']} rating sessions", c["id"]) for c in ratings.list_comparisons(run_id)]  # fmt: skip


# --- what the page shows ------------------------------------------------------------------------------------------
def pair_html(v: dict[str, Any]) -> str:
    """One blind pair (ratings.pair_view): the prompt, and the two texts by position only."""
    chosen = v["choice"]

    def cell(pos: str, key: str, arrow: str) -> str:
        cls = "wb-answer wb-win" if chosen == pos else "wb-answer"
        return f'<div class="{cls}"><h4>{pos} <kbd>{key}</kbd> <kbd>{arrow}</kbd></h4><pre>{views.esc(v[pos])}</pre></div>'

    same = '<div class="wb-rate-note">The two answers are identical.</div>' if v["left"] == v["right"] else ""
    earlier = f" · you chose {CHOICE_TEXT[chosen]}" if chosen else ""
    return (f'<div class="wb-rate-live" data-pair="{v["index"]}"><div class="wb-rate-progress">Pair {v["index"] + 1} '
            f'of {v["n"]} · {v["rated"]} rated{earlier}</div>'
            f'<div class="wb-qprompt">{views.esc(views.prompt_display(v["prompt"]))}</div>{same}'
            f'<div class="wb-pair">{cell("left", "1", "←")}{cell("right", "2", "→")}</div>'
            '<div class="wb-rate-keys">Keys: <kbd>1</kbd> left better · <kbd>2</kbd> right better · <kbd>3</kbd> tie · '
            '<kbd>4</kbd> both bad · <kbd>S</kbd> skip · <kbd>B</kbd> back</div></div>')  # fmt: skip


def result_markdown(doc: dict[str, Any], session: dict[str, Any]) -> str:
    """The reveal: the win rate (ties explicit), then one sentence per reward and check."""
    lines = [f"**{views.esc(doc['headline'])}**", "", views.esc(doc["decided"]), ""]
    if doc["stale"]:
        lines.append(
            f"{doc['stale']} ratings rate answers the comparison no longer holds (it was run again): left out."
        )
    lines += [f"- {views.esc(s)}" for s in doc["sentences"]]
    lines.append(f"\n*Session {session['id']}, sides shuffled with seed {session['seed']}.*")
    return "\n".join(lines)


def agreement_frame(doc: dict[str, Any]) -> pd.DataFrame:
    rows = [[a["name"], a["kind"], a["better"] or "none (agreed = you chose the longer)", a["agreed"], a["n"], a["disagreed"], a["tied"],
             ", ".join(map(str, a["disagree_pairs"]))] for a in doc["agreement"]]  # fmt: skip
    return pd.DataFrame(rows, columns=AGREE_COLUMNS)


def _chose(p: dict[str, Any]) -> str:
    if p["choice"] == "tie":
        return "You called it a tie."
    if p["choice"] == "both_bad":
        return "You marked both answers bad."
    return f"You chose {p['choice']} ({p['preferred']})."


def revealed_html(doc: dict[str, Any]) -> str:
    """Every rated pair with its sides named, where you and the rewards stood; disagreements first."""
    parts = []
    for p in doc["pairs"]:
        sides = {"left": p["left"], "right": "tuned" if p["left"] == "base" else "base"}
        cells = []
        for pos, side in sides.items():
            chips = "".join(f'<span class="wb-score">{views.esc(n)} {views.num(s[side])}</span>'
                            for n, s in p["scores"].items() if s[side] is not None)  # fmt: skip
            cls = "wb-answer wb-win" if p["preferred"] == side else "wb-answer"
            cells.append(f'<div class="{cls}"><h4>{pos}: {side}</h4><pre>{views.esc(p[side])}</pre>'
                         f'<div class="wb-scores">{chips}</div></div>')  # fmt: skip
        against = f" Against you: <b>{views.esc(', '.join(p['disagree']))}</b>." if p["disagree"] else ""
        parts.append(f'<div class="wb-qprompt">Pair {p["pair"]}: {views.esc(views.prompt_display(p["prompt"]))}</div>'
                     f'<div>{_chose(p)}{against}</div>'
                     f'<div class="wb-pair">{"".join(cells)}</div>')  # fmt: skip
    return "".join(parts) or '<div class="wb-empty">No pair was rated.</div>'


def session_outputs(s: dict[str, Any]) -> tuple:
    """(session id, pair, shown pair, result, agreement table, revealed pairs, CSV) for one session. Before the
    reveal everything but the blind pair is empty."""
    if not s.get("revealed"):
        v = ratings.pair_view(s)
        return (s["id"], pair_html(v), v["index"], "", gr.update(value=agreement_frame({"agreement": []}),
                visible=False), "", None)  # fmt: skip
    doc = summarize(ratings.load_comparison(s["run_id"], s["comparison"]), [s])
    # One file per session, rewritten on each reveal or reload: a fresh temp folder per page load would pile up.
    path = Path(tempfile.gettempdir()) / "wb-rating" / f"ratings-{s['id']}.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(ratings.session_csv(s))
    note = '<div class="wb-empty">Revealed. Start a new session to rate blind again.</div>'
    return (s["id"], note, -1, result_markdown(doc, s), gr.update(value=agreement_frame(doc), visible=True),
            revealed_html(doc), str(path))  # fmt: skip


# --- actions (plain functions: the buttons, the keys and the API call these) ----------------------------------------
def start(run_id: str, cid: str, token: str | None) -> dict[str, Any]:
    if not run_id:
        raise ratings.RatingError("no run chosen: pick a run, then a comparison of it")
    cid = cid or next((c for _, c in comparison_choices(run_id)), None)
    if not cid:
        raise ratings.RatingError("this run has no stored comparison: press Compare blind (or Compare) first")
    return ratings.start_session(run_id, cid, owner=visitor(token))


def act(sid: str, action: str, token: str | None, shown: int | None = None) -> dict[str, Any]:
    """One rater action on session `sid`: a choice (left | right | tie | both_bad) on the pair shown, skip, back,
    reveal, or "" to read it. The last choice reveals."""
    if not sid:
        raise ratings.RatingError("no rating session: press Start")
    owner = visitor(token)
    if action in ratings.CHOICES:
        shown = None if shown is None or int(shown) < 0 else int(shown)
        s = ratings.rate(sid, action, owner, index=shown)
        return ratings.reveal(sid, owner) if ratings.finished(s) else s
    if action in ("skip", "back"):
        return ratings.move(sid, 1 if action == "skip" else -1, owner)
    if action == "reveal":
        return ratings.reveal(sid, owner)
    return ratings.load_session(sid, owner)


def restore(sid: str | None, token: str | None) -> dict[str, Any] | None:
    """The session this browser was in: the one it remembers, else the newest open one of this visitor (the store
    knows it even when the browser forgot)."""
    owner = visitor(token)
    if sid:
        try:
            return ratings.load_session(sid, owner)
        except (ratings.RatingError, PermissionError):
            pass
    return ratings.open_session(owner, rater="browser")


def api_view(s: dict[str, Any]) -> dict[str, Any]:
    """The JSON an API client gets: the blind pair before the reveal, the summary after it."""
    if not s.get("revealed"):
        return {"session": s["id"], "revealed": False, "pair": ratings.pair_view(s)}
    return {"session": s["id"], "revealed": True,
            "summary": summarize(ratings.load_comparison(s["run_id"], s["comparison"]), [s])}  # fmt: skip


# --- layout and wiring --------------------------------------------------------------------------------------------
def build_rating_section(c: dict[str, Any], token: gr.BrowserState | None) -> dict[str, Any]:
    """The blind-rating accordion of the Compare tab, wired to the tab's run and comparison settings in `c`."""
    r: dict[str, Any] = {}
    token = token if token is not None else gr.State("")
    with gr.Accordion("Rate blind: you are the judge", open=True, elem_id="wb-rate"):
        gr.Markdown("Judge the answers without knowing which model wrote them: each pair's sides are shuffled, no "
                    "score is shown until you finish or reveal. Then see which model you preferred, how sure that is, "
                    "and how far each reward agrees with you. Starting hides the comparison above.")  # fmt: skip
        with gr.Row():
            r["cmp"] = gr.Dropdown(label="comparison to rate", choices=[], elem_id="wb-rate-cmp", scale=4,
                                   info="Every comparison of the run is kept; the newest is first.")  # fmt: skip
            r["start"] = gr.Button("Start", elem_id="wb-rate-start", scale=1, variant="primary")
            r["compare"] = gr.Button("Compare blind", elem_id="wb-rate-compare", scale=1)
        r["pair"] = gr.HTML(EMPTY, elem_id="wb-rate-pair", js_on_load=KEYS_JS, css_template=RATE_CSS)
        with gr.Row():
            for name, label in (("left", "Left better [1]"), ("right", "Right better [2]"), ("tie", "Tie [3]"),
                                ("bad", "Both bad [4]"), ("back", "◀ Back [B]"), ("skip", "Skip ▶ [S]"),
                                ("reveal", "Reveal now")):  # fmt: skip
                r[name] = gr.Button(label, elem_id=f"wb-rate-{name}", size="sm")
        r["result"] = gr.Markdown(elem_id="wb-rate-result")
        r["agree"] = gr.Dataframe(pd.DataFrame(columns=AGREE_COLUMNS), label="agreement with you", visible=False,
                                  interactive=False, elem_id="wb-rate-agreement")  # fmt: skip
        r["revealed"] = gr.HTML("", elem_id="wb-rate-revealed")
        r["csv"] = gr.File(label="download this rating session (CSV)", interactive=False, height=70,
                           elem_id="wb-rate-csv")  # fmt: skip
    r["sid"] = gr.BrowserState("", storage_key="grpo-workbench-rating", secret=access.browser_secret())
    # the pair on screen, sent with each key: a key pressed twice rates that pair again, never one nobody has read
    r["shown"] = gr.Number(-1, visible=False, precision=0)
    _wire(c, r, token)
    return r


def _wire(c: dict[str, Any], r: dict[str, Any], token) -> None:
    out = [r["sid"], r["pair"], r["shown"], r["result"], r["agree"], r["revealed"], r["csv"]]
    # Starting hides the labelled comparison above, so nothing on the page names a side.
    hide = [c["headline"], c["chart"], c["table"], c["csv"], c["pairs"]]

    def hidden() -> tuple:
        return "", plots.summary_figure(None), pd.DataFrame(), None, pairs_html(None)

    @guarded(len(out) + len(hide) + 1)
    def on_start(run_id, cid, tok):
        s = start(run_id, cid, tok)
        return (
            *session_outputs(s),
            *hidden(),
            gr.update(choices=comparison_choices(run_id), value=s["comparison"]),
        )

    r["start"].click(on_start, [c["run"], r["cmp"], token], [*out, *hide, r["cmp"]], api_visibility="private")

    @guarded(len(out) + len(hide) + 1)
    def on_compare(run_id, source, n, prompt, answer, mode, seed, max_new_tokens, weights, tok,
                   progress=gr.Progress()):  # noqa: B008  # fmt: skip

        visitor(tok)  # a Space visitor without a token is told before minutes of generation, not after
        progress(0.0, desc="Loading the models…")
        result = run_comparison(run_id, source, n, prompt, answer, mode, seed, max_new_tokens, weights=weights,
                                progress=lambda f, msg: progress(f, desc="answering the prompts…"))  # fmt: skip
        return on_start(run_id, ratings.save_comparison(result.to_dict()), tok)

    r["compare"].click(on_compare, [c["run"], c["source"], c["n"], c["prompt"], c["answer"], c["mode"], c["seed"],
                                    c["max_new_tokens"], c["weights"], token], [*out, *hide, r["cmp"]],
                       concurrency_limit=1, concurrency_id="compare", api_visibility="private")  # fmt: skip

    for name, action in (("left", "left"), ("right", "right"), ("tie", "tie"), ("bad", "both_bad"),
                         ("skip", "skip"), ("back", "back"), ("reveal", "reveal")):  # fmt: skip

        @guarded(len(out))
        def on_act(sid, shown, tok, action=action):
            return session_outputs(act(sid, action, tok, shown))

        r[name].click(on_act, [r["sid"], r["shown"], token], out, api_visibility="private",
                      show_progress="hidden")  # fmt: skip

    @guarded(len(out), quiet=True)
    def on_load(sid, tok):
        s = restore(sid, tok)
        return session_outputs(s) if s else tuple(gr.skip() for _ in out)

    gr.on(None, on_load, [r["sid"], token], out, api_visibility="private")

    @guarded(1, quiet=True)
    def refresh(run_id, current=None):
        choices = comparison_choices(run_id)
        ids = [v for _, v in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    r["cmp"].focus(refresh, [c["run"], r["cmp"]], r["cmp"], api_visibility="private")
    c["run"].change(refresh, [c["run"]], r["cmp"], api_visibility="private")

    def api(fn):  # the API client gets our message, not an empty error
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (UserError, PermissionError) as e:
                raise gr.Error(user_message(e), print_exception=False) from None

        return functools.wraps(fn)(inner)

    @api
    def rate_start(run_id: str, comparison: str = "", token: str = "") -> dict:
        """Start a blind session over a stored comparison of the run (default the newest): the first pair."""
        return api_view(start(run_id, comparison, token))

    @api
    def rate(session: str, action: str = "", shown: int = -1, token: str = "") -> dict:
        """left | right | tie | both_bad on the pair `shown` (-1: the current one), skip, back, reveal, or "" to
        read the session. Before the reveal the answer names no side."""
        return api_view(act(session, action, token, shown))

    gr.api(rate_start, api_name="rate_start")
    gr.api(rate, api_name="rate")
