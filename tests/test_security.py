"""Hosting in public (issue 12): each hole a hostile visitor found, closed, with the input that opened it.

Fast tests call the functions behind the endpoints; the flood test (slow) launches the app as a Space in its own
process and hammers its API with every hostile input while another client times its answers.
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
from workbench.limits import LIMITS
from workbench.rewards import build_reward
from workbench.store import create_run, list_runs, open_run

# A pattern that backtracks exponentially on any text without \x01 (in `re` and in `regex` alike).
EVIL_REGEX = r"(.|..)*(?=\x01)"


# --- limits: one table, every cap named with its variable --------------------------------------------------------


def test_every_cost_has_a_space_default_and_the_refusal_names_its_variable(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/space")
    limits = Limits.from_env()
    for lim in LIMITS:
        assert getattr(limits, lim.field) == lim.space, lim.env
    cases = [
        (dict(num_generations=16, prompts_per_step=4), "WORKBENCH_MAX_COMPLETIONS_PER_STEP"),
        (dict(max_prompt_length=4096), "WORKBENCH_MAX_PROMPT_LENGTH"),
        (dict(max_completion_length=1024), "WORKBENCH_MAX_COMPLETION_LENGTH"),
        (dict(num_iterations=8), "WORKBENCH_MAX_NUM_ITERATIONS"),
        (dict(max_steps=5000), "WORKBENCH_MAX_STEPS"),
        (dict(use_lora=False), "WORKBENCH_ALLOW_FULL_FINETUNE"),
    ]
    for changes, env in cases:
        with pytest.raises(ConfigError, match=env):
            limits.check(RunSpec(**changes))
    with pytest.raises(ConfigError, match="WORKBENCH_MAX_COMPARE_TOKENS"):
        limits.check_compare(8, 4096)
    with pytest.raises(ConfigError, match="WORKBENCH_MAX_COMPARE_PROMPTS"):
        limits.check_compare(1000, None)
    monkeypatch.setenv("WORKBENCH_MAX_COMPLETIONS_PER_STEP", "64")  # the owner raises one; the rest stay
    monkeypatch.setenv("WORKBENCH_ALLOW_FULL_FINETUNE", "1")
    raised = Limits.from_env()
    raised.check(RunSpec(num_generations=16, prompts_per_step=4, use_lora=False))
    assert raised.max_steps == 200
    monkeypatch.delenv("SPACE_ID")
    assert Limits.from_env().max_prompt_length is None  # locally the machine's owner decides


def test_the_runner_refuses_over_the_cap_before_creating_anything(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/space")
    with pytest.raises(ConfigError, match="completions per step"):
        runner.start_run(RunSpec(num_generations=64, prompts_per_step=64, train_size=256))
    assert list_runs() == []


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
    with pytest.raises(PermissionError):  # the plain function raises; guarded() turns it into gr.Error for the client
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
    assert build_reward(RewardSpec("regex", params={"pattern": r"\d+"}))(completions=["a 42", "none"]) == [1.0, 0.0]


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

    for task in ("hub:org/data", "hub:csv", "file:org/data/secret.csv", f"file:{space_with_secrets}/org/data/secret.csv"):
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


# --- visitor work runs in a child process that is killed when it overruns -------------------------------------------


def test_the_sandbox_kills_what_overruns_and_passes_back_results_errors_and_progress():
    import sandbox_targets as t

    from workbench.sandbox import Cancelled, LimitExceeded, run_limited

    kw = dict(what="the test work", env="WORKBENCH_TEST_S")
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match="took longer than 1 s.*WORKBENCH_TEST_S"):
        run_limited(t.spin, 600, timeout_s=1, **kw)
    assert time.monotonic() - t0 < 10
    with pytest.raises(LimitExceeded, match="more than 256 MB.*WORKBENCH_SANDBOX_MEMORY_MB"):
        run_limited(t.hog, 2048, timeout_s=30, memory_mb=256, **kw)
    with pytest.raises(Cancelled):
        run_limited(t.spin, 600, timeout_s=60, cancel=lambda: time.monotonic() - t0 > 0, **kw)
    with pytest.raises(ValueError, match="invalid literal"):
        run_limited(int, "x", timeout_s=30, **kw)
    seen = []
    assert run_limited(t.count_to, 3, timeout_s=30, progress=lambda f, m: seen.append(m), **kw) == 3
    assert seen == ["1 of 3", "2 of 3", "3 of 3"]


def test_a_hanging_reasoning_gym_setting_fails_in_time_and_the_caller_goes_on(monkeypatch):
    from workbench.sandbox import LimitExceeded
    from workbench.tasks import load_task
    from workbench.ui.train import suggested_rewards

    monkeypatch.setenv("WORKBENCH_TASK_TIMEOUT_S", "3")
    hang = "rg:basic_arithmetic,max_digits=12,max_terms=12"  # find_common_divisors over 12-digit numbers: hours
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match="longer than 3 s.*WORKBENCH_TASK_TIMEOUT_S"):
        load_task(RunSpec(task=hang))
    assert time.monotonic() - t0 < 15
    assert [r.name for r in suggested_rewards("rg:chain_sum")] == ["tag_count", "rg_verifier"]


@pytest.fixture
def evil_run(tmp_path):
    """A finished tiny-model run rewarded by a catastrophic regex, with a random LoRA adapter as its weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.models import load_model

    spec = RunSpec(model="tiny-random", task="concise", max_steps=1, eval_size=4, max_completion_length=12,
                   dtype="float32", device="cpu", rewards=[f"regex:1,pattern={EVIL_REGEX}"])  # fmt: skip
    run = create_run(spec, status="finished")
    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    tmp = run.adapter_tmp_dir()
    peft.save_pretrained(tmp)
    run.commit_adapter(tmp)
    return run


