"""Compare tab: the base model and a run's tuned model answer the same prompts; scores side by side.

Held-out prompts (never trained on) or your own prompt; greedy or sampled decoding. The summary (per-reward means
with confidence intervals, wins/ties/losses) comes as a headline, a chart and a table, and the whole comparison as
CSV. A comparison runs in a child process with this server's time and memory limits (sandbox.py; the run's rewards
are visitor settings: a regex, a reward model) inside a queued event with a concurrency limit of 1: other visitors
see their place in the queue, and neither the server nor the training worker is held up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import ratings
from ..config import Limits
from ..errors import CompareError
from ..heldout import best_text
from ..housekeeping import download_folder
from ..recovery import task_for_run
from ..sandbox import run_limited
from ..stats import SUMMARY_COLUMNS
from ..store import list_runs, open_run
from . import plots, views
from .common import guarded

HELD_OUT, OWN = "held-out prompts", "my own prompt"


def run_choices() -> list[tuple[str, str]]:
    """Runs that have something to compare (a final adapter or a checkpoint), newest first."""
    out = []
    for run in reversed(list_runs()):
        if run.latest_weights() is None:
            continue
        try:
            out.append((views.run_choice_label(run.id, run.status(), run.spec.to_dict()), run.id))
        except Exception:  # a half-deleted or unreadable run is left out of the list, not an error
            continue
    return out


def adapter_for(run_id: str, weights: str = "last") -> Path:
    """The run's last weights, or the best by its held-out score during training (a clear error before they exist)."""
    return open_run(run_id).require_weights(weights or "last")


def comparison_rows(run_id: str, source: str, n: int, prompt: str, answer: str) -> list[dict] | None:
    """The prompts to compare on: the first n held-out prompts of the run's task, or the visitor's own prompt."""
    if source == OWN:
        if not (prompt or "").strip():
            raise CompareError("the prompt is empty: type a prompt, or choose held-out prompts")
        row = {"prompt": prompt.strip()}
        if (answer or "").strip():
            row["answer"] = answer.strip()  # rewards that check correctness read this column
        return [row]
    run = open_run(run_id)
    n = int(n or run.spec.eval_size)
    return None if n >= run.spec.eval_size else task_for_run(run).eval[:n]  # the run's own held-out rows


def run_comparison(run_id: str, source: str, n: int, prompt: str, answer: str, mode: str, seed: int,
                   max_new_tokens: int | None, progress: Callable[[float, str], None] | None = None,
                   weights: str = "last", limits: Limits | None = None):  # fmt: skip
    """Plain function behind the Compare button: returns an evaluate.Comparison, computed in a child process
    within this server's limits on prompts, tokens, time and memory (LimitExceeded / ConfigError say which)."""
    if not run_id:
        raise CompareError("no run chosen: pick a run that has a checkpoint or a final adapter")
    limits = limits or Limits.from_env()
    spec = open_run(run_id).spec
    tokens = int(max_new_tokens) if max_new_tokens else None
    limits.check_compare(1 if source == OWN else min(int(n or spec.eval_size), spec.eval_size),
                         tokens or spec.max_completion_length)  # fmt: skip
    adapter = adapter_for(run_id, weights)
    return run_limited(compare_in_child, run_id, str(adapter), source, n, prompt, answer, mode, int(seed or 0),
                       tokens, timeout_s=limits.compare_timeout_s, what="the comparison",
                       env="WORKBENCH_COMPARE_TIMEOUT_S", memory_mb=limits.sandbox_memory_mb,
                       progress=progress)  # fmt: skip


def compare_in_child(run_id: str, adapter: str, source: str, n: int, prompt: str, answer: str, mode: str, seed: int,
                     tokens: int | None, progress: Callable[[float, str], None] | None = None):  # fmt: skip
    """run_comparison's work, in the sandbox's child: the prompts, both models' answers, every reward and check."""
    from ..evaluate import compare  # imports torch: only when a comparison is asked for

    rows = comparison_rows(run_id, source, n, prompt, answer)
    return compare(run_id, Path(adapter), rows=rows, mode=decoding(mode), seed=seed, max_new_tokens=tokens,
                   progress=progress)  # fmt: skip


RUN_DECODING = "the run's"


def decoding(mode: str | None) -> str | None:
    """The decoding radio's choice as Compare's `mode`: None = the run's compare_mode (anything else unknown is
    refused by Compare with the modes it takes)."""
    return None if mode in (None, "", RUN_DECODING) else mode


LEVEL_LABEL = {"better": "Better", "hacked": "Reward hacking", "worse": "Worse", "mixed": "Mixed",
               "unclear": "No clear difference", "too few": "Too few prompts"}  # fmt: skip


