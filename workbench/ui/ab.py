"""Compare tab, A/B section: the base model and 2 to 4 tuned models on the same prompts, ranked by the checks.

Pick an experiment (launched with "Add variant" on the Train tab, or `workbench train --variant`) or any 2 to 4
runs of one model and task. It uses the tab's prompt, decoding and weights settings. One comparison
(workbench/compare_many.py) runs in a child process within this server's limits, as the 2-way one does: the base
answers once, every tuned model after it. Shown: the ranking with its rule, each variant's verdict against the
base, the pairs of variants, the answers side by side in columns, and the CSV files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from ..ab_stats import RANKING_RULE
from ..config import Limits
from ..errors import CompareError
from ..experiments import list_experiments
from ..housekeeping import download_folder
from ..sandbox import run_limited
from ..store import open_run
from . import compare as two_way  # the 2-way section's prompt rows, run list and decoding
from . import views
from .common import guarded

RANK_COLUMNS = ["rank", "variant", "verdict", "correct", "degenerate", "naturalness", "repetition", "words",
                "own_reward_diff", "ahead_of_next"]  # fmt: skip


# --- plain functions (tested without a server) ---------------------------------------------------------------
def experiment_choices() -> list[tuple[str, str]]:
    """Experiments, newest first, labelled by their variants."""
    return [(f"{e.id}: {' vs '.join(e.runs)}", e.id) for e in reversed(list_experiments())]


def run_ab(ids: list[str], source: str, n: int, prompt: str, answer: str, mode: str, seed: int,
           max_new_tokens: int | None, progress: Callable[[float, str], None] | None = None, weights: str = "last",
           limits: Limits | None = None):  # fmt: skip
    """Plain function behind the A/B button: a compare_many.MultiComparison, computed in a child process within
    this server's limits (a comparison's time limit stretched by the number of models it runs)."""
    from ..compare_many import runs_to_compare

    runs = runs_to_compare([i for i in ids or [] if i])
    limits = limits or Limits.from_env()
    spec = open_run(next(iter(runs.values()))).spec
    tokens = int(max_new_tokens) if max_new_tokens else None
    limits.check_compare(1 if source == two_way.OWN else min(int(n or spec.eval_size), spec.eval_size),
                         tokens or spec.max_completion_length)  # fmt: skip
    for rid in runs.values():
        open_run(rid).require_weights(weights or "last")  # a clear error before any child starts
    timeout = None if limits.compare_timeout_s is None else limits.compare_timeout_s * (1 + len(runs)) / 2
    return run_limited(ab_in_child, runs, source, n, prompt, answer, mode, int(seed or 0), tokens, weights or "last",
                       timeout_s=timeout, what="the A/B comparison", env="WORKBENCH_COMPARE_TIMEOUT_S",
                       memory_mb=limits.sandbox_memory_mb, progress=progress)  # fmt: skip


def ab_in_child(runs: dict[str, str], source: str, n: int, prompt: str, answer: str, mode: str, seed: int,
                tokens: int | None, weights: str, progress: Callable[[float, str], None] | None = None):  # fmt: skip
    """run_ab's work, in the sandbox's child: the first run's prompts, every model's answers, scores, ranking."""
    from ..compare_many import compare_many  # imports torch: only when a comparison is asked for

    rows = two_way.comparison_rows(next(iter(runs.values())), source, n, prompt, answer)
    return compare_many(runs, weights=weights, rows=rows, mode=two_way.decoding(mode), seed=seed, max_new_tokens=tokens,
                        progress=progress)  # fmt: skip


def ab_headline(cmp) -> str:
    """The ranking rule, then each variant's verdict against the base, best first."""
    lines = [f"*{RANKING_RULE}*", ""]  # our own words: no escaping
    for _, r in cmp.ranking.iterrows():
        v = cmp.verdicts[r["variant"]]
        lines.append(
            f"{r['rank']}. **{views.esc(r['variant'])}**: {views.esc(v.level)}. {views.esc(v.headline)}"
        )
    return "\n".join(lines)


def ranking_frame(cmp) -> pd.DataFrame:
    """The ranked table for reading, with the base model's own checks as the last row."""
    r = cmp.ranking[RANK_COLUMNS].copy()
    base = {"rank": None, "variant": "(base)", "verdict": "", **cmp.ranking.attrs.get("base", {}),
            "own_reward_diff": None, "ahead_of_next": ""}  # fmt: skip
    out = pd.concat([r, pd.DataFrame([base])], ignore_index=True)
    return out.round(
        {c: 3 for c in ("correct", "degenerate", "naturalness", "repetition", "words", "own_reward_diff")}
    )


def pairs_frame(cmp) -> pd.DataFrame:
    """The pairs of variants on the checks of answer quality and on each variant's total (b − a, 95% CI)."""
    from ..compare_many import quality_pairs

    keep = quality_pairs(cmp.pairs)
    cols = [
        "a",
        "b",
        "kind",
        "name",
        "a_mean",
        "b_mean",
        "diff",
        "ci_low",
        "ci_high",
        "wins",
        "ties",
        "losses",
    ]
    return keep[cols].round({c: 3 for c in ("a_mean", "b_mean", "diff", "ci_low", "ci_high")})