@pytest.mark.slow
def test_compare_runs_in_a_limited_child_and_a_catastrophic_regex_scores_zero(evil_run, monkeypatch):
    from workbench.ui.compare import HELD_OUT, run_comparison

    monkeypatch.setenv("SPACE_ID", "someone/space")  # the Space's memory limit applies to the child
    seen = []
    t0 = time.monotonic()
    cmp = run_comparison(evil_run.id, HELD_OUT, 4, "", "", "greedy", 0, None, progress=lambda f, m: seen.append(m))
    assert time.monotonic() - t0 < 120 and len(cmp.table) == 4 and seen  # progress came back from the child
    assert set(cmp.table["base/regex"]) <= {0.0} and set(cmp.table["tuned/regex"]) <= {0.0}
    with pytest.raises(ConfigError, match="WORKBENCH_MAX_COMPARE_TOKENS"):
        run_comparison(evil_run.id, HELD_OUT, 4, "", "", "greedy", 0, 5000)


# --- uploads: rows counted before a full read ----------------------------------------------------------------------


def test_an_upload_that_expands_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.errors import UploadError
    from workbench.ui.train import accept_upload

    monkeypatch.setenv("SPACE_ID", "someone/space")
    limits = Limits.from_env()
    many = tmp_path / "many.parquet"  # a million rows of one repeated prompt: a few KB on disk
    pq.write_table(pa.table({"prompt": pa.array(["hi"] * 1_000_000)}), many, compression="zstd")
    assert many.stat().st_size < 100_000
    t0 = time.monotonic()
    with pytest.raises(UploadError, match="has 1000000 rows.*limit of 100000.*WORKBENCH_MAX_UPLOAD_ROWS"):
        accept_upload(str(many), "many.parquet", 256, 24, 0, limits)
    wide = tmp_path / "wide.parquet"  # few rows, 60 MB of text uncompressed, a few KB compressed
    pq.write_table(pa.table({"prompt": [f"{i}" + "x" * 12_000_000 for i in range(5)]}), wide, compression="zstd")
    with pytest.raises(UploadError, match="uncompressed.*WORKBENCH_MAX_UPLOAD_MB"):
        accept_upload(str(wide), "wide.parquet", 256, 24, 0, limits)
    csv = tmp_path / "lines.csv"  # 200k one-character rows: 400 KB, far under the byte cap
    csv.write_text("prompt\n" + "a\n" * 200_000)
    with pytest.raises(UploadError, match="more than 100000 rows"):
        accept_upload(str(csv), "lines.csv", 256, 24, 0, limits)
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text('{"prompt": "a"}\n' * 100_001)
    with pytest.raises(UploadError, match="more than 100000 rows"):
        accept_upload(str(jsonl), "lines.jsonl", 256, 24, 0, limits)
    assert time.monotonic() - t0 < 30
    ok = tmp_path / "ok.csv"
    ok.write_text("prompt,answer\n" + "".join(f"q{i},{i}\n" for i in range(40)))
    assert len(accept_upload(str(ok), "ok.csv", 256, 8, 0, limits)[1].train) == 32


# --- model sizes from the hub's metadata, before any download ------------------------------------------------------


def test_a_model_too_big_for_the_space_is_refused_from_its_metadata(monkeypatch):
    from workbench import hub_meta

    monkeypatch.setenv("SPACE_ID", "someone/space")
    sizes = {"meta-llama/Llama-3.1-70B-Instruct": 70_600_000_000, "Qwen/Qwen2.5-0.5B-Instruct": 494_000_000,
             "org/huge-rm": 7_000_000_000}  # fmt: skip
    asked = []
    monkeypatch.setattr(hub_meta, "param_count", lambda repo: asked.append(repo) or sizes[repo])
    with pytest.raises(ConfigError, match="70,600M parameters.*limit of 600M.*WORKBENCH_MAX_MODEL_PARAMS_M"):
        runner.start_run(RunSpec(model="meta-llama/Llama-3.1-70B-Instruct"))
    rm = RewardSpec("reward_model", params={"model": "org/huge-rm"})
    with pytest.raises(ConfigError, match="reward model 'org/huge-rm'.*WORKBENCH_MAX_REWARD_MODEL_PARAMS_M"):
        runner.start_run(RunSpec(model="Qwen/Qwen2.5-0.5B-Instruct", rewards=[rm]))
    assert list_runs() == [] and "HuggingFaceTB/SmolLM2-135M-Instruct" not in asked  # the default is known
    hub_meta.check_model_sizes(RunSpec(model="HuggingFaceTB/SmolLM2-135M-Instruct"), Limits.from_env())
    monkeypatch.delenv("SPACE_ID")
    asked.clear()
    hub_meta.check_model_sizes(RunSpec(model="meta-llama/Llama-3.1-70B-Instruct"), Limits.from_env())
    assert asked == []  # locally there is no cap, so the hub is not even asked


