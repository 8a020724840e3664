"""What `workbench export RUN --trl DIR` adds from the run to the TRL folder (`trl_export.export_trl` writes the rest):

    preflight.json              the run's pre-flight report, when it has one
    stored_completions.jsonl    the run's stored completions: prompt (chat messages), completion, reference columns,
                                the workbench's score from each reward function and the total
    check_rewards.py            re-scores them with the reward functions train.py trains with: exit 0 when every
                                score matches the workbench's exactly, 1 (with the differences) otherwise

plus a "Before the big run" section in README.md. Why the check: the GPU machine installs its own workbench,
math-verify or reasoning-gym; a version that grades differently should show up in a second, not as a run that
optimised another reward. Scores compare at float32, the precision the engine keeps rewards in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..osutil import json_safe
from ..tasks import chat_messages
from .common import stored_steps
from .preflight import for_run

MAX_STORED = 4096  # completions written (the latest whole steps): enough to catch a grader that differs

CHECK_REWARDS_PY = '''\
"""Check that the reward functions train.py trains with give exactly the workbench's scores on the run's stored
completions (stored_completions.jsonl, written by `workbench export RUN --trl`), before spending GPU hours.

    python check_rewards.py          # exit 0: every score matches; exit 1: the differences are listed

REWARDS is read from train.py without importing it (train.py imports torch and TRL). Scores compare at float32,
the precision the workbench's engine keeps rewards in; totals within 1e-6.
"""

import ast
import json
import sys
from pathlib import Path

import numpy as np

from workbench.config import RewardSpec
from workbench.grpo.advantages import weighted_rewards
from workbench.rewards import build_rewards

HERE = Path(__file__).resolve().parent


def exported_rewards() -> list:
    """The REWARDS list of train.py, evaluated with RewardSpec as its only name."""
    for node in ast.parse((HERE / "train.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REWARDS" for t in node.targets):
            return eval(compile(ast.Expression(node.value), "train.py", "eval"), {"RewardSpec": RewardSpec})
    sys.exit("train.py has no REWARDS list")


def main() -> int:
    items = [json.loads(line) for line in (HERE / "stored_completions.jsonl").read_text().splitlines() if line]
    rewards = build_rewards(exported_rewards())
    names = [name for name, _, _ in rewards]
    stored = list(dict.fromkeys(k for it in items for k in it["rewards"]))
    if sorted(stored) != sorted(names):
        print(f"train.py rewards {names} differ from the run's {stored}: the check compares only the shared ones")
    columns = list(dict.fromkeys(k for it in items for k in it["columns"]))
    kwargs = {k: [it["columns"].get(k) for it in items] for k in columns}
    prompts = [it["prompt"] for it in items]
    completions = [[{"role": "assistant", "content": it["completion"]}] for it in items]
    per_func = np.full((len(items), len(rewards)), np.nan, dtype=np.float32)
    bad = []
    for j, (name, fn, _) in enumerate(rewards):
        for i, (it, v) in enumerate(zip(items, fn(prompts=prompts, completions=completions, **kwargs), strict=True)):
            per_func[i, j] = np.nan if v is None else v
            if name not in it["rewards"]:
                continue
            want = it["rewards"][name]
            got = None if v is None else np.float32(v)
            if (got is None) != (want is None) or (got is not None and got != np.float32(want)):
                bad.append(f"step {it['step']} group {it['group']} {name}: workbench {want}, here {v}"
                           f" ({it['completion'][:60]!r})")
    if sorted(stored) == sorted(names):
        totals = np.nan_to_num(weighted_rewards(per_func, np.asarray([w for *_, w in rewards], dtype=np.float32)))
        for it, t in zip(items, totals.tolist(), strict=True):
            if abs(t - it["reward"]) > 1e-6 * max(1.0, abs(it["reward"])):
                bad.append(f"step {it['step']} group {it['group']} total: workbench {it['reward']}, here {t}")
    if bad:
        print(f"{len(bad)} score(s) differ from the workbench's:")
        print("\\n".join("  " + b for b in bad[:20]))
        return 1
    print(f"ok: {len(items)} completions x {len(names)} reward functions give exactly the workbench's scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def stored_items(run: Any, task: Any, limit: int = MAX_STORED) -> list[dict]:
    """The run's stored completions with what a reward function needs, the latest whole steps up to `limit`.
    Steps whose prompts no longer match the task (its file changed) are left out: their columns are unknown."""
    system = task.system_prompt_for(run.spec)
    steps = []
    for step, rows, eps, matched in stored_steps(run, task):
        if not matched:
            continue
        steps.append([{"step": step, "group": e["group"], "prompt": chat_messages(rows[e["group"]], system),
                       "completion": e["completion"],
                       "columns": {k: rows[e["group"]].get(k) for k in task.columns},
                       "rewards": e["rewards"], "reward": e["reward"]} for e in eps])  # fmt: skip
    out: list[dict] = []
    for items in reversed(steps):
        if out and len(out) + len(items) > limit:
            break
        out = items + out
    return out


def add_run_files(run: Any, task: Any, out_dir: Path) -> dict[str, Any]:
    """Write the run's pre-flight report, stored completions and check_rewards.py into an exported TRL folder."""
    out = Path(out_dir)
    written: dict[str, Any] = {}
    pre = for_run(run)
    if pre is not None:
        (out / "preflight.json").write_text(
            json.dumps(pre, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        written["preflight"] = str(out / "preflight.json")
    items = stored_items(run, task)
    lines = [json.dumps(json_safe(it), ensure_ascii=False) for it in items]
    (out / "stored_completions.jsonl").write_text(
        "\n".join(lines) + ("\n" if lines else ""), encoding="utf-8"
    )
    (out / "check_rewards.py").write_text(CHECK_REWARDS_PY, encoding="utf-8")
    written["stored_completions"] = len(items)
    with open(out / "README.md", "a", encoding="utf-8") as f:
        f.write(readme_section(run.id, pre, len(items)))
    return written


def readme_section(run_id: str, pre: dict | None, n: int) -> str:
    flags = (pre or {}).get("flags") or []
    if pre is None:
        about = ("No pre-flight report: `workbench preflight --config run_spec.json` samples the base model with "
                 "these settings and tries answers that game the rewards, in well under a minute.")  # fmt: skip
    else:
        about = (f"`preflight.json`: the pre-flight report of these settings ({pre['prompts']} prompts x "
                 f"{pre['group_size']} answers of the base model, the exploit battery), with {len(flags)} flag(s)"
                 + (":\n" + "\n".join(f"  - {f['text']}" for f in flags) if flags else "."))  # fmt: skip
    return f"""
## Before the big run

- {about}
- `python check_rewards.py`: re-scores the {n} completions run {run_id} stored (`stored_completions.jsonl`) with the
  reward functions `train.py` trains with, and checks they give exactly the workbench's scores. Run it where the
  big run will run, after installing the packages.
- The checks: `train.py` logs `checks/degenerate`, `checks/repetition`, `checks/correct` and `checks/words` on the
  training batches and `eval_checks/...` on `eval.jsonl` every `eval_steps` steps (`--eval_strategy no` turns the
  evaluation off). A reward that climbs while `degenerate` climbs too is being gamed.
"""