def columns_html(cmp, limit: int = 30, max_chars: int = 900) -> str:
    """Each prompt, then the base's and every variant's answer in columns, each with its own total and the
    checks; a degenerate answer is marked with the reason."""
    t = getattr(cmp, "table", None)
    if t is None or t.empty:
        return '<div class="wb-empty">The answers appear here: the base and every variant in columns.</div>'
    sides = ["base", *cmp.variants]
    grid = f'style="grid-template-columns:repeat({len(sides)}, minmax(0, 1fr))"'
    parts = []
    for _, row in t.head(limit).iterrows():
        cells = []
        for side in sides:
            totals = [cmp.variants[v]["total"] for v in cmp.variants]
            chips = "".join(f'<span class="wb-score">{views.esc(k)} {views.num(row.get(side + "/" + k))}</span>'
                            for k in totals)  # fmt: skip
            chips += "".join(f'<span class="wb-score wb-check">{c} {views.num(row.get(f"{side}:{c}"))}</span>'
                             for c in ("correct", "naturalness", "words") if f"{side}:{c}" in t.columns)  # fmt: skip
            why = str(row.get(f"{side}:degenerate_reason") or "")
            flag = f'<span class="wb-degenerate">degenerate: {views.esc(why)}</span>' if why else ""
            text = str(row.get(side, ""))
            text = text if len(text) <= max_chars else text[:max_chars] + " …"
            cells.append(f'<div class="wb-answer{" wb-bad" if why else ""}"><h4>{views.esc(side)} {flag}</h4>'
                         f'<pre>{views.esc(text)}</pre><div class="wb-scores">{chips}</div></div>')  # fmt: skip
        parts.append(f'<div class="wb-qprompt">{views.esc(views.prompt_display(row.get("prompt")))}</div>'
                     f'<div class="wb-pair" {grid}>{"".join(cells)}</div>')  # fmt: skip
    more = f'<div class="wb-empty">… {len(t) - limit} more in the CSV.</div>' if len(t) > limit else ""
    return "".join(parts) + more


# --- layout and wiring ---------------------------------------------------------------------------------------
def build_ab_section(c: dict[str, Any]) -> dict[str, Any]:
    """Under the 2-way comparison; reads the tab's prompt, decoding and weights controls (`c`)."""
    ab: dict[str, Any] = {}
    with gr.Accordion(
        "A/B: the base and several tuned models at once, ranked", open=False, elem_id="wb-ab"
    ) as box:
        gr.Markdown("Pick an experiment (Train tab → *A/B of reward designs*) or 2 to 4 runs of one model and "
                    "task. The prompts, decoding and weights above apply.")  # fmt: skip
        with gr.Row():
            ab["exp"] = gr.Dropdown(label="experiment", choices=[], allow_custom_value=True, scale=3,
                                    elem_id="wb-ab-exp")  # fmt: skip
            ab["runs"] = gr.Dropdown(label="runs (2 to 4)", choices=[], multiselect=True, max_choices=4,
                                     allow_custom_value=True, scale=4, elem_id="wb-ab-runs")  # fmt: skip
            ab["refresh"] = gr.Button("↻ Refresh", scale=0, min_width=110, size="sm")
        ab["go"] = gr.Button("Compare the base and every run", variant="primary", elem_id="wb-ab-go")
        ab["headline"] = gr.Markdown(elem_id="wb-ab-headline")
        ab["ranking"] = gr.Dataframe(pd.DataFrame(columns=RANK_COLUMNS), label="ranking (checks and verdicts; "
                                     "own_reward_diff: the variant's own total, tuned − base)", interactive=False,
                                     elem_id="wb-ab-ranking")  # fmt: skip
        ab["pairs"] = gr.Dataframe(label="pairs of variants (b − a on the same prompts, 95% CI)", interactive=False,
                                   elem_id="wb-ab-pairs")  # fmt: skip
        ab["csv"] = gr.File(label="download (CSV: answers, ranking, summary, pairs)", interactive=False,
                            file_count="multiple", height=90, elem_id="wb-ab-csv")  # fmt: skip
        ab["answers"] = gr.HTML(columns_html(None), elem_id="wb-ab-answers")

    @guarded(2, quiet=True)
    def refresh():
        return gr.update(choices=experiment_choices()), gr.update(choices=two_way.run_choices())

    ab["refresh"].click(refresh, None, [ab["exp"], ab["runs"]], api_name="ab_choices")
    box.expand(
        refresh, None, [ab["exp"], ab["runs"]], api_visibility="private"
    )  # the store, read when opened

    @guarded(1)
    def pick(exp_id):
        from ..experiments import open_experiment

        return gr.update(value=list(open_experiment(exp_id).runs.values())) if exp_id else gr.skip()

    ab["exp"].change(pick, ab["exp"], ab["runs"], api_visibility="private")

    @guarded(5)
    def go(ids, source, n, prompt, answer, mode, seed, max_new_tokens, weights="last",
           progress=gr.Progress()):  # noqa: B008  # fmt: skip
        if not ids or len(ids) < 2:
            raise CompareError("pick an experiment, or 2 to 4 runs")
        progress(0.0, desc="Loading the models…")
        cmp = run_ab(ids, source, n, prompt, answer, mode, seed, max_new_tokens,
                     progress=lambda f, msg: progress(f, desc=msg), weights=weights)  # fmt: skip
        files = cmp.to_csv(download_folder("wb-ab-") / "ab.csv")
        return (
            ab_headline(cmp),
            ranking_frame(cmp),
            pairs_frame(cmp),
            [str(f) for f in files],
            columns_html(cmp),
        )

    ab["go"].click(go, [ab["runs"], c["source"], c["n"], c["prompt"], c["answer"], c["mode"], c["seed"],
                        c["max_new_tokens"], c["weights"]],
                   [ab["headline"], ab["ranking"], ab["pairs"], ab["csv"], ab["answers"]],
                   api_name="compare_ab", concurrency_limit=1, concurrency_id="compare")  # fmt: skip
    return ab
