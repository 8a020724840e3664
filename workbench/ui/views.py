"""Pure data views of the run store: what the tabs show, as DataFrames, dicts and escaped HTML (no gradio).

Every function takes plain values (a run's status dict, its metrics, its spec as a dict) so the tests call them
without a server and any tab can reuse them. Anything that came from a user or a model (prompts, completions, task
names, failure reasons) is passed through `html.escape` before it lands in HTML.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

import pandas as pd

from ..config import RunSpec
from ..store import RESUMABLE


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def num(x: Any, fmt: str = ".3f", missing: str = "–") -> str:
    """A number for display; None/NaN/inf read as a dash."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return missing
    return format(x, fmt)


def duration(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def clock(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch)) if epoch else "–"


def prompt_display(prompt: Any) -> str:
    """The text a person reads for a stored prompt: chat prompts are stored as JSON message lists."""
    if isinstance(prompt, str) and prompt.startswith("["):
        try:
            prompt = json.loads(prompt)
        except ValueError:
            return prompt
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else json.dumps(prompt)
    return "" if prompt is None else str(prompt)


def ui_reason(status: dict) -> str:
    """A run's stored reason in the browser's words: a run that can go on points at the Runs tab's Resume."""
    reason = str(status.get("reason") or "")
    if status.get("resumable", status.get("state") in RESUMABLE):
        reason += ("; " if reason else "") + "resume it on the Runs tab"
    return reason


# --- progress of one run -------------------------------------------------------------------------------------