def headline(verdict: dict, degenerate: dict[str, int], n_prompts: int) -> str:
    """The verdict (rewards *and* checks) in a sentence, its reasons, and the degenerate answers per side."""
    if not verdict:
        return ""
    label = LEVEL_LABEL.get(verdict["level"], verdict["level"])
    lines = [f"**{label}.** {views.esc(verdict['headline'])}"]
    lines += [f"- {views.esc(r)}" for r in verdict.get("reasons", [])[1:6]]
    lines.append(f"\nDegenerate answers: base **{degenerate.get('base', 0)}** of {n_prompts}, tuned "
                 f"**{degenerate.get('tuned', 0)}** of {n_prompts} (marked below).")  # fmt: skip
    return "\n".join(lines)


# Checks shown as chips beside each answer (the rest are in the table and the CSV)
CHIP_CHECKS = ("correct", "naturalness", "repetition", "words")


def pairs_html(table: pd.DataFrame, limit: int = 50, max_chars: int = 1500) -> str:
    """Each prompt, then base and tuned answers side by side with rewards and checks; the higher total is outlined
    and a degenerate answer is marked with the reason."""
    if table is None or table.empty:
        return '<div class="wb-empty">Answers appear here, base on the left, tuned on the right.</div>'
    rewards = [c[len("base/") :] for c in table.columns if c.startswith("base/")]
    checks = [c for c in CHIP_CHECKS if f"base:{c}" in table.columns]
    total = "total" if "total" in rewards else None
    parts = []
    for _, row in table.head(limit).iterrows():
        cells = []
        for side in ("base", "tuned"):
            other = "tuned" if side == "base" else "base"
            win = total and _gt(row.get(f"{side}/{total}"), row.get(f"{other}/{total}"))
            chips = "".join(f'<span class="wb-score">{views.esc(r)} {views.num(row.get(f"{side}/{r}"))}</span>'
                            for r in rewards)  # fmt: skip
            # a check named like a reward (repetition) says it is the check
            chips += "".join(f'<span class="wb-score wb-check">{c}{" check" * (c in rewards)} '
                             f'{views.num(row.get(f"{side}:{c}"))}</span>'
                             for c in checks if _finite(row.get(f"{side}:{c}")))  # fmt: skip
            why = str(row.get(f"{side}:degenerate_reason") or "")
            flag = f'<span class="wb-degenerate">degenerate: {views.esc(why)}</span>' if why else ""
            text = str(row.get(side, ""))
            text = text if len(text) <= max_chars else text[:max_chars] + " …"
            cls = " wb-win" if win else ""
            cls += " wb-bad" if why else ""
            cells.append(f'<div class="wb-answer{cls}"><h4>{side} {flag}</h4>'
                         f'<pre>{views.esc(text)}</pre><div class="wb-scores">{chips}</div></div>')  # fmt: skip
        parts.append(f'<div class="wb-qprompt">{views.esc(views.prompt_display(row.get("prompt")))}</div>'
                     f'<div class="wb-pair">{"".join(cells)}</div>')  # fmt: skip
    more = (
        f'<div class="wb-empty">… {len(table) - limit} more in the CSV.</div>' if len(table) > limit else ""
    )
    return "".join(parts) + more


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _gt(a: Any, b: Any) -> bool:
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b))
    return bool(ok and a > b)


