"""Following a run from the terminal: progress lines until it ends (Ctrl-C stops it, twice kills it), and the
result every run command returns. Used by `workbench train / resume` (cli.py) and the A/B's train (cli_ab.py).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

# Results a command returns: (exit code, the JSON document, the text printed without --json).
Result = tuple[int, Any, str]


def fmt_secs(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_num(x: Any, spec: str = ".3f") -> str:
    """A metric for a terminal line: formatted with `spec`, or "-" when missing or not finite."""
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


# --- following a run ----------------------------------------------------------------------------------------
def follow(run_id: str, since: int = 0) -> Result:
    """Print progress until the run ends; Ctrl-C asks it to stop after the step, a second Ctrl-C kills it."""
    from . import runner
    from .store import TERMINAL, open_run

    run = open_run(run_id)
    print(f"run {run.id} stored in {run.dir}", flush=True)
    last, said, ctrl_c, times = since, None, 0, []
    while True:
        try:
            st = run.status()
            now = (st["state"], st.get("reason"))
            if now != said and st["state"] not in TERMINAL:
                print(f"{st['state']}" + (f": {st['reason']}" if st.get("reason") else ""), flush=True)
                said = now
            for m in run.metrics(since_step=last):
                last = m["step"]
                times.append(m.get("step_time") or 0.0)
                avg = sum(times[-5:]) / len(times[-5:])
                print(
                    f"step {last:>4}/{st['max_steps']}  reward {fmt_num(m.get('reward'))} "
                    f"(std {fmt_num(m.get('reward_std'))})  length {fmt_num(m.get('completions/mean_length'), '.1f')}  "
                    f"{avg:.1f} s/step  ETA {fmt_secs(avg * (st['max_steps'] - last))}",
                    flush=True,
                )
            if st["state"] in TERMINAL:
                break
            time.sleep(0.5)
        except KeyboardInterrupt:
            ctrl_c += 1
            if ctrl_c == 1:
                runner.stop_run(run_id)
                print("stopping after the current step (Ctrl-C again to kill the worker)", flush=True)
            else:
                runner.kill_run(run_id)
    return run_result(run)


def reason_text(run_id: str, st: dict) -> str:
    """A run's stored reason in the CLI's words: a run that can go on says which command continues it."""
    from .store import RESUMABLE

    reason = st.get("reason") or ""
    if st.get("resumable", st.get("state") in RESUMABLE):
        reason += ("; " if reason else "") + f"continue it with `workbench resume {run_id}`"
    return reason


def run_result(run) -> Result:
    from .store import FAILED

    st = run.status()
    reason = reason_text(run.id, st)
    doc = {
        "run_id": run.id,
        "dir": str(run.dir),
        "status": st["state"],
        "reason": reason or None,
        "steps_done": st["steps_done"],
        "max_steps": st["max_steps"],
        "final_metrics": run.last_metrics(),
        "adapter": str(run.final_adapter()) if run.final_adapter() else None,
    }
    text = f"{st['state']}: {st['steps_done']}/{st['max_steps']} steps" + (f" ({reason})" if reason else "")
    if doc["adapter"]:
        text += f"\nadapter: {doc['adapter']}\ncompare with the base model: workbench compare {run.id}"
    if st["state"] in FAILED:
        print(f"error: run {run.id} {st['state']}: {reason}", file=sys.stderr)
        return 2, doc, text
    return 0, doc, text