def progress(status: dict, metrics: list[dict], now: float | None = None) -> dict[str, Any]:
    """Steps done, target, fraction, seconds per step (median of the last 5 steps) and the ETA in seconds."""
    done, total = int(status.get("steps_done") or 0), int(status.get("max_steps") or 0)
    times = [m.get("step_time") for m in metrics[-5:] if isinstance(m.get("step_time"), (int, float))]
    if not times and len(metrics) >= 2:  # no step_time logged: use the spacing of the steps' wall times
        walls = [m["wall_time"] for m in metrics[-6:] if m.get("wall_time")]
        times = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    per_step = sorted(times)[len(times) // 2] if times else None
    running = status.get("state") == "running"
    eta = per_step * max(total - done, 0) if (per_step and running) else None
    started, ended = status.get("started"), status.get("ended")
    elapsed = ((ended or now or time.time()) - started) if started else None
    return {"done": done, "total": total, "frac": (done / total) if total else 0.0, "per_step": per_step,
            "eta": eta, "elapsed": elapsed}  # fmt: skip


def status_html(run_id: str | None, status: dict | None, metrics: list[dict], spec: dict | None = None) -> str:  # fmt: skip
    """The status card above the plots: state, progress bar, step counter, speed, ETA, latest reward."""
    if not run_id or status is None:
        return (
            '<div class="wb-status wb-idle"><div class="wb-status-top"><span class="wb-badge">no run</span>'
            "<span>Pick a preset, adjust it if you like, and press <b>Launch</b>. Curves appear after the first "
            "step.</span></div></div>"
        )
    state = status.get("state", "queued")
    p = progress(status, metrics)
    spec = spec or {}
    what = " · ".join(esc(spec[k]) for k in ("task", "model") if spec.get(k))
    last = metrics[-1] if metrics else {}
    first = metrics[0] if metrics else {}
    stats = [f"<div><b>{p['done']}</b> / {p['total']} steps</div>"]
    if p["per_step"]:
        stats.append(f"<div><b>{p['per_step']:.1f} s</b> per step</div>")
    if p["eta"] is not None:
        stats.append(f"<div>ETA <b>{duration(p['eta'])}</b></div>")
    elif p["elapsed"] is not None and state != "queued":
        stats.append(f"<div>took <b>{duration(p['elapsed'])}</b></div>" if state != "running" else
                     f"<div>elapsed <b>{duration(p['elapsed'])}</b></div>")  # fmt: skip
    if isinstance(last.get("reward"), (int, float)):
        change = ""
        if len(metrics) > 1 and isinstance(first.get("reward"), (int, float)):
            d = last["reward"] - first["reward"]
            change = f' <span class="{"wb-up" if d >= 0 else "wb-down"}">{d:+.3f} since step {first["step"]}</span>'
        stats.append(f"<div>reward <b>{last['reward']:.3f}</b>{change}</div>")
    reason = ui_reason(status)
    if state == "queued":
        note = f"{reason or 'Waiting for a free slot'}. It starts by itself; this page follows it."
    elif state == "running":
        note = {"saving": "Saving the checkpoint and the adapter…"}.get(reason, "")
        if p["done"] == 0:
            note = "Loading the model and sampling the first groups… the first point lands after one step."
    elif state == "finished":
        note = (reason + ". " if reason else "") + "Compare it with the base model on the Compare tab."
    else:
        note = reason
    note_html = f'<div class="wb-reason">{esc(note)}</div>' if note else ""
    pct = 100 * p["frac"]
    return (
        f'<div class="wb-status wb-{esc(state)}"><div class="wb-status-top">'
        f'<span class="wb-badge wb-badge-{esc(state)}">{esc(state)}</span>'
        f'<span class="wb-runid">run {esc(run_id)}</span><span class="wb-what">{what}</span></div>'
        f'<div class="wb-progress" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><div style="width:{pct:.1f}%"></div></div>'
        f'<div class="wb-stats">{"".join(stats)}</div>{note_html}</div>'
    )


# --- the runs table ------------------------------------------------------------------------------------------

RUN_COLUMNS = [
    "run",
    "status",
    "task",
    "model",
    "steps",
    "reward (first → last)",
    "duration",
    "started",
    "reason",
]


def run_row(run_id: str, status: dict, spec: dict, metrics: list[dict], now: float | None = None) -> dict:
    """One row of the runs table."""
    rewards = [m.get("reward") for m in metrics if isinstance(m.get("reward"), (int, float))]
    reward = (
        f"{rewards[0]:.3f} → {rewards[-1]:.3f}" if len(rewards) > 1 else num(rewards[0]) if rewards else "–"
    )
    p = progress(status, metrics, now)
    return {
        "run": run_id,
        "status": status.get("state", "?"),
        "task": str(spec.get("task", "?")),
        "model": str(spec.get("model", "?")),
        "steps": f"{p['done']}/{p['total']}",
        "reward (first → last)": reward,
        "duration": duration(p["elapsed"]),
        "started": clock(status.get("started")),
        "reason": "" if status.get("state") in ("running", "finished") else ui_reason(status),
    }


def runs_table(rows: list[dict]) -> pd.DataFrame:
    """Rows from run_row(), newest first."""
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.iloc[::-1].reset_index(drop=True)


def run_choice_label(run_id: str, status: dict, spec: dict) -> str:
    """How a run reads in a dropdown: id · task · state · steps."""
    return f"{run_id} · {spec.get('task', '?')} · {status.get('state', '?')} · {status.get('steps_done', 0)} steps"


# --- configs -------------------------------------------------------------------------------------------------


def _show(v: Any) -> str:
    if isinstance(v, list):
        return "; ".join(_show(x) for x in v) or "(task's own)"
    if isinstance(v, dict) and "name" in v:  # a RewardSpec as a dict
        params = ",".join(f"{k}={p}" for k, p in (v.get("params") or {}).items())
        return f"{v['name']}:{v.get('weight', 1):g}" + (f",{params}" if params else "")
    return str(v)


def config_diff(specs: dict[str, dict]) -> pd.DataFrame:
    """Settings that differ between runs (one column per run); for a single run, those that differ from the
    defaults. Empty when all are the same."""
    if not specs:
        return pd.DataFrame({"setting": []})
    base = {"(default)": RunSpec().to_dict()} if len(specs) == 1 else {}
    cols = {**base, **specs}
    keys = list(next(iter(cols.values())).keys())
    for s in cols.values():
        keys += [k for k in s if k not in keys]
    rows = []
    for k in keys:
        shown = [_show(s.get(k, "–")) for s in cols.values()]
        if len(set(shown)) > 1:
            rows.append({"setting": k, **dict(zip(cols, shown, strict=True))})
    return pd.DataFrame(rows, columns=["setting", *cols])
