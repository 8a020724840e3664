"""Train tab: "Add variant", an A/B of reward designs launched as one experiment (workbench/experiments.py).

Tick a reward set in the form and press "Add variant"; change the rewards and add another (2 to 4 in all).
"Launch A/B" trains every variant with the form's other settings, one after another, on the same seed, prompts
and held-out set. The list of variants lives in the browser tab (a gr.State); the runs and the experiment live in
the store, where the Compare tab's "A/B" section finds them. Pure functions first, layout and wiring after.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import runner
from ..config import Limits, RewardSpec, RunSpec
from ..errors import ConfigError
from ..experiments import MAX_VARIANTS, MIN_VARIANTS, NAME_RE, RESERVED, start_experiment
from ..rewards import build_reward
from . import access, controls, quota, uploads
from .common import guarded
from .views import esc

INTRO = (f"Train {MIN_VARIANTS} to {MAX_VARIANTS} reward designs on matched seeds: tick a reward set above and "
         "press **Add variant**, change the rewards, add another. **Launch A/B** trains each variant with the other "
         "settings of this form, one after another, on the same prompts in the same order; the Compare tab's A/B "
         "section then ranks them against the base model by the checks, not by their own rewards.")  # fmt: skip


# --- plain functions (tested without a server) ---------------------------------------------------------------
def add_variant(variants: list[dict] | None, name: str | None, rewards: list[RewardSpec]) -> list[dict]:
    """The list with one more variant: `name` (default A, B, ...) and this reward set (empty = the task's)."""
    variants = list(variants or [])
    if len(variants) >= MAX_VARIANTS:
        raise ConfigError(f"an A/B takes at most {MAX_VARIANTS} variants: clear the list, or launch these")
    name = (name or "").strip() or chr(ord("A") + len(variants))
    if not NAME_RE.fullmatch(name) or name.lower() in RESERVED:
        raise ConfigError(f"variant name {name!r}: use up to 32 letters, digits, '_', '.', '+' or '-', and not "
                          f"{', '.join(RESERVED)}")  # fmt: skip
    if name in {v["name"] for v in variants}:
        raise ConfigError(f"there is a variant {name!r} already: give this one another name")
    for r in rewards:
        build_reward(r)  # a wrong parameter is reported now, not at launch
    specs = [{"name": r.name, "weight": r.weight, "params": dict(r.params)} for r in rewards]
    if any(v["rewards"] == specs for v in variants):
        raise ConfigError("a variant with exactly these rewards is in the list: change the rewards first")
    return [*variants, {"name": name, "rewards": specs}]


def variants_markdown(variants: list[dict] | None) -> str:
    """The list as the visitor reads it: one line per variant, its rewards."""
    if not variants:
        return "*No variants yet.*"
    lines = []
    for v in variants:
        rewards = " + ".join(esc(str(RewardSpec(**r))) for r in v["rewards"]) or "the task's own rewards"
        lines.append(f"- **{esc(v['name'])}**: {rewards}")
    more = len(variants) < MIN_VARIANTS
    return "\n".join(lines) + (
        f"\n\n*Add at least {MIN_VARIANTS - len(variants)} more to launch.*" if more else ""
    )


def launch_variants(base: RunSpec, variants: list[dict], limits: Limits, token: str | None,
                    request: Any = None) -> tuple[str, str]:  # fmt: skip
    """Validate as a single launch does, for every variant and the visitor's share of runs; start the experiment.
    Returns (the first run's id, the message for the visitor)."""
    uploads.check_visitor_paths(base)
    limits.check(base)
    keys = quota.visitor_keys(token, request) if limits.max_runs_per_visitor is not None else []
    cap = limits.max_runs_per_visitor
    if cap is not None and keys and len(quota.active_runs(keys)) + len(variants) > cap:
        raise limits.refusal("max_runs_per_visitor", f"{len(quota.active_runs(keys))} run(s) queued or training "
                             f"and {len(variants)} variants", "launch fewer variants, or wait for your runs")  # fmt: skip
    try:
        exp = start_experiment(base, [{"name": v["name"], "rewards": v["rewards"]} for v in variants], limits)
    except runner.RunnerBusy as e:  # the runner's words name CLI commands; a visitor needs the browser's
        raise runner.RunnerBusy(f"The queue has no room for {len(variants)} runs ({e}). Try again when a run "
                                "finishes, or with fewer variants.") from None  # fmt: skip
    for rid in exp.runs.values():
        access.record_owner(rid, token)
        quota.record(rid, keys)
    names = ", ".join(f"{n} (run {r})" for n, r in exp.runs.items())
    return next(iter(exp.runs.values())), (f"A/B {exp.id} launched: {names}. They train one after another; "
                                           "compare them on the Compare tab's A/B section when they finish.")  # fmt: skip


# --- layout and wiring ---------------------------------------------------------------------------------------
def build_variants(c: dict[str, Any]) -> None:
    """The section under the Launch button (the reward picker it reads is further down the form)."""
    with gr.Accordion("A/B of reward designs", open=False, elem_id="wb-ab-box"):
        gr.Markdown(INTRO)
        with gr.Row():
            c["variant_name"] = gr.Textbox(label="variant name", placeholder="A, B, … (optional)", scale=2,
                                           elem_id="wb-variant-name")  # fmt: skip
            c["add_variant"] = gr.Button("Add variant", size="sm", elem_id="wb-add-variant", scale=1)
            c["clear_variants"] = gr.Button("Clear", size="sm", elem_id="wb-clear-variants", scale=0)
        c["variants_md"] = gr.Markdown(variants_markdown([]), elem_id="wb-variants")
        c["launch_ab"] = gr.Button("Launch A/B", variant="primary", elem_id="wb-launch-ab", interactive=False)
    # a hidden JSON value rather than a State, so an API client can pass the variants too (/launch_ab)
    c["variants"] = gr.JSON([], visible=False, elem_id="wb-variants-json")


def wire_variants(c: dict[str, Any], limits: Limits, launch_kwargs: dict, names: list[str], flat_names: list[str],
                  poll) -> None:  # fmt: skip
    """Add/Clear edit the list; Launch A/B starts it and the tab watches the first variant (then the next)."""
    reward_inputs = [c["reward_sel"], *c["reward_vals"]]

    @guarded(4)
    def add(variants, name, selected, *flat):
        out = add_variant(variants, name, controls.rewards_from_values(selected, list(flat)))
        return out, variants_markdown(out), gr.update(interactive=len(out) >= MIN_VARIANTS), ""

    c["add_variant"].click(add, [c["variants"], c["variant_name"], *reward_inputs],
                           [c["variants"], c["variants_md"], c["launch_ab"], c["variant_name"]],
                           api_visibility="private")  # fmt: skip
    c["clear_variants"].click(lambda: ([], variants_markdown([]), gr.update(interactive=False)), None,
                              [c["variants"], c["variants_md"], c["launch_ab"]], api_visibility="private")  # fmt: skip

    @guarded(3)
    def launch_ab(request: gr.Request, variants=None, token=None, rewards=None, **values):
        flat = [values.pop(k) for k in flat_names]
        base = controls.spec_from_values(names, [values[n] for n in names],
                                         controls.rewards_from_values(rewards, flat))  # fmt: skip
        run_id, msg = launch_variants(base, variants or [], limits, token, request)
        gr.Info(msg)
        return run_id, "", gr.update(interactive=True)

    c["launch_ab"].click(launch_ab, outputs=[c["watch"], c["seen"], c["stop"]],
                         inputs_kwargs={"variants": c["variants"], **launch_kwargs}, api_name="launch_ab",
                         concurrency_limit=1).then(
        poll, [c["watch"], c["seen"]], c["watch_out"], show_progress="hidden", api_visibility="private")  # fmt: skip
