"""The app: header, the four tabs, and what happens when a page loads. `build_app()` returns the gr.Blocks;
`launch_options()` the arguments for `.launch()` (theme, CSS, host, port, upload cap) for this deployment.

    from workbench.ui import build_app, launch_options
    build_app().queue().launch(**launch_options())
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import housekeeping, runner
from ..config import Limits
from . import ab, access, controls, rating, settings
from .common import CSS, guarded, theme
from .compare import build_compare_tab
from .learn import build_learn_tab
from .runs import build_runs_tab
from .train import build_train_tab, pick_run, poll

TITLE = "GRPO Workbench"


def header_html(limits: Limits) -> str:
    chips = [f"default model: {settings.default_model()}", "one run at a time, others queue"]
    if limits.max_steps is not None:
        chips.append(f"max {limits.max_steps} steps")
    if limits.max_completion_length is not None:
        chips.append(f"max {limits.max_completion_length} tokens per completion")
    if limits.max_run_minutes is not None:
        chips.append(f"≤ {limits.max_run_minutes:g} min per run")
    chips.append(f"uploads ≤ {limits.max_upload_mb:g} MB")
    if settings.on_space():
        chips.append("shared Space: you can stop only your own runs")
        chips.append("uploads and runs are visible to every visitor")
    chip_html = "".join(f'<span class="wb-chip">{c}</span>' for c in chips)
    return (
        f'<div class="wb-header"><h1>{TITLE}</h1><span class="wb-sub">Train a small language model with GRPO, watch '
        f'it learn, compare it with the base model.</span></div><div class="wb-chips">{chip_html}</div>'
    )


def build_app(limits: Limits | None = None) -> gr.Blocks:
    """The whole app. Limits default to the environment's (Limits.from_env)."""
    limits = limits or settings.deployment_limits()
    # delete_cache: Gradio's cached uploads and downloads are removed once an hour old (housekeeping.py)
    with gr.Blocks(title=TITLE, fill_width=True, delete_cache=housekeeping.GRADIO_CACHE) as demo:
        gr.HTML(header_html(limits))
        # A random per-browser token in local storage: on a Space it proves who started a run (see access.py).
        token = gr.BrowserState("", storage_key="grpo-workbench-owner", secret=access.browser_secret())
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train = build_train_tab(limits, token)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare = build_compare_tab(train)
                compare["ab"] = ab.build_ab_section(compare)  # the base and 2 to 4 tuned models at once
                compare["rating"] = rating.build_rating_section(compare, token)  # judge the answers blind
            with gr.Tab("Runs", id="runs") as runs_tab:
                runs = build_runs_tab(token)
            with gr.Tab("Learn", id="learn") as learn_tab:
                learn = build_learn_tab(train)

        # Each tab reads the store afresh when it is opened (no session copy to go stale).
        compare_tab.select(compare["tab_refresh"], [compare["run"], train["watch"]], compare["run"],
                           api_visibility="private")  # fmt: skip
        runs_tab.select(runs["tab_refresh"], [runs["pick"], runs["one"]], [runs["table"], runs["pick"], runs["one"]],
                        api_visibility="private")  # fmt: skip
        learn_tab.select(learn["tab_refresh"], [train["watch"], learn["group"]],
                         [learn["caption"], learn["table"], learn["chart"], learn["group"]],
                         api_visibility="private")  # fmt: skip
        gr.api(guarded(1)(run_status), api_name="run_status")  # a wrong id: the message, not "an exception"

        @guarded(3, quiet=True)
        def on_load(tok):
            run_id = pick_run(None)  # re-attach: the running run, else the newest one
            return tok or access.new_token(), run_id, ""

        demo.load(on_load, token, [token, train["watch"], train["seen"]], api_visibility="private").then(
            poll,
            [train["watch"], train["seen"]],
            train["watch_out"],
            show_progress="hidden",
            api_visibility="private",
        )  # draw at once rather than on the first tick
    return demo


def run_status(run_id: str) -> dict:
    """A run's status and latest metrics as JSON (for scripts and the end-to-end test); read-only."""
    from ..store import open_run

    run = open_run(run_id)
    return {"id": run.id, **run.status(), "last_metrics": run.last_metrics()}


def launch_options(limits: Limits | None = None) -> dict[str, Any]:
    limits = limits or settings.deployment_limits()
    return {
        "server_name": settings.server_name(),
        "server_port": settings.server_port(),
        "theme": theme(),
        "css": CSS,
        "max_file_size": f"{limits.max_upload_mb:g}mb",
        "show_error": False,  # messages come from our own gr.Error (common.guarded), never a raw exception
        "ssr_mode": False,
    }


def start_server_housekeeping(limits: Limits | None = None) -> housekeeping.Keeper:
    """At app start: runs left 'running' by a previous server's workers are marked interrupted, queued runs start,
    the disk is tidied; then a thread keeps the queue moving (even after a SIGKILL) and the disk bounded, and a
    standby worker warm with the form's model while a slot is free (Limits.standby_worker)."""
    limits = limits or settings.deployment_limits()
    keeper = housekeeping.start(limits)
    if limits.standby_worker:
        runner.keep_standby(controls.preset_spec(controls.START_PRESET, limits), limits)
    return keeper
