"""The UI's callbacks and views as plain functions: no server, no model. Runs are written into the store by hand
(fake steps with known rewards), so every number the UI shows can be checked against a hand computation.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest

from workbench import runner
from workbench.config import PRESETS, ConfigError, Limits, RewardSpec, RunSpec, spec_fields
from workbench.errors import CompareError
from workbench.osutil import process_start_time
from workbench.store import create_run, open_run
from workbench.ui import (
    access,
    compare,
    controls,
    insights,
    learn,
    plots,
    runs,
    settings,
    train,
    uploads,
    views,
)
from workbench.ui.common import guarded, user_message

SKIP = gr.skip()


def fake_step(step: int, groups: list[list[float]], clipped: float = 0.0, kl: float = 0.0, **extra):
    """A StepResult-like record: one group per list of rewards, advantages computed as TRL does."""
    eps = []
    for g, rs in enumerate(groups):
        m, s = statistics.mean(rs), statistics.stdev(rs)
        for i, r in enumerate(rs):
            eps.append({"step": step, "group": g, "prompt": f"prompt <{g}>", "completion": f"answer {i} <b>x</b>",
                        "rewards": {"length": r}, "reward": r, "advantage": (r - m) / (s + 1e-4), "length": 10 + i,
                        "truncated": i == 0 and clipped > 0})  # fmt: skip
    every = [r for rs in groups for r in rs]
    zero = sum(statistics.pstdev(rs) == 0 for rs in groups) / len(groups)
    metrics = {"reward": statistics.mean(every), "reward_std": statistics.stdev(every),
               "rewards/length/mean": statistics.mean(every), "frac_reward_zero_std": zero,
               "completions/mean_length": 12.0, "completions/min_length": 10, "completions/max_length": 14,
               "completions/clipped_ratio": clipped, "kl": kl, "entropy": 1.0, "loss": 0.01, "grad_norm": 0.5,
               "step_time": 2.0, "time/generation": 1.2, "time/rewards": 0.1, "time/training": 0.7, **extra}  # fmt: skip
    return SimpleNamespace(step=step, episodes=eps, metrics=metrics)


def make_run(steps: int = 3, state: str = "finished", alive: bool = False, **spec_changes):
    run = create_run(RunSpec(max_steps=10, **spec_changes))
    for s in range(1, steps + 1):
        run.append_step(fake_step(s, [[0.0, 0.5, 1.0, 0.5], [0.2, 0.2, 0.2, 0.2]]))
    me = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())} if alive else {}
    run.set_status(state, None if state == "running" else "done", **me)
    return run


# --- plots ---------------------------------------------------------------------------------------------------


def test_plots_draw_placeholders_before_the_first_step_and_curves_after():
    empty = pd.DataFrame()
    for fig in (
        plots.reward_figure(empty),
        plots.reward_functions_figure(empty),
        plots.diagnostics_figure(empty),
    ):
        assert len(fig.data) == 0 and "Waiting for the first step" in fig.layout.annotations[0].text
    df = make_run(steps=3).metrics_df()
    fig = plots.reward_figure(df)
    mean = next(t for t in fig.data if t.name == "mean")
    assert list(mean.x) == [1, 2, 3] and mean.y[0] == pytest.approx(0.35)  # (0 + .5 + 1 + .5 + 4 × .2) / 8
    upper, lower = fig.data[0], fig.data[1]  # the ±std band: lower fills up to upper
    assert lower.fill == "tonexty" and upper.y[0] - lower.y[0] == pytest.approx(2 * df["reward_std"][0])
    assert [t.name for t in plots.reward_functions_figure(df).data] == ["length"]
    diag = plots.diagnostics_figure(df, cap=48)
    names = {t.name for t in diag.data}
    assert {"kl", "entropy", "loss", "frac_reward_zero_std", "grad_norm", "generation", "training"} <= names
    assert all(f.to_json() for f in (fig, diag))  # serialisable for gr.Plot
    # A metric that is not logged (kl with beta 0) gets its note in its own panel, the third of the top row: in
    # paper coordinates, since plotly.js places "x3 domain" of a panel without traces in the first panel.
    no_kl = plots.diagnostics_figure(df.drop(columns=["kl"]), cap=48)
    (note,) = [a for a in no_kl.layout.annotations if a.text == "not logged"]
    kl_panel = no_kl.get_subplot(1, 3)
    assert note.xref == "paper" and kl_panel.xaxis.domain[0] < note.x < kl_panel.xaxis.domain[1]
    assert kl_panel.yaxis.domain[0] < note.y < kl_panel.yaxis.domain[1]


def test_overlay_and_summary_figures():
    a, b = make_run(steps=2), make_run(steps=4)
    fig = plots.overlay_figure({a.id: a.metrics_df(), b.id: b.metrics_df()}, "reward")
    assert [len(t.x) for t in fig.data] == [2, 4]
    summary = pd.DataFrame({"base_mean": [0.2, 0.3], "tuned_mean": [0.5, 0.6], "diff": [0.3, 0.3],
                            "ci_low": [0.1, -0.1], "ci_high": [0.5, 0.7], "wins": [3, 4], "ties": [0, 0],
                            "losses": [1, 0]}, index=["length", "total"])  # fmt: skip
    fig = plots.summary_figure(summary.reset_index().rename(columns={"index": "reward"}))
    assert {t.name for t in fig.data} == {"base", "tuned", "difference"}


# --- views and insights ---------------------------------------------------------------------------------------


def test_status_card_counts_steps_gives_an_eta_and_escapes():
    st = {"state": "running", "steps_done": 4, "max_steps": 10, "started": 100.0, "reason": "<i>training</i>"}
    metrics = [{"step": i, "step_time": 2.0, "reward": 0.1 * i} for i in range(1, 5)]
    p = views.progress(st, metrics, now=110.0)
    assert p["per_step"] == 2.0 and p["eta"] == 12.0 and p["frac"] == 0.4
    card = views.status_html("r1", st, metrics, {"task": "<script>x</script>"})
    assert (
        "4</b> / 10 steps" in card and "12 s" in card and "<script>" not in card and "&lt;script&gt;" in card
    )
    assert "+0.300 since step 1" in card


def test_a_run_that_can_go_on_points_at_the_runs_tab():
    # the store keeps the reason as a fact; the browser adds where to continue (the CLI adds its own command)
    st = {"state": "interrupted", "reason": "killed by the user", "steps_done": 2, "max_steps": 10}
    assert views.ui_reason(st) == "killed by the user; resume it on the Runs tab"
    assert views.run_row("r1", st, {}, [])["reason"] == "killed by the user; resume it on the Runs tab"
    assert views.ui_reason({"state": "failed", "reason": "reward length: boom"}) == "reward length: boom"


def test_groups_html_escapes_text_and_colours_rows_by_advantage():
    eps = fake_step(1, [[0.0, 1.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]]).episodes
    html = insights.groups_html(eps, step=1)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "prompt &lt;0&gt;" in html
    assert "rgba(5,150,105" in html and "rgba(220,38,38" in html  # better and worse than the group
    assert "no spread: teaches nothing" in html  # the second group


def test_warnings_fire_on_the_patterns_a_practitioner_cares_about():
    rows = [{"step": s, "frac_reward_zero_std": 0.0, "completions/clipped_ratio": 0.0, "kl": 0.01,
             "rewards/a/mean": 0.1 * s, "rewards/b/mean": 1 - 0.1 * s, "reward": 0.5, "loss": 0.1} for s in range(1, 9)]  # fmt: skip
    calm = pd.DataFrame(rows)
    text = " ".join(insights.run_warnings(calm))
    assert "'a' is rising" in text and "'b' falls" in text
    rows[-1].update({"frac_reward_zero_std": 0.75, "completions/clipped_ratio": 0.5, "kl": 0.4})
    text = " ".join(insights.run_warnings(pd.DataFrame(rows), cap=48))
    assert "75% of the groups" in text and "max_completion_length=48" in text and "KL jumped to 0.400" in text
    steady = pd.DataFrame([{"step": s, "frac_reward_zero_std": 0.0, "kl": 0.01, "reward": 0.5, "loss": 0.1,
                            "rewards/a/mean": 0.5, "rewards/b/mean": 0.5} for s in range(1, 9)])  # fmt: skip
    assert insights.run_warnings(steady) == []


def test_advantage_table_matches_the_engine_formula():
    eps = fake_step(1, [[0.0, 0.5, 1.0, 0.5]]).episodes
    table = insights.advantage_table(eps, 0)
    # by hand: mean 0.5, sample std sqrt(1/6) = 0.408; (1 - 0.5) / 0.408 = 1.2244
    assert table["advantage (computed here)"].iloc[2] == pytest.approx(0.5 / (0.40825 + 1e-4), rel=1e-3)
    assert (table["advantage (computed here)"] - table["advantage (engine)"]).abs().max() < 1e-9
    assert insights.advantage_table(eps, 0, "none")["advantage (computed here)"].iloc[0] == -0.5


def test_config_diff_shows_only_what_differs():
    a, b = RunSpec(max_steps=5).to_dict(), RunSpec(max_steps=9, rewards=["length:2"]).to_dict()
    diff = views.config_diff({"a": a, "b": b})
    assert set(diff["setting"]) == {"max_steps", "rewards"} and list(diff.columns) == ["setting", "a", "b"]
    one = views.config_diff({"a": a})
    assert list(one["setting"]) == ["max_steps"] and one["(default)"][0] == "30"


# --- controls: every spec field gets a control; values round-trip ------------------------------------------------


def test_every_spec_field_has_a_control_and_presets_round_trip():
    assert set(controls.field_order()) == {f.name for f in spec_fields()} - {"rewards"}
    for name in PRESETS:
        spec = controls.preset_spec(name, Limits())
        sel, flat = controls.values_from_rewards(
            [RewardSpec("length", 2.0, {"target": 8}), RewardSpec("regex", params={"pattern": "x"})]
        )
        again = controls.spec_from_values(controls.field_order(), controls.values_from_spec(spec),
                                          controls.rewards_from_values(sel, flat))  # fmt: skip
        assert again.replace(rewards=[]) == spec.replace(rewards=[])
        assert [str(r) for r in again.rewards] == ["length:2,target=8", "regex:1,pattern=x"]


def test_limits_clip_presets_and_bad_values_name_the_setting():
    spec = controls.preset_spec("reasoning", Limits(max_steps=12, max_completion_length=40))
    assert spec.max_steps == 12 and spec.max_completion_length == 40
    values = controls.values_from_spec(spec)
    values[controls.field_order().index("num_generations")] = None
    with pytest.raises(ConfigError, match="num_generations is empty"):
        controls.spec_from_values(controls.field_order(), values, [])
    values[controls.field_order().index("num_generations")] = 1.5
    with pytest.raises(ConfigError, match="num_generations=1.5 must be a whole number"):
        controls.spec_from_values(controls.field_order(), values, [])


def test_space_settings(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert settings.default_model() == "smollm2-135m-instruct" and settings.server_name() == "127.0.0.1"
    assert settings.server_port() == 7999
    monkeypatch.setenv("SPACE_ID", "someone/grpo-workbench")
    assert (
        settings.default_model() == "HuggingFaceTB/SmolLM2-135M-Instruct"
        and settings.server_name() == "0.0.0.0"
    )
    assert controls.preset_spec("quick", Limits()).model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setenv("WORKBENCH_MAX_STEPS", "40")
    limits = settings.deployment_limits()  # the owner's cap wins; an unset one gets the Space default
    assert (
        limits.max_steps == 40
        and limits.max_completion_length == settings.SPACE_DEFAULT_CAPS["max_completion_length"]
    )


# --- uploads and visitor input -------------------------------------------------------------------------------


def test_upload_is_copied_under_a_random_name_and_checked(tmp_path):
    src = tmp_path / "mine.csv"
    src.write_text("prompt,answer\nWhat is 2+2?,4\n")
    dest = uploads.save_upload(src, "../../evil name.CSV", Limits())
    assert dest.parent == uploads.uploads_dir() and dest.suffix == ".csv" and "evil" not in dest.name
    assert dest.read_text() == src.read_text() and uploads.is_upload(str(dest))
    with pytest.raises(ValueError, match="not a dataset file"):
        uploads.save_upload(src, "run.py", Limits())
    with pytest.raises(ValueError, match="above this server's limit of 1e-05 MB"):
        uploads.save_upload(src, "mine.csv", Limits(max_upload_mb=0.00001))


def test_on_a_space_settings_may_not_name_server_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACE_ID", "someone/space")
    for bad in (RunSpec(task="file:/etc/passwd"), RunSpec(model="/root/model"), RunSpec(model="../x"),
                RunSpec(rewards=[RewardSpec("reward_model", params={"model": "/srv/rm"})])):  # fmt: skip
        with pytest.raises(PermissionError):
            uploads.check_visitor_paths(bad)
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    ok = uploads.save_upload(src, "p.jsonl", Limits())
    uploads.check_visitor_paths(RunSpec(task=f"file:{ok}", model="HuggingFaceTB/SmolLM2-135M-Instruct"))
    monkeypatch.delenv("SPACE_ID")
    uploads.check_visitor_paths(
        RunSpec(task=f"file:{src}", model=str(tmp_path))
    )  # locally: the owner's files


def test_on_a_space_only_the_launching_browser_may_stop_a_run(monkeypatch):
    access.check_owner("r1", None, "stop")  # locally: anyone
    monkeypatch.setenv("SPACE_ID", "someone/space")
    mine, theirs = access.new_token(), access.new_token()
    access.record_owner("r1", mine)
    access.check_owner("r1", mine, "stop")
    with pytest.raises(PermissionError, match="started by another visitor"):
        access.check_owner("r1", theirs, "stop")


# --- callbacks -------------------------------------------------------------------------------------------------


def test_guarded_callbacks_raise_the_visitors_message_and_quiet_ones_skip():
    def boom():
        raise ConfigError("lower max_steps")

    with pytest.raises(gr.Error, match="lower max_steps"):  # the API client sees it, not an empty result
        guarded(2)(boom)()
    assert guarded(2, quiet=True)(boom)() == (SKIP, SKIP)
    assert "Something went wrong (KeyError" in user_message(KeyError("x"))
    assert user_message(CompareError("pick a run with saved weights")) == "pick a run with saved weights"


def test_poll_redraws_only_when_a_new_step_lands():
    run = make_run(steps=1, state="running", alive=True)
    out = train.poll(None, "")
    assert out[0] == run.id and "1</b> / 10 steps" in out[2] and len(out[3].data) >= 3  # reattached + drawn
    assert train.poll(run.id, out[1]) == tuple([SKIP] * 11)  # nothing new: nothing sent
    run.append_step(fake_step(2, [[0.0, 1.0, 0.0, 1.0]]))
    again = train.poll(run.id, out[1])
    assert again[1] != out[1] and list(again[3].data[2].x) == [1, 2] and "step 2" in again[6].lower()
    run.set_status("stopped", "stopped at step 2")
    third = train.poll(run.id, again[1])
    assert "stopped at step 2" in third[2] and third[3] == SKIP  # state changed, plots untouched


def test_a_second_tab_follows_the_run_another_tab_started():
    old = make_run(steps=2)
    assert train.pick_run(None) == old.id  # nothing running: the newest run
    new = make_run(steps=0, state="running", alive=True)
    assert train.pick_run(old.id) == new.id  # watching a finished run, a new one starts: switch to it


def test_launch_starts_then_queues_then_says_the_queue_is_full(stand_in):
    limits = Limits(queue_size=1, max_steps=50)
    spec = controls.preset_spec("quick", limits).replace(model="tiny-random")
    a, msg = train.launch_spec(spec, limits, None)
    assert "started" in msg and open_run(a).status()["state"] == "running"
    b, msg = train.launch_spec(spec, limits, None)
    assert "queued" in msg and open_run(b).status()["state"] == "queued"
    with pytest.raises(runner.RunnerBusy, match="queue is full"):
        train.launch_spec(spec, limits, None)
    with pytest.raises(ConfigError, match="above this server's limit of 50"):
        train.launch_spec(spec.replace(max_steps=51), limits, None)


def test_runs_overview_exports_and_learn_view(tmp_path):
    run = make_run(steps=3)
    (run.dir / "adapter").mkdir()
    (run.dir / "adapter" / "adapter_config.json").write_text("{}")
    table, choices = runs.runs_overview()
    row = table.iloc[0]
    assert row["run"] == run.id and row["steps"] == "3/10" and row["reward (first → last)"] == "0.350 → 0.350"
    assert choices[0][1] == run.id
    with zipfile.ZipFile(runs.export_adapter(run.id)) as z:
        assert z.namelist() == ["adapter_config.json"]
    assert RunSpec.from_json(Path(runs.export_config(run.id)).read_text()).max_steps == 10
    caption, table, fig, groups = learn.group_view(run.id, 0)
    assert run.id in caption and "match the engine" in caption and groups == [0, 1]
    assert table["reward r"].tolist() == [0.0, 0.5, 1.0, 0.5]


def test_learn_shows_an_example_before_any_run():
    caption, table, fig, groups = learn.group_view(None, 0)
    assert "made-up" in caption and len(table) == len(learn.EXAMPLE) and groups == [0]


def test_compare_helpers_escape_and_summarise():
    table = pd.DataFrame({"prompt": ["<q>"], "base": ["<img src=x>"], "tuned": ["fine"], "base/total": [0.1],
                          "tuned/total": [0.9]})  # fmt: skip
    html = compare.pairs_html(table)
    assert "<img" not in html and "&lt;img" in html and html.count("wb-win") == 1
    # a degenerate answer is marked with its reason, and the headline gives the verdict and the counts per side
    table["tuned:degenerate_reason"] = ["repeats 'no' 3+ times in a row"]
    html = compare.pairs_html(table)
    assert "degenerate: repeats" in html and html.count("wb-bad") == 1
    verdict = {
        "level": "hacked",
        "headline": "Reward up, but the answers got worse: <b>",
        "reasons": ["a", "b"],
    }
    text = compare.headline(verdict, {"base": 0, "tuned": 1}, 1)
    assert (
        "Reward up" in text
        and "<b>" not in text
        and "- b" in text
        and "base **0** of 1, tuned **1** of 1" in text
    )
    with pytest.raises(CompareError, match="prompt is empty"):
        compare.comparison_rows("x", compare.OWN, 1, "  ", "")
    assert compare.comparison_rows("x", compare.OWN, 1, "Hi", "4") == [{"prompt": "Hi", "answer": "4"}]


def test_the_app_builds_with_its_api(monkeypatch):
    from workbench.ui import build_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = build_app(Limits(max_steps=20))
    names = set(demo.get_api_info()["named_endpoints"])
    assert {"/launch", "/stop", "/compare", "/runs", "/run_status", "/download_adapter"} <= names


def test_the_status_api_answers_a_wrong_run_id_with_what_to_change(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    for bad in ("../../etc/passwd", "20250101-120000-a1b2c3", ""):
        with pytest.raises(Exception, match="not a run id|no run|list runs") as e:
            client.predict(bad, api_name="/run_status")
        assert "upstream Gradio app has raised an exception" not in str(e.value)


def test_an_upload_becomes_a_task_or_says_what_is_wrong(tmp_path):
    good = tmp_path / "qa.csv"
    good.write_text("prompt,answer\n" + "".join(f"What is {i}+{i}?,{2 * i}\n" for i in range(10)))
    task_value, task = train.accept_upload(str(good), "qa.csv", 256, 3, 0, Limits())
    assert task_value.startswith("file:") and uploads.is_upload(task_value[5:])
    assert len(task.eval) == 3 and len(task.train) == 7 and "answer" in task.columns
    assert "7 training prompts, 3 held out" in train.describe_upload(task, "qa.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nhi,1\n")
    with pytest.raises(ValueError) as e:
        train.accept_upload(str(bad), "bad.csv", 256, 3, 0, Limits())
    assert "bad.csv has no 'prompt' column" in str(e.value) and str(uploads.uploads_dir()) not in str(e.value)
    assert len(list(uploads.uploads_dir().iterdir())) == 1  # the refused copy is gone


def test_the_app_and_the_cli_import_without_torch():
    # The web server and `workbench runs` must not pay torch's import (~1 s, ~230 MB) before a model is needed.
    code = "import sys, workbench.ui.build, workbench.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
