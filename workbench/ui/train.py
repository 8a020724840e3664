"""Train tab: pick a preset and knobs, launch a run, watch it learn live.

The tab holds no training state of its own: it remembers only which run it is watching (a run id) and what it
last drew; everything else is read from the run store on each timer tick. So a page reload re-attaches to the
running run, two browser tabs watch the same run, and the server never waits on training (the run trains in its
worker process). The 1 s tick returns gr.skip() unless the run's step count or state changed, so the plots are
redrawn only when a new step has landed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import runner
from ..config import PRESETS, Limits, RunSpec
from ..rewards import REGISTRY, build_reward
from ..store import TERMINAL, RunNotFound, list_runs, open_run
from ..tasks import BUILTIN_TASKS, load_task
from . import access, controls, insights, lab, plots, quota, uploads, variants, views
from .common import UploadError, guarded, skips

# --- plain functions (tested without a server) ---------------------------------------------------------------


def plan_text(max_steps: Any, prompts: Any, g: Any, max_len: Any) -> str:
    """One line that says how big a run is, from the four knobs that decide it."""
    try:
        n = int(prompts) * int(g)
        return (f"**{int(max_steps)} steps** × {int(prompts)} prompts × {int(g)} completions = {n} completions per "
                f"step, up to {int(max_len)} tokens each.")  # fmt: skip
    except (TypeError, ValueError):
        return ""


def pick_run(watched: str | None) -> str | None:
    """The run a Train tab shows: the one it watches while that is queued or running, else the run training now,
    else the one it watched, else the newest run (so a reload lands on the latest curves)."""
    if watched:
        try:
            if open_run(watched).status()["state"] not in TERMINAL:
                return watched
        except RunNotFound:
            watched = None
    active = runner.active_run()
    if active:
        return active
    if watched:
        return watched
    runs = list_runs()
    return runs[-1].id if runs else None


def run_view(run_id: str | None) -> dict[str, Any]:
    """Everything the watch panel draws for a run, from the store: status card, figures, groups, warnings."""
    if run_id is None:
        return {"status": views.status_html(None, None, []), "reward": plots.reward_figure(None),
                "rewards": plots.reward_functions_figure(None), "diag": plots.diagnostics_figure(None),
                "groups": insights.groups_html([]), "warnings": "", "state": None, "sig": "none",
                "heldout": plots.heldout_figure(None, None), "answers": insights.heldout_answers_html([])}  # fmt: skip
    run = open_run(run_id)
    st, spec, metrics, evals = run.status(), run.spec, run.metrics(), run.evals()
    df = pd.DataFrame(metrics)
    episodes = run.episodes() if metrics else []
    step = metrics[-1]["step"] if metrics else None
    cap = spec.max_completion_length
    last = evals[-1] if evals else {}  # the latest held-out evaluation
    return {
        "status": views.status_html(run_id, st, metrics, spec.to_dict()),
        "reward": plots.reward_figure(df),
        "rewards": plots.reward_functions_figure(df),
        "diag": plots.diagnostics_figure(df, cap=cap),
        "groups": insights.groups_html(episodes, step=step, cap=cap),
        "warnings": insights.warnings_html(insights.run_warnings(df, cap=cap, evals=evals)),
        "heldout": plots.heldout_figure(df, pd.DataFrame(evals), off=not spec.eval_every),
        "answers": insights.heldout_answers_html(
            run.eval_answers(), last.get("step"), last.get("eval/time_share")
        ),
        "state": st["state"],
        "sig": signature(run_id, st, len(evals)),
    }


def signature(run_id: str, st: dict, evals: int = 0) -> str:
    """What decides a redraw: run, steps done, state, reason and held-out evaluations. Equal → nothing to send."""
    return f"{run_id}|{st.get('steps_done')}|{st.get('state')}|{st.get('reason')}|{evals}"


def suggested_rewards(task: str, seed: int = 0) -> list:
    """The rewards a built-in or reasoning-gym task suggests (loads a 4-prompt sample; files and hub datasets are
    checked on upload / launch instead)."""
    if not (task in BUILTIN_TASKS or task.startswith("rg:")):
        return []
    return load_task(RunSpec(task=task, train_size=4, eval_size=1, seed=int(seed))).rewards


def describe_upload(task, name: str) -> str:
    cols = ", ".join(task.columns) or "none besides prompt"
    sugg = ", ".join(str(r) for r in task.rewards) or "none (pick rewards below)"
    return (f"✓ **{name}**: {len(task.train)} training prompts, {len(task.eval)} held out. Reference columns: "
            f"{cols}. Suggested rewards: {sugg}.")  # fmt: skip


def progress_of(run_id: str) -> str:
    st = open_run(run_id).status()
    return f"step {st['steps_done']}/{st['max_steps']}"


def accept_upload(path: str, name: str, train_size: Any, eval_size: Any, seed: Any, limits: Limits):
    """Copy an upload under a random name and load it as a task with the form's sizes; returns (task setting,
    Task). UploadError (and the copy removed) when it is not a usable dataset."""
    dest = uploads.save_upload(path, name, limits)
    try:
        spec = RunSpec(
            task=f"file:{dest}", train_size=int(train_size), eval_size=int(eval_size), seed=int(seed)
        )
        return spec.task, load_task(spec, limits)
    except Exception as e:
        dest.unlink(missing_ok=True)
        # the visitor knows their file by its name, not by our random one
        raise UploadError(str(e).replace(str(dest), name).replace(dest.name, name)) from None


def launch_spec(spec: RunSpec, limits: Limits, token: str | None, request: Any = None) -> tuple[str, str]:
    """Validate and start (or queue) a run; return (run id, message for the visitor). `request` (a gr.Request)
    tells who is asking, for the per-visitor limit (quota.py)."""
    uploads.check_visitor_paths(spec)
    limits.check(spec)
    keys = quota.visitor_keys(token, request) if limits.max_runs_per_visitor is not None else []
    quota.check(keys, limits)
    for r in spec.rewards:
        build_reward(r)  # a wrong reward parameter is reported now, not by a failed worker a minute later
    try:
        run_id = runner.start_run(spec, limits)
    except runner.RunnerBusy:  # the runner's message names CLI commands; a visitor needs the browser's words
        active = runner.active_run()
        where = f"run {active} is training ({progress_of(active)})" if active else "runs are training"
        raise runner.RunnerBusy(
            f"The queue is full: {where} and {limits.queue_size} more wait. Try again when one finishes, or stop "
            "yours on this tab."
        ) from None
    access.record_owner(run_id, token)
    quota.record(run_id, keys)
    st = open_run(run_id).status()
    if st["state"] == "queued":
        return run_id, (f"Another run is training, so run {run_id} is queued: it starts by itself when the runs "
                        f"ahead of it finish ({st.get('reason') or 'waiting'}).")  # fmt: skip
    return run_id, f"Run {run_id} started: the first curve point appears after its first step."


# --- layout and wiring ---------------------------------------------------------------------------------------


def build_train_tab(limits: Limits, token: gr.BrowserState) -> dict[str, Any]:
    """Lay out the Train tab and wire its events; returns its components by name."""
    start = controls.preset_spec(controls.START_PRESET, limits)
    c: dict[str, Any] = {}
    names = controls.field_order()
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=360):
            c["preset"] = gr.Dropdown(choices=list(PRESETS), value=controls.START_PRESET, label="preset", elem_id="wb-preset",
                                      info="Fills every setting below; change any of them afterwards.")  # fmt: skip
            c["plan"] = gr.Markdown(plan_text(start.max_steps, start.prompts_per_step, start.num_generations,
                                              start.max_completion_length), elem_id="wb-plan")  # fmt: skip
            with gr.Row():
                c["launch"] = gr.Button("Launch", variant="primary", elem_id="wb-launch", scale=2)
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="wb-stop", interactive=False, scale=1)
            lab.build_preflight(c)  # "Check rewards": the pre-flight report of these settings
            variants.build_variants(c)  # "Add variant": an A/B of reward designs on matched seeds
            fields: dict[str, Any] = {}
            for title, fs in controls.grouped_fields():
                with gr.Accordion(title, open=title == "Task & model"):
                    for f in fs:
                        fields[f.name] = controls.make_control(f, getattr(start, f.name), limits)
                    if title == "Task & model":
                        c["upload"] = gr.File(label="…or upload your own prompts (CSV, JSONL, Parquet)",
                                              file_types=list(uploads.EXTENSIONS), type="filepath",
                                              elem_id="wb-upload", height=140)  # fmt: skip
                        c["upload_msg"] = gr.Markdown(uploads.upload_note())
                if title == "Task & model":
                    _reward_picker(c, start)
        with gr.Column(scale=7, min_width=480):
            build_watch_panel(c)
    c["timer"] = gr.Timer(1.0)
    c["watch"] = gr.State(None)  # the run id this browser tab shows (re-picked from the store on every tick)
    c["seen"] = gr.State("")  # signature of what it last drew
    c["fields"], c["names"] = fields, names
    wire_train_tab(c, limits, token)
    return c


def _reward_picker(c: dict, start: RunSpec) -> None:
    sel, flat = controls.values_from_rewards(start.rewards or suggested_rewards(start.task, start.seed))
    with gr.Accordion("Rewards", open=True):
        c["reward_sel"] = gr.CheckboxGroup(
            choices=list(REGISTRY), value=sel, label="reward functions", elem_id="wb-rewards",
            info="The total reward is the weighted sum of the ticked ones. None ticked = the task's suggestions.",
        )  # fmt: skip
        c["reward_boxes"], c["reward_vals"] = [], []
        for name, pnames in controls.reward_layout():
            info = REGISTRY[name]
            with gr.Group(visible=name in sel) as box:
                gr.Markdown(f"**{name}**: {info.description}" + (f" *Needs column: {', '.join(info.needs)}.*"
                                                                  if info.needs else ""))  # fmt: skip
                with gr.Row():
                    c["reward_vals"].append(gr.Number(value=1.0, label="weight", elem_id=f"wb-rw-{name}",
                                                      min_width=90))  # fmt: skip
                    for p in pnames:
                        c["reward_vals"].append(controls.make_param_control(name, p, info.params[p]))
            c["reward_boxes"].append(box)
        with gr.Accordion("What each reward does", open=False):
            gr.Markdown(controls.reward_help_markdown())
    # initial values of the weight/param controls (the constructor set defaults; the preset may differ)
    for comp, v in zip(c["reward_vals"], flat, strict=True):
        comp.value = v


def build_watch_panel(c: dict[str, Any]) -> None:
    view = run_view(None)
    c["status"] = gr.HTML(view["status"], elem_id="wb-status")
    c["warnings"] = gr.HTML("", elem_id="wb-warnings")
    with gr.Row(equal_height=True):
        c["plot_reward"] = gr.Plot(view["reward"], show_label=False, elem_id="wb-reward-plot")
        c["plot_rewards"] = gr.Plot(view["rewards"], show_label=False, elem_id="wb-rewards-plot")
    c["plot_heldout"] = gr.Plot(view["heldout"], show_label=False, elem_id="wb-heldout-plot")
    c["plot_diag"] = gr.Plot(view["diag"], show_label=False, elem_id="wb-diag-plot")
    with gr.Accordion("Latest step: every group, its completions, rewards and advantages", open=True):
        c["groups"] = gr.HTML(view["groups"], elem_id="wb-groups", max_height=900)
    with gr.Accordion("Latest held-out evaluation: the policy's greedy answers to prompts it never trains on",
                      open=False):  # fmt: skip
        c["heldout"] = gr.HTML(view["answers"], elem_id="wb-heldout", max_height=900)


def wire_train_tab(c: dict[str, Any], limits: Limits, token: gr.BrowserState) -> None:
    fields, names = c["fields"], c["names"]
    field_list = [fields[n] for n in names]
    c["watch_out"] = watch_out = [c["watch"], c["seen"], c["status"], c["plot_reward"], c["plot_rewards"], c["plot_diag"],
                 c["groups"], c["warnings"], c["stop"], c["plot_heldout"], c["heldout"]]  # fmt: skip

    @guarded(len(field_list) + 2 + len(c["reward_vals"]))
    def apply_preset(name):
        spec = controls.preset_spec(name, limits)
        sel, flat = controls.values_from_rewards(spec.rewards or suggested_rewards(spec.task, spec.seed))
        plan = plan_text(
            spec.max_steps, spec.prompts_per_step, spec.num_generations, spec.max_completion_length
        )
        return (*controls.values_from_spec(spec), plan, sel, *flat)

    c["preset"].input(apply_preset, c["preset"], [*field_list, c["plan"], c["reward_sel"], *c["reward_vals"]],
                      api_name="preset")  # fmt: skip

    plan_in = [
        fields[n] for n in ("max_steps", "prompts_per_step", "num_generations", "max_completion_length")
    ]
    for comp in plan_in:
        comp.change(plan_text, plan_in, c["plan"], show_progress="hidden", api_visibility="private")

    @guarded(1 + len(c["reward_vals"]))
    def on_task(task, seed):
        sugg = suggested_rewards(task, seed)
        if not sugg:
            return skips(1 + len(c["reward_vals"]))
        sel, flat = controls.values_from_rewards(sugg)
        return (sel, *flat)

    fields["task"].input(on_task, [fields["task"], fields["seed"]], [c["reward_sel"], *c["reward_vals"]],
                         api_visibility="private")  # fmt: skip

    def show_boxes(sel):
        return [gr.update(visible=name in (sel or [])) for name, _ in controls.reward_layout()]

    c["reward_sel"].change(show_boxes, c["reward_sel"], c["reward_boxes"], show_progress="hidden",
                           api_visibility="private")  # fmt: skip

    @guarded(3 + len(c["reward_vals"]))
    def on_upload(path, train_size, eval_size, seed):
        if not path:
            return skips(3 + len(c["reward_vals"]))
        name = Path(path).name  # gradio keeps the visitor's file name as the last part; used for display only
        try:
            task_value, task = accept_upload(path, name, train_size, eval_size, seed, limits)
        except UploadError as e:  # shown next to the upload box, where the visitor is looking
            return gr.skip(), f"✗ **{views.esc(name)}** was not accepted: {views.esc(e)}", *skips(
                1 + len(c["reward_vals"]))  # fmt: skip
        choices = [*controls.task_choices(), (f"uploaded: {name}", task_value)]
        if task.rewards:
            sel, flat = controls.values_from_rewards(task.rewards)
        else:
            sel, flat = gr.skip(), [gr.skip()] * len(c["reward_vals"])
        return gr.update(choices=choices, value=task_value), describe_upload(task, name), sel, *flat

    c["upload"].upload(on_upload, [c["upload"], fields["train_size"], fields["eval_size"], fields["seed"]],
                       [fields["task"], c["upload_msg"], c["reward_sel"], *c["reward_vals"]],
                       api_visibility="private")  # fmt: skip

    # Named API parameters (one per setting), so a script or gradio_client can launch with only the ones it sets.
    flat_names = [f"{name}__{p}" for name, pnames in controls.reward_layout() for p in ("weight", *pnames)]
    launch_kwargs = {"token": token, **fields, "rewards": c["reward_sel"],
                     **dict(zip(flat_names, c["reward_vals"], strict=True))}  # fmt: skip
    lab.wire_preflight(c, limits, launch_kwargs, names, flat_names)

    @guarded(3)
    def launch(request: gr.Request, token=None, rewards=None, **values):
        flat = [values.pop(k) for k in flat_names]
        spec = controls.spec_from_values(names, [values[n] for n in names],
                                         controls.rewards_from_values(rewards, flat))  # fmt: skip
        run_id, msg = launch_spec(spec, limits, token, request)
        gr.Info(msg)
        return run_id, "", gr.update(interactive=True)

    c["launch"].click(launch, outputs=[c["watch"], c["seen"], c["stop"]], inputs_kwargs=launch_kwargs,
                      api_name="launch", concurrency_limit=1).then(
        poll, [c["watch"], c["seen"]], watch_out, show_progress="hidden", api_visibility="private")  # fmt: skip

    @guarded(1)
    def stop(run_id, tok):
        if not run_id:
            raise runner.RunnerBusy("no run is being watched: launch one first")
        access.check_owner(run_id, tok, "stop")
        runner.stop_run(run_id)
        gr.Info(f"Stopping run {run_id} after its current step; its adapter is saved, so you can compare it.")
        return gr.update(interactive=False)

    variants.wire_variants(c, limits, launch_kwargs, names, flat_names, poll)
    c["stop"].click(stop, [c["watch"], token], c["stop"], api_name="stop")
    c["timer"].tick(poll, [c["watch"], c["seen"]], watch_out, show_progress="hidden", concurrency_limit=None,
                    api_name="poll")  # fmt: skip


@guarded(11, quiet=True)  # a failing tick must not toast every second; the next tick tries again
def poll(watched: str | None, seen: str | None):
    """Timer tick: which run to show, and (only when it changed) its status, plots, groups and warnings; the held-out
    plot and answers only when a new held-out evaluation landed."""
    run_id = pick_run(watched)
    if run_id is None:
        if seen == "none":
            return skips(11)
        v = run_view(None)
        return (None, "none", v["status"], v["reward"], v["rewards"], v["diag"], v["groups"], "",
                gr.update(interactive=False), v["heldout"], v["answers"])  # fmt: skip
    run = open_run(run_id)
    st = run.status()
    sig = signature(run_id, st, len(run.evals()))
    if sig == seen:
        return skips(11)
    stop = gr.update(interactive=st["state"] not in TERMINAL)
    before = (seen or "").split("|")
    if _same(before, sig, steps=True) and _same(before, sig, steps=False):
        # only the state or reason changed: redraw the status card, leave the plots alone
        card = views.status_html(run_id, st, run.metrics(), run.spec.to_dict())
        return (run_id, sig, card, *skips(5), stop, *skips(2))
    v = run_view(run_id)
    steps = (
        skips(4)
        if _same(before, v["sig"], steps=True)
        else (v["reward"], v["rewards"], v["diag"], v["groups"])
    )
    held = skips(2) if _same(before, v["sig"], steps=False) else (v["heldout"], v["answers"])
    return (run_id, v["sig"], v["status"], *steps, v["warnings"], stop, *held)


def _same(before: list[str], sig: str, steps: bool) -> bool:
    """Whether the run and its steps done (steps=True), or its held-out evaluations, are as drawn before."""
    now = sig.split("|")
    return before[:2] == now[:2] if steps else (before[:1] == now[:1] and before[4:] == now[4:])
