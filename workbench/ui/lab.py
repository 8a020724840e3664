"""The reward design lab in the app: "Check rewards" on the Train tab (pre-flight), and on the Runs tab a run's
pre-flight report and a replay of its completions under another reward set.

Both run as `workbench preflight` / `workbench replay` in a child process with a time limit (`run_cli`): they call
reward functions a visitor configured (a regex, a reward model) on sampled text, and such work never runs unbounded
in the web server's process; the child is killed when it overruns. Pure functions first (the HTML of a report,
tested without a server), layout and wiring after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import Limits, RewardSpec, RunSpec
from ..errors import UserError
from ..rewards import build_reward
from ..store import open_run
from . import controls, uploads
from .common import guarded
from .views import esc, num

PREFLIGHT_TIMEOUT_S = float(os.environ.get("WORKBENCH_PREFLIGHT_TIMEOUT_S") or 300)
REPLAY_TIMEOUT_S = float(os.environ.get("WORKBENCH_REPLAY_TIMEOUT_S") or 120)
EMPTY = ('<div class="wb-empty">Check the rewards before training: the base model answers a few training prompts with '
         "these settings, the rewards score them, and answers that game the rewards are tried.</div>")  # fmt: skip


class LabError(UserError, RuntimeError):
    """A pre-flight or replay that could not finish; the message says why and what to change."""


# --- plain functions (tested without a server) ---------------------------------------------------------------
def run_cli(args: list[str], timeout: float) -> dict[str, Any]:
    """`workbench ARGS --json` in a child process (an argument list, no shell), killed after `timeout` seconds."""
    cmd = [sys.executable, "-m", "workbench", *args, "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"`workbench {args[0]}` took longer than {timeout:.0f} s and was stopped: try fewer prompts "
                       "or a smaller max_completion_length, or wait for the running training to finish") from None  # fmt: skip
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        doc = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise LabError(f"`workbench {args[0]}` failed: {tail}") from None
    if p.returncode != 0 or "error" in doc:
        raise LabError(str(doc.get("error") or f"`workbench {args[0]}` exited with {p.returncode}"))
    return doc


def preflight_spec(spec: RunSpec, limits: Limits, prompts: int = 8) -> dict[str, Any]:
    """Check `spec` as a launch would, then run its pre-flight in a child process; the report."""
    uploads.check_visitor_paths(spec)
    limits.check(spec)
    for r in spec.rewards:
        build_reward(r)
    with tempfile.TemporaryDirectory(prefix="wb-preflight-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(spec.to_json())
        return run_cli(["preflight", "--config", str(path), "--prompts", str(prompts)], PREFLIGHT_TIMEOUT_S)


def preflight_html(doc: dict[str, Any] | None) -> str:
    """A pre-flight report: the flags first, then the rewards' numbers, the exploits and a few sampled answers."""
    if not doc:
        return EMPTY
    flags = doc.get("flags") or []
    secs = (doc.get("seconds") or {}).get("total")
    head = (f'<div class="wb-groups-title">Pre-flight: {doc["prompts"]} training prompts × {doc["group_size"]} '
            f"answers of the base model, scored with the run's rewards ({num(secs, '.0f')} s).</div>")  # fmt: skip
    if flags:
        items = "".join(f"<li>{esc(f['text'])}</li>" for f in flags)
        box = (f'<div class="wb-warnings"><div class="wb-warnings-title">{len(flags)} flag(s): what to fix before '
               f"training</div><ul>{items}</ul></div>")  # fmt: skip
    else:
        box = '<div class="wb-empty">No flags: no canned exploit scores like a real answer.</div>'
    rows = "".join(
        f"<tr><td>{esc(r['name'])}</td><td class='wb-num'>{num(r.get('weight'), 'g')}</td>"
        f"<td class='wb-num'>{num(r['mean'])}</td><td class='wb-num'>{num(r['median'])}</td>"
        f"<td class='wb-num'>{num(r['min'])} … {num(r['max'])}</td>"
        f"<td class='wb-num'>{r['zero_spread_groups']}/{r['groups']}</td></tr>"
        for r in [*doc["rewards"], {"name": "total", "weight": None, **doc["total"]}]
    )
    rewards = ("<table class='wb-table'><thead><tr><th>reward</th><th class='wb-num'>weight</th><th class='wb-num'>"
               "mean</th><th class='wb-num'>median</th><th class='wb-num'>range</th><th class='wb-num'>groups without "
               f"spread</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    notes = [doc["zero_spread"]["text"], doc["truncated"]["text"], *doc["correlation"].get("notes", [])]
    ex = "".join(
        f"<tr><td>{'⚑ ' if e['flagged'] else ''}{esc(e['label'])}</td><td class='wb-num'>{e['beats']:.0%}</td>"
        f"<td class='wb-num'>{e['at_median']}/{e['prompts']}</td><td>{esc(e.get('reward') or '')}</td>"
        f"<td class='wb-completion'>{esc(e.get('example', '')[:160])}</td></tr>"
        for e in doc["exploits"]
    )
    exploits = ("<table class='wb-table'><thead><tr><th>canned answer</th><th class='wb-num'>beats real answers"
                "</th><th class='wb-num'>prompts at or above the median</th><th>via</th><th>example</th></tr></thead>"
                f"<tbody>{ex}</tbody></table>")  # fmt: skip
    samples = "".join(
        f"<tr><td>{esc(s['prompt'][:80])}</td><td class='wb-completion'>{esc(s['completion'])}</td>"
        f"<td class='wb-num'>{num(s['reward'])}</td></tr>"
        for s in doc.get("samples", [])[: 2 * doc["group_size"]]
    )
    return (f"{head}{box}{rewards}<p>{'<br>'.join(esc(n) for n in notes)}</p>{exploits}"
            "<details><summary>sampled answers of the first two prompts</summary><table class='wb-table'><thead>"
            f"<tr><th>prompt</th><th>answer</th><th class='wb-num'>reward</th></tr></thead><tbody>{samples}</tbody>"
            "</table></details>")  # fmt: skip


def parse_rewards(text: str) -> list[RewardSpec]:
    """One reward per line ('name:weight,key=value'), each checked now; LabError when none is given."""
    specs = [RewardSpec.parse(line) for line in (text or "").splitlines() if line.strip()]
    if not specs:
        raise LabError("no reward to replay with: write one per line, e.g. length:1,target=20")
    for s in specs:
        build_reward(s)
    return specs


def rewards_text(run_id: str | None) -> str:
    """A run's reward set, one per line: the starting point of a replay."""
    if not run_id:
        return ""
    from ..recovery import task_for_run

    run = open_run(run_id)
    return "\n".join(str(r) for r in task_for_run(run).rewards_for(run.spec))


def replay_run(run_id: str | None, text: str) -> dict[str, Any]:
    if not run_id:
        raise LabError("pick a run first")
    open_run(run_id)  # a clear error for an unknown id before a process starts
    args = ["replay", run_id]
    for s in parse_rewards(text):
        args += ["--reward", str(s)]
    return run_cli(args, REPLAY_TIMEOUT_S)


def replay_html(doc: dict[str, Any] | None, limit: int = 12) -> str:
    """A replay: the change in totals, signal and advantages, then the completions that flip the most."""
    if not doc:
        return '<div class="wb-empty">Pick a run, edit its rewards above, and replay its stored completions.</div>'
    f, n = doc["flips"], doc["completions"]
    lines = [
        f"{doc['steps']} steps, {n} completions in {doc['groups']} groups re-scored in {doc['seconds']:.1f} s "
        "(no generation).",
        f"Mean total reward {num(doc['old_reward'])} → {num(doc['new_reward'])}; {doc['changed_totals']:.0%} of "
        "totals changed.",
        f"Groups without spread (no learning signal): {doc['old_zero_spread']:.0%} → {doc['new_zero_spread']:.0%}.",
        f"{f['up_to_down']} completions go from pushed up to pushed down, {f['down_to_up']} the reverse; "
        f"{f['lost_push']} lose their push, {f['gained_push']} gain one.",
        f"Rank correlation of old and new advantages: {num(doc['rank_correlation'], '.2f')} (within groups "
        f"{num(doc['group_rank_correlation'], '.2f')}).",
        *doc.get("notes", []),
    ]
    rows = "".join(
        f"<tr><td class='wb-num'>{x['step']}</td><td>{esc(x['prompt'][:70])}</td>"
        f"<td class='wb-completion'>{esc(x['completion'][:240])}</td><td>{'↑→↓' if x['from'] == 'up' else '↓→↑'}</td>"
        f"<td class='wb-num'>{x['old_advantage']:+.2f} → {x['new_advantage']:+.2f}</td>"
        f"<td class='wb-num'>{num(x['old_reward'], '+.2f')} → {num(x['new_reward'], '+.2f')}</td></tr>"
        for x in doc["flipped"][:limit]
    )
    table = ("<table class='wb-table'><thead><tr><th class='wb-num'>step</th><th>prompt</th><th>completion</th>"
             "<th>push</th><th class='wb-num'>advantage</th><th class='wb-num'>reward</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>") if rows else '<div class="wb-empty">No completion flips.</div>'  # fmt: skip
    return f"<p>{'<br>'.join(esc(x) for x in lines)}</p>{table}"


def run_preflight_html(run_id: str | None) -> str:
    """The pre-flight report saved with a run, or how to get one."""
    from ..lab.preflight import for_run

    if not run_id:
        return ""
    doc = for_run(open_run(run_id))
    if doc is None:
        return ('<div class="wb-empty">No pre-flight report for this run: "Check rewards" on the Train tab with the '
                "same settings (or `workbench preflight --config` its spec.json) makes one.</div>")  # fmt: skip
    return preflight_html(doc)


# --- layout and wiring ---------------------------------------------------------------------------------------
def build_preflight(c: dict[str, Any]) -> None:
    """The Train tab's "Check rewards" button and the report under it."""
    c["check"] = gr.Button("Check rewards", elem_id="wb-check", size="sm")
    with gr.Accordion("Pre-flight: will these rewards teach what you mean?", open=False) as acc:
        c["preflight"] = gr.HTML(EMPTY, elem_id="wb-preflight", max_height=900)
    c["preflight_box"] = acc


def wire_preflight(c: dict[str, Any], limits: Limits, launch_kwargs: dict, names: list[str],
                   flat_names: list[str]) -> None:  # fmt: skip
    """The button runs the pre-flight of the form's settings (the launch button's inputs)."""

    @guarded(2)
    def check(token=None, rewards=None, **values):
        flat = [values.pop(k) for k in flat_names]
        spec = controls.spec_from_values(names, [values[n] for n in names],
                                         controls.rewards_from_values(rewards, flat))  # fmt: skip
        return preflight_html(preflight_spec(spec, limits)), gr.update(open=True)

    c["check"].click(check, outputs=[c["preflight"], c["preflight_box"]], inputs_kwargs=launch_kwargs,
                     api_name="preflight", concurrency_limit=1)  # fmt: skip


def build_run_lab(c: dict[str, Any]) -> None:
    """On the Runs tab, for the picked run (`c["one"]`): its pre-flight report and a replay under edited rewards."""
    with gr.Accordion("Pre-flight report (before launch)", open=False):
        c["run_preflight"] = gr.HTML("", elem_id="wb-run-preflight", max_height=700)
    with gr.Accordion("Replay: this run's completions under another reward set (no generation)", open=False):
        c["replay_rewards"] = gr.Textbox(label="rewards, one per line (name:weight,key=value)", lines=3,
                                         elem_id="wb-replay-rewards")  # fmt: skip
        c["replay"] = gr.Button("Replay", size="sm", elem_id="wb-replay")
        c["replay_out"] = gr.HTML(replay_html(None), elem_id="wb-replay-out", max_height=700)

    @guarded(2, quiet=True)
    def on_run(run_id):
        return run_preflight_html(run_id), rewards_text(run_id)

    c["one"].change(on_run, c["one"], [c["run_preflight"], c["replay_rewards"]], api_visibility="private")
    c["replay"].click(guarded(1)(lambda run_id, text: replay_html(replay_run(run_id, text))),
                      [c["one"], c["replay_rewards"]], c["replay_out"], api_name="replay", concurrency_limit=2)  # fmt: skip
