"""Visitor work in a child process that is killed when it overruns (issue 12): the sandbox itself, a reasoning-gym
setting that hangs, and Compare (its rewards are visitor settings) with a catastrophic regex.
"""

from __future__ import annotations

import time

import pytest

from workbench.config import RunSpec
from workbench.errors import ConfigError
from workbench.store import create_run

# A pattern that backtracks exponentially on any text without \x01 (in `re` and in `regex` alike).
EVIL_REGEX = r"(.|..)*(?=\x01)"

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
    hang = (
        "rg:basic_arithmetic,max_digits=12,max_terms=12"  # find_common_divisors over 12-digit numbers: hours
    )
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
    cmp = run_comparison(
        evil_run.id, HELD_OUT, 4, "", "", "greedy", 0, None, progress=lambda f, m: seen.append(m)
    )
    assert time.monotonic() - t0 < 120 and len(cmp.table) == 4 and seen  # progress came back from the child
    assert set(cmp.table["base/regex"]) <= {0.0} and set(cmp.table["tuned/regex"]) <= {0.0}
    with pytest.raises(ConfigError, match="WORKBENCH_MAX_COMPARE_TOKENS"):
        run_comparison(evil_run.id, HELD_OUT, 4, "", "", "greedy", 0, 5000)


def test_a_stop_ends_a_task_load_that_hangs_in_the_worker(monkeypatch):
    from workbench import worker
    from workbench.store import create_run

    monkeypatch.setenv("WORKBENCH_TASK_TIMEOUT_S", "600")  # the stop, not the limit, must end it
    run = create_run(RunSpec(model="tiny-random", task="rg:basic_arithmetic,max_digits=12,max_terms=12"))
    t0 = time.monotonic()
    state, reason = worker.train(run, lambda: time.monotonic() - t0 > 2)
    assert (state, reason) == ("stopped", "stopped while loading its task") and time.monotonic() - t0 < 30
