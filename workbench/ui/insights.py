"""What a practitioner reads off a step: its groups as HTML, warnings about the run, and the advantage worked out.

Pure functions over the store's plain records: `episodes` are dicts {group, prompt, completion, rewards, reward,
advantage, length, truncated}; `metrics` a DataFrame with one row per step (TRL's metric names). All text from
prompts and completions is escaped before it becomes HTML.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, median

import pandas as pd

from ..grpo.advantages import group_advantages, nanmean, nanstd
from ..verdict import heldout_warnings
from .plots import reward_names
from .views import esc, num, prompt_display


def by_group(episodes: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = defaultdict(list)
    for e in episodes:
        groups[int(e.get("group", 0))].append(e)
    return dict(sorted(groups.items()))


def _adv_colour(a: float | None, scale: float) -> str:
    """Green for better than the group, red for worse, stronger the further from the mean."""
    if a is None or not math.isfinite(a) or scale <= 0:
        return "transparent"
    alpha = 0.08 + 0.32 * min(abs(a) / scale, 1.0)
    return (
        f"rgba(5,150,105,{alpha:.2f})"
        if a > 0
        else f"rgba(220,38,38,{alpha:.2f})"
        if a < 0
        else "transparent"
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def groups_html(episodes: list[dict], step: int | None = None, cap: int | None = None, max_groups: int = 8,
                max_chars: int = 700) -> str:  # fmt: skip
    """The step's groups: each prompt with its G completions, each completion's rewards and advantage, rows
    coloured by advantage and sorted best first, so 'better than its siblings' is visible at a glance."""
    if not episodes:
        return '<div class="wb-empty">The latest step\'s groups appear here: each prompt with its completions.</div>'
    groups = by_group(episodes)
    names = list(dict.fromkeys(k for e in episodes for k in (e.get("rewards") or {})))
    scale = max((abs(e["advantage"]) for e in episodes if _finite(e.get("advantage"))), default=1.0) or 1.0
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    parts = [f'<div class="wb-groups-title">Step {esc(step)} · {len(groups)} groups × '
             f'{len(next(iter(groups.values())))} completions. Green rows were better than their group, red '
             "worse; the advantage is what the update multiplies.</div>"]  # fmt: skip
    for g, eps in list(groups.items())[:max_groups]:
        rewards = [e["reward"] for e in eps if _finite(e.get("reward"))]
        spread = ""
        if rewards:
            m, s = mean(rewards), float(nanstd(rewards))  # a single scored completion has no std
            flat = "" if s > 1e-9 else ' <span class="wb-flag">no spread: teaches nothing</span>'
            spread = f"mean {m:.3f} · std {num(s)}{flat}"
        rows = []
        for i, e in sorted(enumerate(eps), key=lambda ie: -(ie[1].get("reward") or -math.inf)):
            cut = ' <span class="wb-flag">hit the cap</span>' if e.get("truncated") else ""
            cells = "".join(f"<td class='wb-num'>{num((e.get('rewards') or {}).get(n))}</td>" for n in names)
            rows.append(
                f'<tr style="background:{_adv_colour(e.get("advantage"), scale)}"><td class="wb-num">{i + 1}</td>'
                f'<td class="wb-completion">{esc(_clip(str(e.get("completion", "")), max_chars))}{cut}</td>{cells}'
                f'<td class="wb-num"><b>{num(e.get("reward"))}</b></td>'
                f'<td class="wb-num"><b>{num(e.get("advantage"), "+.2f")}</b></td>'
                f'<td class="wb-num">{esc(e.get("length", ""))}</td></tr>'
            )
        parts.append(
            f'<details class="wb-group" open><summary><span class="wb-tag">group {g + 1}</span>'
            f'<span class="wb-prompt">{esc(_clip(prompt_display(eps[0].get("prompt")), 400))}</span>'
            f'<span class="wb-gstats">{spread}</span></summary>'
            f'<table class="wb-table"><thead><tr><th>#</th><th>completion</th>{head}<th>total</th>'
            f"<th>advantage</th><th>tokens</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
        )
    if len(groups) > max_groups:
        parts.append(f'<div class="wb-empty">… and {len(groups) - max_groups} more groups.</div>')
    return f'<div class="wb-groups">{"".join(parts)}</div>'


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- warnings ------------------------------------------------------------------------------------------------


def run_warnings(df: pd.DataFrame, cap: int | None = None, window: int = 10, evals: list[dict] | None = None) -> list[str]:  # fmt: skip
    """Things a practitioner would want pointed out, each with what to change. Empty when all looks normal.
    `evals` (the store's held-out evaluations) add the warning of held-out answers getting worse (`verdict`)."""
    if df is None or df.empty:
        return []
    out: list[str] = []
    last = df.iloc[-1]
    step = int(last["step"])
    zero = last.get("frac_reward_zero_std")
    if _finite(zero) and zero >= 0.5:
        recent = df["frac_reward_zero_std"].tail(3)
        lasting = len(recent) == 3 and (recent >= 0.999).all()
        out.append(
            ("No learning signal for 3 steps: every group's completions got the same reward. " if lasting else
             f"{zero:.0%} of the groups in step {step} gave every completion the same reward, so they teach "
             "nothing. ")
            + "Raise temperature or num_generations, or use a reward with finer steps (partial credit)."
        )  # fmt: skip
    clipped = last.get("completions/clipped_ratio")
    if _finite(clipped) and clipped >= 0.25:
        at = f"max_completion_length={cap}" if cap else "max_completion_length"
        out.append(
            f"{clipped:.0%} of the completions in step {step} hit {at}: their rewards judge unfinished answers. "
            "Raise max_completion_length, or reward shorter answers."
        )
    if "kl" in df and df["kl"].notna().sum() >= 4:
        kl = df["kl"].dropna()
        before, now = float(median(kl.iloc[:-1].tail(window))), float(kl.iloc[-1])
        if now > 0.01 and now > 3 * before + 0.005:
            out.append(
                f"KL jumped to {now:.3f} at step {step} (it was around {before:.3f}): the policy is moving away "
                "from the base model fast. Lower learning_rate, or raise beta to hold it closer."
            )
    out += _tradeoffs(df, window)
    out += heldout_warnings(df.to_dict("records"), evals or [])
    for col in ("loss", "reward"):
        # NaN is stored as null: flag it when the metric is normally logged (a finite value earlier)
        if col in df and not _finite(last.get(col)) and df[col].iloc[:-1].notna().any():
            out.append(f"The {col} of step {step} is not a finite number: lower learning_rate, and check that "
                       "the reward functions return finite numbers.")  # fmt: skip
    return out


def _tradeoffs(df: pd.DataFrame, window: int, threshold: float = 0.05) -> list[str]:
    """A reward rising while another falls over the last `window` steps (compares the window's two halves)."""
    names = reward_names(df)
    if len(names) < 2 or len(df) < 6:
        return []
    tail = df.tail(window)
    half = len(tail) // 2
    change = {}
    for n in names:
        col = tail[f"rewards/{n}/mean"].astype(float)
        a, b = col.iloc[:half].mean(), col.iloc[half:].mean()
        if math.isfinite(a) and math.isfinite(b):
            change[n] = b - a
    up = [n for n, d in change.items() if d > threshold]
    down = [n for n, d in change.items() if d < -threshold]
    if not (up and down):
        return []
    u = max(up, key=lambda n: change[n])
    d = min(down, key=lambda n: change[n])
    return [
        f"'{u}' is rising ({change[u]:+.2f} over the last {len(tail)} steps) while '{d}' falls ({change[d]:+.2f}): "
        f"the model may be trading one for the other. Check the weights, or whether '{u}' can be gamed."
    ]


def heldout_answers_html(answers: list[dict], step: int | None = None, cost: float | None = None,
                         max_chars: int = 500) -> str:  # fmt: skip
    """The held-out answers of the latest evaluation during training: each prompt, the policy's greedy answer, its
    reference, and marks for degenerate and (in)correct answers, so the numbers on the curve can be read."""
    if not answers:
        return ('<div class="wb-empty">The held-out answers appear here after each evaluation (step 0, then every '
                "eval_every steps).</div>")  # fmt: skip
    rows = []
    for i, a in enumerate(answers):
        why = a.get("degenerate_reason") or ""
        flag = f'<span class="wb-degenerate">degenerate: {esc(why)}</span>' if why else ""
        ok = {1.0: "✓", 0.0: "✗"}.get(a.get("correct"), "–")
        cut = ' <span class="wb-flag">hit the cap</span>' if a.get("truncated") else ""
        rows.append(
            f'<tr><td class="wb-num">{i + 1}</td><td>{esc(_clip(prompt_display(a.get("prompt")), 300))}</td>'
            f'<td class="wb-completion">{esc(_clip(str(a.get("answer", "")), max_chars))}{cut} {flag}</td>'
            f"<td>{esc(a.get('reference') or '–')}</td><td class='wb-num'>{ok}</td>"
            f"<td class='wb-num'>{num(a.get('reward'))}</td><td class='wb-num'>{num(a.get('naturalness'), '.2f')}</td></tr>"
        )
    bad = sum(1 for a in answers if a.get("degenerate_reason"))
    spent = f" Evaluating has cost {cost:.1%} of the training time so far." if _finite(cost) else ""
    return (f'<div class="wb-groups"><div class="wb-groups-title">Held-out answers at step {esc(step)} (greedy, never '
            f"trained on): {bad} of {len(answers)} degenerate.{spent}</div><table class='wb-table'><thead><tr><th>#</th>"
            "<th>prompt</th><th>answer</th><th>reference</th><th>correct</th><th>reward</th><th>naturalness</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip


def warnings_html(items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{esc(w)}</li>" for w in items)
    return f'<div class="wb-warnings"><div class="wb-warnings-title">Worth a look</div><ul>{lis}</ul></div>'


# --- the advantage, worked out -------------------------------------------------------------------------------


def advantage_table(episodes: list[dict], group: int, scale_rewards: str = "group") -> pd.DataFrame:
    """One group's completions, its advantages worked out again from the stored rewards next to the engine's values.

    A_i = (r_i − mean(r)) / (std(r) + 1e-4), std over the group ("group"), over the whole step ("batch"), or no
    division ("none"): `grpo.advantages.group_advantages`, the formula the engine trains with, on the step's rewards
    (every group of a step has the same size)."""
    groups = by_group(episodes)
    eps = groups.get(group, [])
    if not eps:
        return pd.DataFrame()
    step = [e for g in groups.values() for e in g]  # group by group, as the engine lays them out
    rewards = [float(e["reward"]) if _finite(e.get("reward")) else math.nan for e in step]
    adv, _ = group_advantages(rewards, len(eps), scale_rewards)
    first = sum(len(g) for k, g in groups.items() if k < group)
    rewards, adv = rewards[first : first + len(eps)], adv[first : first + len(eps)].tolist()
    m = float(nanmean(rewards))
    rows = []
    for i, (e, r, a) in enumerate(zip(eps, rewards, adv, strict=True)):
        rows.append({
            "#": i + 1,
            "completion": _clip(str(e.get("completion", "")), 160),
            "reward r": r,
            "r − mean": r - m,
            "advantage (computed here)": a,
            "advantage (engine)": e.get("advantage"),
        })  # fmt: skip
    return pd.DataFrame(rows)
