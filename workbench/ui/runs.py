"""Runs tab: every run on this machine; overlay several runs' curves, see how their settings differ; download a
run's adapter (zip) and config; resume or delete it; read the end of its worker log when something went wrong.
"""

from __future__ import annotations

import shutil
from typing import Any

import gradio as gr
import pandas as pd

from .. import runner
from ..config import Limits
from ..housekeeping import download_folder
from ..store import delete_run, list_runs, open_run
from . import access, lab, plots, quota, views
from .common import guarded

METRICS = ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
           "kl", "entropy", "loss", "grad_norm", "step_time"]  # fmt: skip


def runs_overview() -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The runs table (newest first) and dropdown choices (label, id). Marks dead workers' runs first."""
    runner.reconcile()
    rows, choices = [], []
    for run in list_runs():
        try:
            st, spec = run.status(), run.spec.to_dict()
            rows.append(views.run_row(run.id, st, spec, run.metrics()))
            choices.append((views.run_choice_label(run.id, st, spec), run.id))
        except Exception:  # an unreadable run (being deleted, hand-edited) is skipped
            continue
    return views.runs_table(rows), choices[::-1]


def metric_choices(run_ids: list[str]) -> list[str]:
    """Metrics to offer for the overlay: the common ones plus every reward function the chosen runs logged."""
    extra: list[str] = []
    for rid in run_ids or []:
        df = open_run(rid).metrics_df()
        extra += [f"rewards/{n}/mean" for n in plots.reward_names(df) if f"rewards/{n}/mean" not in extra]
    return METRICS + extra


def overlay(run_ids: list[str], metric: str):
    dfs = {rid: open_run(rid).metrics_df() for rid in run_ids or []}
    return plots.overlay_figure(dfs, metric or "reward")


def diff_configs(run_ids: list[str]) -> pd.DataFrame:
    return views.config_diff({rid: open_run(rid).spec.to_dict() for rid in run_ids or []})


def export_adapter(run_id: str) -> str:
    """Zip a run's final adapter (or its latest checkpoint) into a temp folder; returns the zip's path."""
    run = open_run(run_id)
    src = run.require_weights()
    base = download_folder("wb-export-") / f"{run_id}-{'adapter' if src.name == 'adapter' else src.name}"
    return shutil.make_archive(str(base), "zip", root_dir=src)


def export_config(run_id: str) -> str:
    """The run's spec.json under a readable name (load it again with `workbench train --config FILE`)."""
    run = open_run(run_id)
    out = download_folder("wb-export-") / f"{run_id}-config.json"
    out.write_text(run.spec.to_json())
    return str(out)