def test_the_real_size_reader_refuses_what_the_hub_cannot_size(monkeypatch):
    import huggingface_hub
    from huggingface_hub.hf_api import RepoSibling, SafeTensorsInfo

    from workbench import hub_meta

    class Info:
        def __init__(self, safetensors=None, siblings=()):
            self.safetensors, self.siblings = safetensors, list(siblings)

    infos = {"a/st": Info(SafeTensorsInfo(parameters={"BF16": 123}, total=123)),
             "a/bin": Info(None, [RepoSibling("pytorch_model.bin", size=2_000), RepoSibling("x.msgpack", size=9)]),
             "a/none": Info(None, [RepoSibling("README.md", size=10)])}  # fmt: skip

    def fake_info(repo_id, **kw):
        if repo_id not in infos:
            raise OSError("offline")
        return infos[repo_id]

    monkeypatch.setattr(huggingface_hub, "model_info", fake_info)
    hub_meta.param_count.cache_clear()
    assert hub_meta.param_count("a/st") == 123 and hub_meta.param_count("a/bin") == 1000
    for repo, match in (("a/none", "no safetensors"), ("a/offline", "could not read the size")):
        with pytest.raises(ConfigError, match=match):
            hub_meta.param_count(repo)
    hub_meta.param_count.cache_clear()


# --- runs per visitor; a run's wall-clock time ------------------------------------------------------------------


def test_one_visitor_cannot_fill_the_queue(stand_in, monkeypatch):
    from types import SimpleNamespace

    from workbench.ui import quota, train

    monkeypatch.setenv("SPACE_ID", "someone/space")
    limits = Limits.from_env()  # 2 runs per visitor, a queue of 4
    me = SimpleNamespace(headers={"x-forwarded-for": "10.0.0.1, 10.9.9.9"}, client=None)
    other = SimpleNamespace(headers={}, client=SimpleNamespace(host="10.0.0.2"))
    spec = RunSpec(model="tiny-random")
    a, _ = train.launch_spec(spec, limits, "token-a", me)
    b, _ = train.launch_spec(spec, limits, "token-a", me)
    for token in ("token-a", "a-fresh-token"):  # a new browser token from the same address counts as the same visitor
        with pytest.raises(ConfigError, match=r"2 run\(s\) queued or training.*limit of 2.*WORKBENCH_MAX_RUNS_PER_VISITOR"):
            train.launch_spec(spec, limits, token, me)
    c, _ = train.launch_spec(spec, limits, "token-c", other)  # someone else still gets in
    assert len({a, b, c}) == 3 and set(quota.active_runs(quota.visitor_keys("token-a", me))) == {a, b}
    runner.stop_run(b)  # queued: taken out of the queue at once, so a slot of mine frees
    train.launch_spec(spec, limits, "token-a", me)


def test_a_run_past_its_wall_clock_limit_stops_itself_with_the_reason(monkeypatch):
    run = create_run(RunSpec(model="tiny-random", max_steps=10), status="queued")
    monkeypatch.setenv("WORKBENCH_MAX_RUN_MINUTES", "0.002")  # 0.12 s

    def slow_train(run, should_stop):
        steps = 0
        while not should_stop():
            steps += 1
            time.sleep(0.02)
        return "stopped", f"stopped at step {steps}/10"

    monkeypatch.setattr(worker, "train", slow_train)
    monkeypatch.setattr(runner, "launch_queued", lambda: [])
    assert worker.main(run.id) == 0
    st = open_run(run.id).status()
    assert st["state"] == "stopped" and "0.002 minutes" in st["reason"] and "WORKBENCH_MAX_RUN_MINUTES" in st["reason"]


def test_a_step_that_never_ends_is_ended_by_the_watchdog(tmp_path):
    import os
    import subprocess
    import sys

    run = create_run(RunSpec(model="tiny-random", max_steps=10), status="running")
    code = ("import time; from workbench.store import open_run; from workbench.worker import StopFlag; "
            f"StopFlag(open_run({run.id!r}), 0.0001).watchdog(grace_s=0.2); time.sleep(60)")  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), timeout=60)
    assert p.returncode == 1 and time.monotonic() - t0 < 30
    st = open_run(run.id).raw_status()
    assert st["state"] == "failed" and "WORKBENCH_MAX_RUN_MINUTES" in st["reason"]
