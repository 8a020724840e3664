"""Learn tab: GRPO for a newcomer, in a few paragraphs, then the group-relative advantage worked out on a real group
from the current (or last) run, next to the value the engine used.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from ..grpo.advantages import nanstd
from ..store import list_runs, open_run
from . import insights, plots, views
from .common import guarded

EXAMPLE = [  # a made-up group, shown before any run has produced one
    {"group": 0, "prompt": "What is the capital of France?", "completion": "Paris.", "reward": 1.0},
    {"group": 0, "prompt": "What is the capital of France?", "completion": "The capital of France is Paris, a city "
     "on the Seine known for the Eiffel Tower.", "reward": 0.4},
    {"group": 0, "prompt": "What is the capital of France?", "completion": "Lyon.", "reward": 0.0},
    {"group": 0, "prompt": "What is the capital of France?", "completion": "It is Paris.", "reward": 0.9},
]  # fmt: skip

INTRO = r"""
### Reinforcement learning, in the words GRPO uses

* The **agent** is the language model. Its **policy** is what it does: the probability it gives each next token.
* The **environment** hands it a **prompt** (a question, an instruction) and judges what comes back.
* An **action** is a whole completion: the tokens the model samples in answer to the prompt.
* The **reward** is a number for that completion, from plain functions: is the answer right, is it short enough,
  does it follow the format. No human has to rate anything while it trains.

Training makes completions with high reward more likely and those with low reward less likely.

### What makes GRPO *group relative*

For each prompt the model samples a **group** of G completions. Each completion's **advantage** is how much better
it did than its siblings:

<span class="wb-learn-formula">A<sub>i</sub> = (r<sub>i</sub> − mean(r)) / (std(r) + 10⁻⁴)</span>

The update pushes up the probability of every token of a completion with A > 0 and pushes down those with A < 0,
in proportion to A (with PPO's clipping, so one step cannot move the policy too far).

**Why no value model?** PPO trains a second network, a critic, to predict the expected reward of a prompt so it
knows what "better than expected" means. GRPO gets that baseline for free: the group's mean reward *is* the
expected reward of this prompt under the current policy. One model less to train and to hold in memory.

**Why no preference pairs?** DPO and RLHF reward models learn from people choosing the better of two answers.
GRPO only needs a number per completion, which a function can compute; the comparison happens inside the group.

**What it cannot learn from:** a group whose completions all get the same reward has zero advantage everywhere
(the `frac_reward_zero_std` curve counts them). Rewards with partial credit, more completions per prompt or a
higher temperature give it more to work with.
"""


def latest_group_source(run_id: str | None) -> tuple[str | None, int | None, list[dict], str]:
    """(run id, step, episodes of that step, scale_rewards) from the given run, else the newest run with a step."""
    candidates = ([run_id] if run_id else []) + [r.id for r in reversed(list_runs())]
    for rid in candidates:
        try:
            run = open_run(rid)
            eps = run.episodes()
        except Exception:  # a run being deleted or without a database yet: try the next one
            continue
        if eps:
            return rid, eps[0].get("step"), eps, run.spec.scale_rewards
    return None, None, [], "group"


def group_view(run_id: str | None, group: int) -> tuple[str, pd.DataFrame, Any, list[int]]:
    """Caption, worked-out table, chart and the available group numbers for the Learn tab."""
    rid, step, eps, scale = latest_group_source(run_id)
    if not eps:
        eps, scale = EXAMPLE, "group"
        caption = "No run has produced a group yet, so here is a made-up one. Launch a run and come back."
    else:
        caption = (
            f"Run **{rid}**, step **{step}**: a real group, as the engine saw it (scale_rewards = `{scale}`)."
        )
    groups = sorted(insights.by_group(eps))
    group = group if group in groups else groups[0]
    table = insights.advantage_table(eps, group, scale)
    chosen = insights.by_group(eps)[group]
    prompt = views.prompt_display(chosen[0].get("prompt"))
    caption += f"\n\n**Prompt:** {prompt[:300]}"
    rewards = table["reward r"].tolist()
    finite = [r for r in rewards if r == r]  # NaN rewards (a failed reward) are left out of the statistics
    if len(finite) > 1:
        m, sd = sum(finite) / len(finite), float(nanstd(finite))
        caption += (f"\n\nGroup mean = **{m:.3f}**, std = **{sd:.3f}** (n − 1 in the denominator, as torch and TRL), "
                    f"so A = (r − {m:.3f}) / ({sd:.3f} + 0.0001).")  # fmt: skip
    fig = plots.advantage_figure(rewards, table["advantage (computed here)"].tolist())
    engine = table["advantage (engine)"]
    if engine.notna().any():
        gap = (engine - table["advantage (computed here)"]).abs().max()
        caption += ("\n\n✓ The advantages computed here match the engine's." if gap < 1e-3 else
                    f"\n\nThe engine's advantages differ from this formula by up to {gap:.3f} (its settings, e.g. "
                    "scale_rewards or a KL term, change them).")  # fmt: skip
    return caption, table.round(3), fig, groups


def build_learn_tab(train: dict) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            gr.Markdown(INTRO)
        with gr.Column(scale=6):
            gr.Markdown("### The advantage, worked out on a real group")
            with gr.Row():
                # choices follow the step shown; allow_custom_value lets an API call ask for any group number
                c["group"] = gr.Dropdown(label="group", choices=[1], value=1, allow_custom_value=True, scale=2,
                                         elem_id="wb-learn-group")  # fmt: skip
                c["refresh"] = gr.Button("↻ Latest step", scale=1, min_width=120, size="sm")
            c["caption"] = gr.Markdown(elem_id="wb-learn-caption")
            c["chart"] = gr.Plot(plots.advantage_figure([], []), show_label=False, elem_id="wb-learn-chart")
            c["table"] = gr.Dataframe(interactive=False, wrap=True, elem_id="wb-learn-table")

    @guarded(4, quiet=True)
    def show(run_id, group):
        caption, table, fig, groups = group_view(run_id, int(group or 1) - 1)
        return caption, table, fig, gr.update(choices=[g + 1 for g in groups])

    outs = [c["caption"], c["table"], c["chart"], c["group"]]
    c["group"].input(show, [train["watch"], c["group"]], outs, api_visibility="private")
    c["refresh"].click(show, [train["watch"], c["group"]], outs, api_name="learn_group")
    c["tab_refresh"] = show
    return c
