"""Replay: re-score the completions a run already stored with another reward set, with no generation, and show what
training would have done differently.

    workbench replay RUN --reward 'length:1,target=20' --reward 'contains_answer:2' [--json]
    doc = replay(open_run(run_id), [RewardSpec("length", 1.0, {"target": 20})])

Every stored step is re-scored (`common.score_texts`, as the engine scores) with the task rows it was sampled from
(`common.stored_steps`); new totals and group advantages come from `grpo.advantages`, the engine's own formulas,
with the run's scale_rewards. The report: old and new mean totals (overall and per step), the share of groups with
no spread, every completion that flips from pushed up (advantage > 0) to pushed down or the reverse, and the rank
correlation (Spearman) between old and new advantages, pooled and within groups. Replaying with the run's own
rewards reproduces its stored totals and advantages exactly (no flips, correlation 1).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..config import RewardSpec
from ..grpo.advantages import group_advantages, weighted_rewards
from ..recovery import task_for_run
from ..rewards import build_rewards
from ..tasks import chat_messages
from .common import fmt, score_texts, spearman, stored_steps, weights_of

PUSH = 1e-6  # an advantage within this of 0 pushes nothing (a group without spread)
MAX_FLIPS = 200  # flipped completions listed in the report (all are counted)


def direction(a: float) -> str:
    return "up" if a > PUSH else "down" if a < -PUSH else "none"


def replay(
    run: Any, specs: list[RewardSpec], steps: list[int] | None = None, task: Any = None
) -> dict[str, Any]:
    """Re-score `run`'s stored completions with `specs`; the report described in the module docstring."""
    t0 = time.perf_counter()
    spec = run.spec
    task = task or task_for_run(run)  # the run's own copy of its rows, when it has one
    old_specs = task.rewards_for(spec)
    rewards = build_rewards(specs)
    names, weights = [n for n, _, _ in rewards], weights_of(rewards)
    system, G = task.system_prompt_for(spec), spec.num_generations
    old_t, new_t, old_a, new_a, per_step, flips, new_funcs, old_funcs = [], [], [], [], [], [], [], []
    group_rho, unmatched, skipped = [], [], []
    for step, rows, eps, matched in stored_steps(run, task, steps):
        if len(eps) % G or len(rows) * G != len(eps):
            skipped.append(step)  # not whole groups of G: nothing to compare advantages on
            continue
        if not matched:
            unmatched.append(step)
        per = score_texts(rewards, [chat_messages(rows[e["group"]], system) for e in eps],
                          [e["completion"] for e in eps], [rows[e["group"]] for e in eps], task.columns)  # fmt: skip
        total = weighted_rewards(per, weights)  # (N,) float32, as the engine totals
        adv, zero = group_advantages(total, G, spec.scale_rewards)
        ot = np.asarray([np.nan if e["reward"] is None else e["reward"] for e in eps], dtype=np.float64)
        oa = np.asarray([e["advantage"] or 0.0 for e in eps], dtype=np.float64)
        _, old_zero = group_advantages(ot, G, spec.scale_rewards)
        for g in range(len(rows)):
            sl = slice(g * G, (g + 1) * G)
            rho = spearman(oa[sl], adv[sl])
            if rho is not None:
                group_rho.append(rho)
        n_flip = 0
        for i, e in enumerate(eps):
            a, b = direction(oa[i]), direction(float(adv[i]))
            if a != b and "none" not in (a, b):
                n_flip += 1
                flips.append({"step": step, "group": e["group"], "prompt": e["prompt"], "completion": e["completion"],
                              "from": a, "to": b, "old_reward": _f(ot[i]), "new_reward": _f(total[i]),
                              "old_advantage": float(oa[i]), "new_advantage": float(adv[i]),
                              "new_rewards": {n: _f(v) for n, v in zip(names, per[i], strict=True)}})  # fmt: skip
        per_step.append({"step": step, "old_reward": _mean(ot), "new_reward": _mean(total),
                         "old_zero_spread": float(old_zero.mean()), "new_zero_spread": float(zero.mean()),
                         "flips": n_flip})  # fmt: skip
        for acc, x in ((old_t, ot), (new_t, total), (old_a, oa), (new_a, adv), (new_funcs, per)):
            acc.append(np.asarray(x, dtype=np.float64))
        old_funcs += [e["rewards"] for e in eps]
    if not per_step:
        raise ValueError(f"run {run.id} has no stored steps to replay: it must train at least one step first")
    ot, nt, oa, na = (np.concatenate(x) for x in (old_t, new_t, old_a, new_a))
    nf = np.concatenate(new_funcs)
    dirs = [(direction(a), direction(b)) for a, b in zip(oa, na, strict=True)]
    count = {k: sum(1 for d in dirs if d == k) for k in
             [("up", "down"), ("down", "up"), ("up", "none"), ("down", "none"), ("none", "up"), ("none", "down")]}  # fmt: skip
    flips.sort(key=lambda f: -abs(f["new_advantage"] - f["old_advantage"]))
    old_names = list(dict.fromkeys(k for r in old_funcs for k in r))
    doc = {
        "kind": "replay",
        "run_id": run.id,
        "old_rewards": [str(s) for s in old_specs],
        "new_rewards": [str(s) for s in specs],
        "steps": len(per_step),
        "completions": int(ot.size),
        "groups": int(ot.size // G),
        "group_size": G,
        "old_reward": _mean(ot),
        "new_reward": _mean(nt),
        "old_per_reward": {n: _mean([r.get(n) for r in old_funcs]) for n in old_names},
        "new_per_reward": {n: _mean(nf[:, j]) for j, n in enumerate(names)},
        "old_zero_spread": float(np.mean([s["old_zero_spread"] for s in per_step])),
        "new_zero_spread": float(np.mean([s["new_zero_spread"] for s in per_step])),
        "changed_totals": float(
            np.mean(~np.isclose(np.nan_to_num(ot), np.nan_to_num(nt), rtol=0, atol=1e-6))
        ),
        "flips": {
            "up_to_down": count[("up", "down")],
            "down_to_up": count[("down", "up")],
            "lost_push": count[("up", "none")] + count[("down", "none")],
            "gained_push": count[("none", "up")] + count[("none", "down")],
        },  # fmt: skip
        "rank_correlation": spearman(oa, na),
        "group_rank_correlation": float(np.mean(group_rho)) if group_rho else None,
        "per_step": per_step,
        "flipped": flips[:MAX_FLIPS],
        "notes": _notes(unmatched, skipped),
        "seconds": time.perf_counter() - t0,
    }
    return doc


def _notes(unmatched: list[int], skipped: list[int]) -> list[str]:
    out = []
    if unmatched:
        out.append(f"{len(unmatched)} step(s) (first: {unmatched[0]}) no longer match the task's prompts (its file "
                   "changed?): they were re-scored without reference columns")  # fmt: skip
    if skipped:
        out.append(
            f"{len(skipped)} step(s) (first: {skipped[0]}) did not hold whole groups and were left out"
        )
    return out


def _f(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _mean(values: Any) -> float | None:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def replay_text(doc: dict[str, Any], examples: int = 5) -> str:
    """The report as a few lines for a terminal."""
    f = doc["flips"]
    n = doc["completions"]
    lines = [
        f"replayed run {doc['run_id']}: {doc['steps']} steps, {n} completions in {doc['groups']} groups of "
        f"{doc['group_size']}, in {doc['seconds']:.1f} s (no generation)",
        f"  old rewards: {' + '.join(doc['old_rewards'])}",
        f"  new rewards: {' + '.join(doc['new_rewards'])}",
        f"  mean total reward {fmt(doc['old_reward'])} -> {fmt(doc['new_reward'])}; {doc['changed_totals']:.0%} of "
        "totals changed",
        f"  groups with no spread (no learning signal) {doc['old_zero_spread']:.0%} -> {doc['new_zero_spread']:.0%}",
        f"  flips: {f['up_to_down']} of {n} completions go from pushed up to pushed down, {f['down_to_up']} the "
        f"reverse; {f['lost_push']} lose their push, {f['gained_push']} gain one",
        f"  rank correlation of old and new advantages: {fmt(doc['rank_correlation'], '.2f')} pooled, "
        f"{fmt(doc['group_rank_correlation'], '.2f')} within groups (mean)",
        "  new per-reward means: " + ", ".join(f"{k} {fmt(v)}" for k, v in doc["new_per_reward"].items()),
    ]
    for x in doc["flipped"][:examples]:
        lines.append(f"  step {x['step']} group {x['group']}: {x['from']} -> {x['to']} (advantage "
                     f"{x['old_advantage']:+.2f} -> {x['new_advantage']:+.2f}) {x['completion'][:90]!r}")  # fmt: skip
    lines += [f"  note: {t}" for t in doc["notes"]]
    return "\n".join(lines)
