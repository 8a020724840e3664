"""The reward design lab: the exploit battery and its flags, the pre-flight report on canned answers, replay on a run
stored by hand (its own rewards reproduce it exactly; another set flips what it should), the CLI, the TRL export's
check script and logged checks; and (slow) pre-flight on the bundled model within its time budget, a real engine's
steps replayed bit for bit and its first rollout reproduced by pre-flight, the exported script's logged checks."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workbench import cli
from workbench.config import PRESETS, RewardSpec, RunSpec
from workbench.grpo.advantages import group_advantages, weighted_rewards
from workbench.grpo.types import Episode, StepResult
from workbench.lab import battery, preflight
from workbench.lab.common import score_texts, spearman, weights_of
from workbench.lab.replay import replay
from workbench.rewards import build_rewards, prompt_text
from workbench.store import create_run
from workbench.tasks import Task, chat_messages, load_task, prompt_batches


def words(text: str) -> int:
    return len(text.split())


# --- the battery ------------------------------------------------------------------------------------------------
def test_exploit_texts_follow_the_cap_and_the_reference():
    ex = battery.exploit_texts({"prompt": "Capital of France?", "answer": ["Paris"]}, "Capital of France?", words,
                               cap=20, typical=6)  # fmt: skip
    assert ex["empty"] == "" and ex["echo"] == "Capital of France?"
    assert words(ex["repeat"]) == 20 and ex["repeat"].startswith(battery.PHRASE)  # up to the cap, not past it
    assert words(ex["ramble"]) == 20 and len(set(ex["ramble"].split())) > 10  # a ramble, not a repeat
    assert words(ex["symbols"]) == 6 and not any(
        c.isalnum() for c in ex["symbols"]
    )  # as long as a typical answer
    assert ex["reference"] == "Paris"
    assert "Paris" in ex["buried"] and words(ex["buried"]) == 20  # the reference survives the cut
    assert ex["wrong_format"].startswith("<think>") and "<answer>purple</answer>" in ex["wrong_format"]
    # a numeric reference gets a wrong number; no reference, no reference exploits
    ex = battery.exploit_texts({"prompt": "2+2?", "answer": "4"}, "2+2?", words, cap=8, typical=3)
    assert "<answer>5</answer>" in ex["wrong_format"]
    assert "reference" not in battery.exploit_texts({"prompt": "Write a poem."}, "Write a poem.", words, 8, 3)


def _task(rows: list[dict], rewards: list[RewardSpec]) -> Task:
    return Task("canned", "canned rows", train=rows, eval=rows[:1], rewards=rewards)


def _fake_sampler(answers_per_prompt):
    """A sampler that answers from a table instead of a model (cut = 40 words or more)."""

    def sample(spec, task, messages, progress=None):
        texts = [a for m in messages for a in answers_per_prompt(m[-1]["content"])]
        lens = [words(t) for t in texts]
        return {"texts": texts, "lengths": lens, "truncated": [n >= 40 for n in lens], "count": words}

    return sample


RAMBLE = " ".join(battery.RAMBLE)[:220]  # a long real answer that says nothing (about 40 words)
ROWS = [{"prompt": f"What is the capital of country {i}?", "answer": [f"City{i}"]} for i in range(4)] + [
    {"prompt": f"Write a short poem about topic {i}."} for i in range(4)
]


def _answers(prompt: str) -> list[str]:
    # two right answers of ~30 words, two rambles; open prompts get four rambles of different lengths
    ref = next((r["answer"][0] for r in ROWS if r["prompt"] == prompt and "answer" in r), None)
    if ref:
        return [f"The answer is {ref}. " + RAMBLE[:120], f"It is {ref}, as far as I know. " + RAMBLE[:100],
                RAMBLE, RAMBLE[:180]]  # fmt: skip
    return [RAMBLE, RAMBLE[:150], RAMBLE[:190], RAMBLE[:100]]


def test_preflight_flags_the_exploits_of_a_length_only_reward():
    spec = PRESETS["length-only"].replace(train_size=8, eval_size=1, max_completion_length=40)
    task = _task(ROWS, [])
    doc = preflight.preflight(spec, prompts=8, task=task, sampler=_fake_sampler(_answers))
    json.dumps(doc, allow_nan=False)  # one plain JSON document
    assert (doc["prompts"], doc["group_size"], doc["completions"]) == (8, 4, 32)
    flagged = {f["exploit"]: f for f in doc["flags"] if f["kind"] == "exploit"}
    # short anything beats ~30-word answers when the target is 12 words: the empty answer, symbol spam, the echo
    assert {"empty", "symbols", "echo"} <= set(flagged)
    assert (
        flagged["empty"]["reward"] == "length" and "correctness or minimum-length" in flagged["empty"]["fix"]
    )
    assert "add the repetition penalty" in flagged["symbols"]["fix"]
    assert flagged["empty"]["text"].startswith("the empty answer scores at or above")
    assert "ramble" not in flagged and "repeat" not in flagged  # as long as the cap: worse than real answers
    # every group has spread; the full ramble (40 words) hit the cap once per prompt
    assert doc["zero_spread"]["zero"] == 0 and doc["truncated"]["count"] == 8
    assert doc["rewards"][0]["name"] == "length" and doc["rewards"][0]["n"] == 32


def test_preflight_finds_a_buried_reference_and_keeps_the_bare_one_as_the_control():
    rewards = [RewardSpec("length", 1.0, {"target": 30}), RewardSpec("contains_answer", 2.0),
               RewardSpec("repetition", 1.0)]  # fmt: skip
    spec = RunSpec(task="concise", train_size=8, eval_size=1, max_completion_length=40, rewards=rewards)
    doc = preflight.preflight(spec, task=_task(ROWS, rewards), sampler=_fake_sampler(_answers))
    by = {e["exploit"]: e for e in doc["exploits"]}
    # contains_answer pays for the reference anywhere: the buried one is as good as a right answer
    assert by["buried"]["flagged"] and by["buried"]["reward"] == "contains_answer"
    assert "strict=true" in by["buried"]["fix"]
    assert (
        by["reference"]["prompts"] == 4 and not by["reference"]["flagged"]
    )  # the control beats real answers
    assert by["repeat"]["flagged"] is False  # the repetition penalty holds it down
    corr = doc["correlation"]
    assert corr["names"] == ["length", "contains_answer", "repetition"] and corr["matrix"][0][0] == 1.0


def test_zero_spread_truncation_and_correlation_are_flagged_in_plain_words():
    rewards = [RewardSpec("length", 1.0, {"target": 10}), RewardSpec("shorter", 1.0, {"limit": 50})]
    spec = RunSpec(task="concise", train_size=8, eval_size=1, max_completion_length=40, rewards=rewards)

    def same(prompt):  # every group: four copies of one cut-off answer, except the last prompt's
        n = 40 if "topic 3" not in prompt else 12
        return [" ".join(["word"] * (n + i * (n == 12))) for i in range(4)]

    doc = preflight.preflight(spec, task=_task(ROWS, rewards), sampler=_fake_sampler(same))
    kinds = {f["kind"]: f["text"] for f in doc["flags"]}
    assert doc["zero_spread"]["zero"] == 7 and "GRPO learns nothing from them" in kinds["signal"]
    assert "num_generations" in kinds["signal"]
    assert doc["truncated"]["count"] == 28 and "Raise max_completion_length" in kinds["truncation"]
    assert "move together" in kinds["correlation"]  # length (past the target) and shorter measure one thing


def test_a_saved_report_follows_a_run_launched_with_the_same_settings():
    spec = PRESETS["quick"].replace(train_size=8, eval_size=1)
    doc = {"prompts": 8, "flags": [], "kind": "preflight"}
    preflight.save(doc, spec)
    run = create_run(spec.replace(max_steps=7, learning_rate=1e-4))  # neither changes what pre-flight samples
    assert preflight.for_run(run) == doc and (run.dir / preflight.FILE).exists()
    assert preflight.for_run(create_run(spec.replace(temperature=0.7))) is None


# --- replay -----------------------------------------------------------------------------------------------------
SPEC = RunSpec(task="concise", train_size=8, eval_size=4, max_steps=3, eval_every=0)


def _store_steps(spec: RunSpec, steps: int):
    """A run whose steps are scored exactly as the engine scores them (float32), with hand-written answers."""
    run, task = create_run(spec), load_task(spec)
    rewards = build_rewards(task.rewards_for(spec))
    batches = prompt_batches(task.train, spec.prompts_per_step, spec.seed)
    for step in range(1, steps + 1):
        rows = next(batches)
        ref = [battery.reference_of(r) for r in rows]
        texts = [
            t for r in ref for t in (f"The answer is {r or 'this'}.", RAMBLE[:150], "no, no, no, no, no", "")
        ]
        G = spec.num_generations
        msgs = [chat_messages(r) for r in rows for _ in range(G)]
        per = score_texts(rewards, msgs, texts, [r for r in rows for _ in range(G)], task.columns)
        total = weighted_rewards(per, weights_of(rewards))
        adv, _ = group_advantages(total, G, spec.scale_rewards)
        eps = [Episode(step, i // G, prompt_text(msgs[i]), texts[i],
                       {n: None if math.isnan(v) else v for (n, _, _), v in zip(rewards, per[i].tolist(), strict=True)},
                       float(np.nan_to_num(total[i])), float(adv[i]), words(texts[i]), False)
               for i in range(len(texts))]  # fmt: skip
        run.append_step(StepResult(step, eps, {"reward": float(np.nanmean(total))}))
    return run, task


def test_replay_with_the_runs_own_rewards_changes_nothing():
    run, task = _store_steps(SPEC, 3)
    doc = replay(run, task.rewards_for(SPEC))
    assert (doc["steps"], doc["completions"], doc["groups"]) == (3, 24, 6)
    assert doc["changed_totals"] == 0.0 and doc["flipped"] == []
    assert doc["flips"] == {"up_to_down": 0, "down_to_up": 0, "lost_push": 0, "gained_push": 0}
    assert doc["rank_correlation"] == pytest.approx(1.0) and doc["old_reward"] == pytest.approx(
        doc["new_reward"]
    )
    json.dumps(doc, allow_nan=False)


def test_replay_with_a_long_target_flips_the_short_right_answer_down_and_the_ramble_up():
    run, task = _store_steps(SPEC, 3)
    t0 = time.perf_counter()
    doc = replay(run, [RewardSpec("length", 1.0, {"target": 30})])
    assert time.perf_counter() - t0 < 5
    # per group: "The answer is X." was pushed up (short and right), the ramble down; a 30-word target reverses both
    assert doc["flips"]["up_to_down"] == 6 and doc["flips"]["down_to_up"] == 6
    flips = {(f["from"], f["to"], f["completion"][:10]) for f in doc["flipped"]}
    assert ("up", "down", "The answer") in flips and ("down", "up", RAMBLE[:10]) in flips
    assert doc["rank_correlation"] < 0.5 and doc["new_rewards"] == ["length:1,target=30"]
    assert doc["old_per_reward"].keys() == {"length", "contains_answer", "repetition"}
    assert [s["step"] for s in doc["per_step"]] == [1, 2, 3]


def test_spearman_handles_ties_and_constants():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_cli_replay_and_preflight_json(capsys):
    run, _ = _store_steps(SPEC, 2)
    assert cli.main(["replay", run.id, "--reward", "length:1,target=30", "--steps", "2:2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 1 and doc["per_step"][0]["step"] == 2
    assert cli.main(["replay", run.id]) == 2
    assert "give the reward set to try" in capsys.readouterr().err
    assert cli.main(["preflight", "--run", run.id, "--json"]) == 2  # none saved for this run
    assert "has no pre-flight report" in json.loads(capsys.readouterr().out)["error"]
    assert cli.main(["replay", run.id, "--reward", "length:1,target=30"]) == 0
    assert "rank correlation of old and new advantages" in capsys.readouterr().out


# --- the TRL export ---------------------------------------------------------------------------------------------
def test_export_ships_the_preflight_report_and_a_check_that_reproduces_the_stored_scores(tmp_path, capsys):
    spec = SPEC.replace(eval_every=5)
    preflight.save({"prompts": 8, "group_size": 4, "flags": [{"kind": "exploit", "text": "the empty answer ..."}]},
                   spec)  # fmt: skip
    run, _ = _store_steps(spec, 2)
    assert cli.main(["export", run.id, "--trl", str(tmp_path / "trl"), "--json"]) == 0
    out = tmp_path / "trl"
    assert json.loads(capsys.readouterr().out)["stored_completions"] == 16
    assert json.loads((out / "preflight.json").read_text())["flags"][0]["text"] == "the empty answer ..."
    readme = (out / "README.md").read_text()
    assert (
        "## Before the big run" in readme
        and "python check_rewards.py" in readme
        and "the empty answer" in readme
    )
    src = (out / "train.py").read_text()
    assert "with_checks([fn for _, fn, _ in rewards], REWARDS)" in src and 'eval_strategy="steps"' in src
    assert "eval_steps=5" in src and "eval_dataset=evals" in src
    check = [sys.executable, str(out / "check_rewards.py")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(check, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "ok: 16 completions x 3 reward functions" in p.stdout, p.stdout + p.stderr
    # a grader that scores differently is caught: here, the stored score of one completion is off by 0.001
    lines = (out / "stored_completions.jsonl").read_text().splitlines()
    item = json.loads(lines[1])
    item["rewards"]["length"] += 1e-3
    (out / "stored_completions.jsonl").write_text("\n".join([lines[0], json.dumps(item), *lines[2:]]) + "\n")
    p = subprocess.run(check, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "1 score(s) differ" in p.stdout and "length: workbench" in p.stdout


def test_the_first_reward_logs_the_checks_and_scores_as_before():
    from workbench.lab.trl_checks import with_checks

    specs = [RewardSpec("length", 1.0, {"target": 5}), RewardSpec("contains_answer", 2.0)]
    fns = with_checks([fn for _, fn, _ in build_rewards(specs)], specs)
    logged: dict[str, float] = {}
    completions = [
        [{"role": "assistant", "content": t}] for t in ("Paris is the capital.", "🌱🌱🌱🌱🌱", "Lyon")
    ]
    kw = {
        "answer": [["Paris"], ["Paris"], None],
        "trainer_state": object(),
        "completion_ids": [[1, 2], [3], [4]],
    }
    out = fns[0](prompts=["q"] * 3, completions=completions, log_metric=logged.__setitem__, **kw)
    assert out == build_rewards(specs)[0][1](prompts=["q"] * 3, completions=completions, **kw)
    assert fns[0].__name__ == "length"
    assert logged["checks/degenerate"] == pytest.approx(1 / 3)  # the emoji run
    assert logged["checks/correct"] == pytest.approx(0.5)  # graded only where a reference exists
    assert set(logged) == {"checks/degenerate", "checks/repetition", "checks/correct", "checks/words"}
    assert pickle.loads(pickle.dumps(fns[0])).__name__ == "length"  # TRL may send it to another process


# --- the app ----------------------------------------------------------------------------------------------------
def test_the_app_shows_a_report_and_replays_in_a_child_process():
    from workbench.ui import lab as ui_lab

    spec = PRESETS["length-only"].replace(train_size=8, eval_size=1, max_completion_length=40)
    doc = preflight.preflight(spec, task=_task(ROWS, []), sampler=_fake_sampler(_answers))
    html = ui_lab.preflight_html(doc)
    assert "flag(s): what to fix before training" in html and "the empty answer scores at or above" in html
    assert "&lt;think&gt;" in html  # answers are escaped, never rendered as markup
    assert ui_lab.preflight_html(None) == ui_lab.EMPTY
    run, _ = _store_steps(SPEC, 2)
    assert ui_lab.rewards_text(run.id).splitlines() == ["length:1,target=12,unit=words", "contains_answer:2",
                                                        "repetition:1"]  # fmt: skip
    assert "No pre-flight report for this run" in ui_lab.run_preflight_html(run.id)
    doc = ui_lab.replay_run(run.id, "length:1,target=30\n\n")  # `workbench replay --json` in a child process
    assert doc["flips"]["up_to_down"] == 4
    html = ui_lab.replay_html(doc)
    assert "4 completions go from pushed up to pushed down" in html and "↑→↓" in html
    with pytest.raises(ui_lab.LabError, match="no reward to replay with"):
        ui_lab.replay_run(run.id, " ")
    with pytest.raises(Exception, match="unknown reward 'lenght'"):
        ui_lab.replay_run(run.id, "lenght:1")


# --- slow: the real model ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_preflight_on_the_bundled_model_fits_its_budget():
    t0, c0 = time.perf_counter(), time.process_time()
    doc = preflight.preflight(PRESETS["quick"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\npre-flight, quick preset: {wall:.1f} s wall, {cpu:.1f} s CPU; flags: "
          + "; ".join(f["text"][:60] for f in doc["flags"]))  # fmt: skip
    assert cpu < 60  # the work fits the budget on its own; wall time also counts whoever shares the cores
    assert doc["completions"] == 32 and len(doc["samples"]) == 32
    assert {e["exploit"] for e in doc["exploits"]} >= {"empty", "echo", "repeat", "ramble", "symbols"}
    assert any(s["completion"].strip() for s in doc["samples"])


@pytest.mark.slow
def test_replay_and_preflight_reproduce_a_real_engine_bit_for_bit():
    from workbench.grpo import GRPOEngine

    spec = SPEC.replace(model="tiny-random", max_steps=2, max_completion_length=12, dtype="float32")
    run, task = create_run(spec), load_task(spec)
    engine = GRPOEngine.from_spec(spec, task)
    batches = prompt_batches(task.train, spec.prompts_per_step, spec.seed)  # as the worker draws them
    for _ in range(2):
        run.append_step(engine.step(next(batches)))
    doc = replay(run, task.rewards_for(spec))
    # the engine's own float32 totals and advantages, reproduced: nothing changes, nothing flips
    assert doc["steps"] == 2 and doc["changed_totals"] == 0.0 and doc["flipped"] == []
    assert doc["old_reward"] == pytest.approx(doc["new_reward"], abs=0)
    assert doc["rank_correlation"] in (None, pytest.approx(1.0))
    # pre-flight samples as the engine does: its first batch is the run's first rollout, answer for answer
    pre = preflight.preflight(spec, prompts=spec.prompts_per_step, task=task)
    assert [s["completion"] for s in pre["samples"]] == [e["completion"] for e in run.episodes(1)]


@pytest.mark.slow
def test_the_exported_script_logs_the_checks_as_eval_metrics(tmp_path, tiny):
    from workbench.trl_export import export_trl

    model, tok = tiny
    model.save_pretrained(tmp_path / "tiny-model")
    tok.save_pretrained(tmp_path / "tiny-model")
    spec = SPEC.replace(model="smollm2-135m-instruct", eval_size=2, max_completion_length=8, eval_every=1)
    out = export_trl(spec, load_task(spec), tmp_path / "export")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}  # fmt: skip
    cmd = [sys.executable, str(out / "train.py"), "--model", str(tmp_path / "tiny-model"), "--max_steps", "1",
           "--eval_steps", "1", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # TRL prints each log dict: the training step's checks and the evaluation's, beside the rewards
    assert "'checks/degenerate'" in proc.stdout and "'eval_checks/degenerate'" in proc.stdout, proc.stdout[
        -2000:
    ]
    assert "'eval_checks/correct'" in proc.stdout and "'eval_rewards/length/mean'" in proc.stdout
