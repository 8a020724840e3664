"""Hosting in public (issue 12): each hole a hostile visitor found, closed, with the input that opened it.

Here: validation up front, no server file through any setting, the small ones. Also: test_limits.py (every cost
bounded), test_sandbox.py (visitor work in a killable child) and test_flood.py (the app as a Space, flooded with
every hostile input while another client times its answers).
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import gradio as gr
import pytest

from workbench import cli, runner, worker
from workbench.config import Limits, RewardSpec, RunSpec
from workbench.errors import ConfigError, RewardError, UserError
from workbench.rewards import build_reward
from workbench.store import create_run, list_runs, open_run

# A pattern that backtracks exponentially on any text without \x01 (in `re` and in `regex` alike).
EVIL_REGEX = r"(.|..)*(?=\x01)"

# --- validation up front -------------------------------------------------------------------------------------


def test_integral_floats_from_a_config_file_become_ints():
    spec = RunSpec.from_json(json.dumps({"seed": 0.0, "num_generations": 4.0, "max_steps": 3.0}))
    assert type(spec.seed) is int and type(spec.num_generations) is int and spec.max_steps == 3
    for bad, match in (({"seed": 0.5}, "whole number"), ({"max_steps": float("nan")}, "finite")):
        with pytest.raises(ConfigError, match=match):
            RunSpec.from_dict(bad)


def test_reward_specs_are_checked_before_a_worker_starts(tmp_path, capsys):
    for text, match in (("length:nan", "finite"), ("lenght:1", "did you mean 'length'"),
                        ("length:1,target=0", "above 0"), (f"regex:1,pattern={'(' * 3}", "not a valid")):  # fmt: skip
        with pytest.raises(RewardError, match=match):
            RunSpec.from_dict({"rewards": [text]})  # a config file, the CLI's flags, the UI's form
        with pytest.raises(RewardError, match=match):
            runner.start_run(RunSpec(rewards=[text]))  # the Python API: refused before anything is created
    # the CLI says so in one line and starts nothing
    assert cli.main(["train", "--model", "tiny-random", "--reward", "length:nan"]) != 0
    assert "finite" in capsys.readouterr().err and list_runs() == []


def test_a_refused_api_call_raises_a_gradio_error(monkeypatch):
    from workbench.ui import train

    monkeypatch.setenv("SPACE_ID", "someone/space")
    with pytest.raises(
        PermissionError
    ):  # the plain function raises; guarded() turns it into gr.Error for the client
        train.launch_spec(RunSpec(task="hub:/etc"), Limits.from_env(), "tok")
    from workbench.ui.common import guarded

    with pytest.raises(gr.Error, match="not a hub dataset id"):
        guarded(3)(train.launch_spec)(RunSpec(task="hub:/etc"), Limits.from_env(), "tok")


def test_the_workers_final_status_write_is_inside_its_error_handling(monkeypatch):
    run = create_run(RunSpec(model="tiny-random", max_steps=2), status="queued")
    monkeypatch.setattr(worker, "train", lambda run, should_stop: ("finished", None))
    started = []
    monkeypatch.setattr(runner, "launch_queued", lambda: started.append(1) or [])
    real = type(run).set_status

    def full_disk(self, state, *a, **kw):
        if state == "finished":
            raise OSError(28, "No space left on device")
        return real(self, state, *a, **kw)

    monkeypatch.setattr(type(run), "set_status", full_disk)
    assert worker.main(run.id) == 1 and started == [1]  # no traceback out of main; the queue still moves


# --- small ones ----------------------------------------------------------------------------------------------


def test_a_catastrophic_regex_scores_zero_in_bounded_time():
    fn = build_reward(RewardSpec("regex", params={"pattern": EVIL_REGEX}))
    texts = ["an ordinary answer of some length, like a model writes it"] * 4
    t0 = time.monotonic()
    assert fn(completions=texts) == [0.0] * 4
    assert time.monotonic() - t0 < 10  # `re` needs hours for these
    assert build_reward(RewardSpec("regex", params={"pattern": r"\d+"}))(completions=["a 42", "none"]) == [
        1.0,
        0.0,
    ]


def test_the_exported_script_keeps_a_hostile_title_inside_its_docstring(tmp_path):
    from workbench.tasks import load_task
    from workbench.trl_export import export_trl

    evil = 'x"""\nimport os; os.system("echo pwned")\n"""\\'
    spec = RunSpec(model=f"org/{evil}", task="concise", train_size=8, eval_size=4)
    out = export_trl(spec, load_task(spec), tmp_path / "trl")
    tree = ast.parse((out / "train.py").read_text())
    assert "pwned" in ast.get_docstring(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]
    assert calls == []


def test_checkpoints_load_without_unpickling_code():
    from workbench.grpo import engine

    src = Path(engine.__file__).read_text()
    assert "weights_only=True" in src and "weights_only=False" not in src  # resume itself: test_grpo_engine


def test_uploads_say_they_are_public_on_a_space(monkeypatch):
    from workbench.ui import build, uploads

    monkeypatch.setenv("SPACE_ID", "someone/space")
    assert "effectively public" in uploads.upload_note()
    assert "visible to every visitor" in build.header_html(Limits.from_env())


def test_open_run_rejects_paths():
    with pytest.raises(UserError):
        open_run("../../etc")


# --- no server file through any setting on a Space ----------------------------------------------------------------


@pytest.fixture
def space_with_secrets(monkeypatch, tmp_path):
    """A Space whose working folder holds a dataset folder, a model folder and a CSV, all id-shaped."""
    monkeypatch.setenv("SPACE_ID", "someone/space")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "data").mkdir(parents=True)
    rows = "".join(f"secret row {i},{i}\n" for i in range(8))
    (tmp_path / "org" / "data" / "secret.csv").write_text("prompt,answer\n" + rows)
    (tmp_path / "org" / "model").mkdir()
    (tmp_path / "org" / "model" / "config.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(task="hub:org/data"),  # an id-shaped relative folder: load_dataset reads it
        RunSpec(task="hub:/etc"),
        RunSpec(task="hub:../org/data"),
        RunSpec(task="hub:csv"),  # a builder name, not a dataset
        RunSpec(task="file:org/data/secret.csv"),  # relative
        RunSpec(task="file:/etc/passwd"),
        RunSpec(model="org/model"),  # an id-shaped relative folder: from_pretrained reads it
        RunSpec(model="/etc"),
        RunSpec(model="~/x"),
        RunSpec(rewards=[RewardSpec("reward_model", params={"model": "org/model"})]),
        RunSpec(rewards=[RewardSpec("reward_model", params={"model": "./org/model"})]),
        RunSpec(rewards=[RewardSpec("length", params={"unit": "tokens", "tokenizer": "org/model"})]),
    ],
    ids=lambda s: f"{s.task}|{s.model}|{[str(r) for r in s.rewards]}",
)
def test_a_setting_that_names_a_server_file_is_refused_on_a_space(space_with_secrets, spec):
    from workbench.ui import uploads

    with pytest.raises(PermissionError):
        uploads.check_visitor_paths(spec)


def test_the_loaders_refuse_server_files_on_a_space_whatever_the_ui_checked(space_with_secrets):
    from workbench.errors import ModelError, TaskError
    from workbench.models import resolve
    from workbench.rewards.model import load_reward_model
    from workbench.tasks import load_task

    for task in (
        "hub:org/data",
        "hub:csv",
        "file:org/data/secret.csv",
        f"file:{space_with_secrets}/org/data/secret.csv",
    ):
        with pytest.raises(TaskError, match="Space"):
            load_task(RunSpec(task=task, train_size=4, eval_size=1))
    for model in ("org/model", "./org/model", str(space_with_secrets / "org" / "model")):
        with pytest.raises(ModelError, match="path on the server"):
            resolve(model)
        with pytest.raises(RewardError, match="path on the server"):
            load_reward_model(model, "cpu")
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_locally_the_owner_may_name_their_own_files(space_with_secrets, monkeypatch):
    from workbench.tasks import load_task
    from workbench.ui import uploads

    monkeypatch.delenv("SPACE_ID")
    spec = RunSpec(task="file:org/data/secret.csv", train_size=4, eval_size=1)
    uploads.check_visitor_paths(spec.replace(task="hub:org/data", model="org/model"))
    assert load_task(spec).train[0]["prompt"].startswith("secret row")