def summary_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Rewards and checks (evaluate.Comparison.statistics), rounded for reading."""
    return stats.round(
        {c: 3 for c in ("base_mean", "tuned_mean", "diff", "ci_low", "ci_high") if c in stats.columns}
    )


def chart_frame(stats: pd.DataFrame) -> pd.DataFrame:
    """What the chart shows: the rewards and the checks on a 0–1-ish scale (lengths have their own columns)."""
    keep = stats[(stats["kind"] == "reward") | stats["name"].isin(["degenerate", "repetition", "naturalness",
                                                                     "correct"])]  # fmt: skip
    return keep.rename(columns={"name": "reward"})


def build_compare_tab(train: dict) -> dict[str, Any]:
    c: dict[str, Any] = {}
    gr.Markdown("Both models answer the same prompts with the same decoding; every reward of the run scores both. "
                "Held-out prompts were never trained on.")  # fmt: skip
    with gr.Row():
        # choices are filled per page when the tab opens; allow_custom_value lets an API call name any run id
        # (open_run checks it against the strict run id pattern)
        c["run"] = gr.Dropdown(
            label="run",
            choices=[],
            allow_custom_value=True,
            elem_id="wb-compare-run",
            scale=4,
            info="The run you are watching is chosen for you; any run with saved weights works.",
        )
        c["refresh"] = gr.Button("↻ Refresh", scale=0, min_width=110, size="sm")
    with gr.Row():
        c["source"] = gr.Radio([HELD_OUT, OWN], value=HELD_OUT, label="prompts", elem_id="wb-compare-source")
        c["n"] = gr.Slider(1, 100, value=8, step=1, label="how many held-out prompts",
                           info="Capped at the run's eval_size; fewer is faster on a CPU.")  # fmt: skip
        c["mode"] = gr.Radio(
            [RUN_DECODING, "greedy", "sampled"],
            value=RUN_DECODING,
            label="decoding",
            info="greedy: the most likely answer; sampled: at the run's temperature, seeded; the run's: its "
            "compare_mode (greedy unless its preset says otherwise).",
        )
        c["max_new_tokens"] = gr.Number(value=0, precision=0, minimum=0, label="max new tokens",
                                        info="0 = the run's max_completion_length.")  # fmt: skip
        c["seed"] = gr.Number(value=0, precision=0, label="seed", minimum=0)
        c["weights"] = gr.Radio(["last", "best"], value="last", label="weights", elem_id="wb-compare-weights",
                                info="last: the final adapter or latest checkpoint; best: the best held-out score "
                                "during training (the run's keep_best_by).")  # fmt: skip
    with gr.Row(visible=False) as own_row:
        c["prompt"] = gr.Textbox(label="your prompt", lines=3, scale=3, elem_id="wb-compare-prompt")
        c["answer"] = gr.Textbox(label="reference answer (optional; correctness rewards read it)", scale=2)
    c["go"] = gr.Button("Compare base and tuned", variant="primary", elem_id="wb-compare-go")
    c["headline"] = gr.Markdown(elem_id="wb-compare-headline")
    with gr.Row(equal_height=False):
        c["chart"] = gr.Plot(
            plots.summary_figure(None), show_label=False, elem_id="wb-compare-chart", scale=3
        )
        with gr.Column(scale=2):
            c["table"] = gr.Dataframe(pd.DataFrame(columns=["reward", *SUMMARY_COLUMNS]), label="rewards and checks (tuned − base, 95% CI)",
                                      interactive=False, elem_id="wb-compare-summary")  # fmt: skip
            c["csv"] = gr.File(label="download the comparison (CSV: per prompt, and the summary)", interactive=False,
                               file_count="multiple", height=90,
                               elem_id="wb-compare-csv")  # fmt: skip
    c["pairs"] = gr.HTML(pairs_html(None), elem_id="wb-compare-pairs")

    c["source"].change(lambda s: gr.update(visible=s == OWN), c["source"], own_row, api_visibility="private")

    @guarded(1, quiet=True)
    def refresh(current=None, watched=None):  # defaults: a script may call the API with no arguments
        choices = run_choices()
        ids = [v for _, v in choices]
        value = current if current in ids else watched if watched in ids else (ids[0] if ids else None)
        return gr.update(choices=choices, value=value)

    c["refresh"].click(refresh, [c["run"], train["watch"]], c["run"], api_name="compare_runs")
    c["tab_refresh"] = refresh

    @guarded(5)
    def go(run_id, source, n, prompt, answer, mode, seed, max_new_tokens, weights="last",
           progress=gr.Progress()):  # noqa: B008  # fmt: skip
        progress(0.0, desc="Loading the models…")
        result = run_comparison(run_id, source, n, prompt, answer, mode, seed, max_new_tokens,
                                progress=lambda f, msg: progress(f, desc=msg), weights=weights)  # fmt: skip
        out = download_folder("wb-compare-") / f"compare-{run_id}.csv"
        files = result.to_csv(out)
        doc, stats = result.to_dict(), result.statistics()
        ratings.save_comparison(doc)  # kept in the run, for the blind rating below
        best = open_run(run_id).best_info() if weights == "best" else None
        which = f"*Tuned = {views.esc(best_text(best))}.*\n\n" if best else ""
        return (which + headline(doc["verdict"], doc["degenerate"], len(result.table)),
                plots.summary_figure(chart_frame(stats)), summary_table(stats), [str(f) for f in files],
                pairs_html(result.table))  # fmt: skip

    c["go"].click(go, [c["run"], c["source"], c["n"], c["prompt"], c["answer"], c["mode"], c["seed"],
                       c["max_new_tokens"], c["weights"]], [c["headline"], c["chart"], c["table"], c["csv"], c["pairs"]],
                  api_name="compare", concurrency_limit=1, concurrency_id="compare")  # fmt: skip
    return c
