"""Every cost bounded on a Space (issue 12): the one table of limits, uploads counted before a full read, model
sizes from the hub's metadata, runs per visitor, a run's wall-clock time. Each refusal names its variable.
"""

from __future__ import annotations

import threading
import time

import pytest

from workbench import runner, worker
from workbench.config import Limits, RewardSpec, RunSpec
from workbench.errors import ConfigError
from workbench.limits import LIMITS
from workbench.store import create_run, list_runs, open_run

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
    pq.write_table(
        pa.table({"prompt": [f"{i}" + "x" * 12_000_000 for i in range(5)]}), wide, compression="zstd"
    )
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
    for token in (
        "token-a",
        "a-fresh-token",
    ):  # a new browser token from the same address counts as the same visitor
        with pytest.raises(
            ConfigError, match=r"2 run\(s\) queued or training.*limit of 2.*WORKBENCH_MAX_RUNS_PER_VISITOR"
        ):
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
    # the watchdog ends with the run: left armed, it would end this very process minutes later (os._exit)
    assert all(t.finished.is_set() for t in threading.enumerate() if isinstance(t, threading.Timer))
    st = open_run(run.id).status()
    assert (
        st["state"] == "stopped"
        and "0.002 minutes" in st["reason"]
        and "WORKBENCH_MAX_RUN_MINUTES" in st["reason"]
    )


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


def test_the_readme_lists_every_limit_with_its_defaults():
    from pathlib import Path

    from workbench.limits import table_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    # after changing a limit: python -c "from workbench.limits import table_markdown; print(table_markdown())"
    assert table_markdown() in readme