def log_tail(run_id: str, lines: int = 40) -> str:
    path = open_run(run_id).log_path
    if not path.exists():
        return "(no worker log yet)"
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 20_000))  # the end is what matters; never read a huge log whole
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def build_runs_tab(token: gr.BrowserState) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        gr.Markdown("Every run on this machine, newest first. Click a row to act on it; pick several below to "
                    "overlay their curves.")  # fmt: skip
        c["refresh"] = gr.Button("↻ Refresh", scale=0, min_width=110, size="sm", elem_id="wb-runs-refresh")
    c["table"] = gr.Dataframe(interactive=False, wrap=True, elem_id="wb-runs-table", max_height=360)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            # Choices are filled per page (refresh); allow_custom_value lets an API call name any run id or metric
            # (open_run checks run ids against the strict run id pattern).
            c["pick"] = gr.Dropdown(label="runs to compare", multiselect=True, choices=[], allow_custom_value=True,
                                    elem_id="wb-runs-pick")  # fmt: skip
            c["metric"] = gr.Dropdown(label="metric", choices=METRICS, value="reward", allow_custom_value=True,
                                      elem_id="wb-runs-metric")  # fmt: skip
            c["overlay"] = gr.Plot(
                plots.overlay_figure({}, "reward"), show_label=False, elem_id="wb-runs-overlay"
            )
            c["diff"] = gr.Dataframe(label="settings that differ", interactive=False, elem_id="wb-runs-diff")
        with gr.Column(scale=2):
            c["one"] = gr.Dropdown(label="run", choices=[], allow_custom_value=True, elem_id="wb-runs-one")
            with gr.Row():
                c["zip"] = gr.Button("Adapter (.zip)", size="sm")
                c["cfg"] = gr.Button("Config (.json)", size="sm")
            with gr.Row():
                c["resume"] = gr.Button("Resume", size="sm")
                c["delete"] = gr.Button("Delete", size="sm", variant="stop", elem_id="wb-runs-delete")
            c["file"] = gr.File(label="download", interactive=False, height=70)
            c["msg"] = gr.Markdown()
            with gr.Accordion("Worker log (end)", open=False):
                c["log"] = gr.Code(language=None, lines=12, interactive=False)
            lab.build_run_lab(c)  # the run's pre-flight report, and a replay under other rewards
    c["armed"] = gr.State("")  # the run id a first Delete click armed; the second click deletes

    @guarded(3, quiet=True)
    def refresh(picked=None, one=None):  # defaults: a script may call the API with no arguments
        table, choices = runs_overview()
        ids = [v for _, v in choices]
        return (table, gr.update(choices=choices, value=[p for p in picked or [] if p in ids]),
                gr.update(choices=choices, value=one if one in ids else (ids[0] if ids else None)))  # fmt: skip

    c["refresh"].click(refresh, [c["pick"], c["one"]], [c["table"], c["pick"], c["one"]], api_name="runs")
    c["tab_refresh"] = refresh

    @guarded(3)
    def on_pick(run_ids, metric):
        metrics = metric_choices(run_ids)
        metric = metric if metric in metrics else "reward"
        return gr.update(choices=metrics, value=metric), overlay(run_ids, metric), diff_configs(run_ids)

    c["pick"].change(on_pick, [c["pick"], c["metric"]], [c["metric"], c["overlay"], c["diff"]],
                     api_visibility="private")  # fmt: skip
    c["metric"].input(guarded(1)(overlay), [c["pick"], c["metric"]], c["overlay"], api_visibility="private")

    @guarded(3)
    def on_row(picked, evt: gr.SelectData):
        run_id = evt.row_value[0] if evt.row_value else None
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip()
        picked = list(picked or [])
        return run_id, (picked if run_id in picked else [*picked, run_id]), log_tail(run_id)

    c["table"].select(on_row, c["pick"], [c["one"], c["pick"], c["log"]], api_visibility="private")
    c["one"].change(guarded(1, quiet=True)(lambda r: log_tail(r) if r else ""), c["one"], c["log"],
                    api_visibility="private")  # fmt: skip
    c["zip"].click(guarded(1)(export_adapter), c["one"], c["file"], api_name="download_adapter")
    c["cfg"].click(guarded(1)(export_config), c["one"], c["file"], api_name="download_config")

    @guarded(1)
    def resume(run_id, tok, request: gr.Request):
        access.check_owner(run_id, tok, "resume")
        limits = Limits.from_env()
        keys = quota.visitor_keys(tok, request) if limits.max_runs_per_visitor is not None else []
        quota.check(keys, limits, resuming=run_id)
        runner.resume_run(run_id)
        quota.record(run_id, keys)
        return f"Run {run_id} resumes from its last checkpoint (or queues); watch it on the Train tab."

    c["resume"].click(resume, [c["one"], token], c["msg"], api_name="resume").then(
        refresh, [c["pick"], c["one"]], [c["table"], c["pick"], c["one"]], api_visibility="private"
    )

    @guarded(3)
    def delete(run_id, tok, armed):
        if not run_id:
            return gr.skip(), "Pick a run first.", ""
        access.check_owner(run_id, tok, "delete")
        if armed != run_id:
            return (
                gr.update(value=f"Really delete {run_id}?"),
                f"Click again to delete run {run_id} for good.",
                run_id,
            )
        delete_run(run_id)
        return gr.update(value="Delete"), f"Deleted run {run_id}.", ""

    c["delete"].click(delete, [c["one"], token, c["armed"]], [c["delete"], c["msg"], c["armed"]],
                      api_visibility="private").then(
        refresh, [c["pick"], c["one"]], [c["table"], c["pick"], c["one"]], api_visibility="private")  # fmt: skip
    c["one"].change(lambda: (gr.update(value="Delete"), ""), None, [c["delete"], c["armed"]],
                    api_visibility="private")  # fmt: skip
    return c
