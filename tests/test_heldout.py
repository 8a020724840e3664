"""Held-out checks during training: the spec fields, the warning rule on constructed eval series, the store's evals and
best weights (resume-safe), and (slow) a real worker on the tiny model that evaluates at steps 0, 2, 4 and the last,
keeps the best weights, and lets compare and export use them."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from workbench.config import ConfigError, RunSpec, spec_fields
from workbench.errors import StoreError
from workbench.store import create_run
from workbench.verdict import heldout_regressions, heldout_warnings


# --- the spec -------------------------------------------------------------------------------------------------
def test_the_fields_have_defaults_ranges_and_choices():
    f = {x.name: x for x in spec_fields()}
    spec = RunSpec()
    assert (spec.eval_every, spec.eval_prompts, spec.keep_best_by) == (10, 8, "reward")
    assert f["eval_every"].metadata["range"] == (0, 100_000) and "0 = off" in f["eval_every"].metadata["help"]
    assert f["eval_prompts"].metadata["range"] == (1, 256)
    assert set(f["keep_best_by"].metadata["choices"]) == {"reward", "correct", "naturalness", "degenerate",
                                                          "repetition"}  # fmt: skip
    RunSpec(eval_every=0, eval_prompts=256, keep_best_by="degenerate")  # all valid


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"eval_every": -1}, "eval_every=-1 is out of range: choose a value between 0 and 100000"),
        ({"eval_prompts": 0}, "eval_prompts=0 is out of range"),
        ({"keep_best_by": "length"}, "not one of reward, correct, naturalness, degenerate, repetition"),
        # full fine-tuning without beta keeps no base model to score naturalness under
        ({"keep_best_by": "naturalness", "use_lora": False}, "turn use_lora on, set beta > 0"),
    ],
)
def test_invalid_held_out_settings_say_what_to_change(changes, fragment):
    with pytest.raises(ConfigError) as e:
        RunSpec(**changes)
    assert fragment in str(e.value)
    # the same combination is fine when evaluation is off, or the base is kept (beta > 0)
    RunSpec(keep_best_by="naturalness", use_lora=False, eval_every=0)
    RunSpec(keep_best_by="naturalness", use_lora=False, beta=0.04)


# --- the warning rule -----------------------------------------------------------------------------------------
def _eval(step, degenerate=0, correct=4, naturalness=-0.7, reward=0.0, n=8):
    return {"step": step, "eval/prompts": n, "eval/reward": reward, "eval/checks/degenerate": degenerate / n,
            "eval/checks/correct": correct / n, "eval/checks/naturalness": naturalness}  # fmt: skip


def _train(rewards):
    return [{"step": i + 1, "reward": r} for i, r in enumerate(rewards)]


CLIMBING = _train([-2.0, -1.9, -1.8, -1.5, -1.2, -1.0, -0.8, -0.6, -0.5, -0.4])


def test_reward_climbing_while_held_out_answers_rot_is_called_reward_hacking():
    evals = [_eval(0), _eval(5, degenerate=1), _eval(10, degenerate=3)]  # 0 → 3 of 8 degenerate
    (w,) = heldout_warnings(CLIMBING, evals)
    assert w.startswith("Likely reward hacking") and "3 of 8 held-out answers are degenerate" in w
    assert "against 0 at step 0" in w and "by step 10" in w and "best weights" in w


def test_each_check_fires_at_its_own_threshold():
    # correct down by 2 answers, naturalness down by more than the tolerance: both named
    worse = heldout_regressions(
        [_eval(0, correct=5, naturalness=-0.7), _eval(10, correct=3, naturalness=-1.3)]
    )
    assert len(worse) == 2 and "3 of 8 held-out answers are correct" in worse[0] and "-1.30" in worse[1]
    # one more degenerate answer, one fewer correct, drift within NATURALNESS_TOLERANCE (0.5): noise, no warning
    same = [_eval(0, correct=5), _eval(10, degenerate=1, correct=4, naturalness=-1.1)]
    assert heldout_regressions(same) == [] and heldout_warnings(CLIMBING, same) == []


def test_worse_answers_without_a_reward_gain_warn_without_blaming_the_reward():
    flat = _train([-1.0, -1.2, -1.1, -1.3, -1.2, -1.4])
    (w,) = heldout_warnings(flat, [_eval(0), _eval(6, degenerate=2)])
    assert w.startswith("The held-out answers got worse by step 6") and "hacking" not in w


def test_too_little_to_go_on_gives_no_warning():
    assert heldout_warnings(CLIMBING, []) == []
    assert heldout_warnings(CLIMBING, [_eval(0, degenerate=5)]) == []  # only the baseline
    # missing values (no references: correct is None; full fine-tuning: no naturalness) are not a regression
    gaps = [_eval(0) | {"eval/checks/correct": None, "eval/checks/naturalness": None},
            _eval(10) | {"eval/checks/correct": None, "eval/checks/naturalness": None}]  # fmt: skip
    assert heldout_regressions(gaps) == []


# --- the store ------------------------------------------------------------------------------------------------
def test_evals_round_trip_survive_truncation_and_old_runs_read_as_none():
    run = create_run(RunSpec(model="tiny-random"))
    assert run.evals() == [] and run.eval_answers() == []
    for step in (0, 2, 4):
        run.append_eval(step, {"eval/reward": step / 10, "eval/checks/naturalness": math.nan},
                        [{"prompt": "p", "answer": f"a{step}", "degenerate_reason": ""}])  # fmt: skip
    run.append_eval(4, {"eval/reward": 0.9}, [{"prompt": "p", "answer": "again"}])  # a redone eval replaces
    assert [e["step"] for e in run.evals()] == [0, 2, 4] and run.evals()[-1]["eval/reward"] == 0.9
    assert run.evals()[0]["eval/checks/naturalness"] is None  # NaN is stored as null (strict JSON)
    assert run.eval_answers()[0]["answer"] == "again" and run.eval_answers(2)[0]["answer"] == "a2"
    run.truncate_steps(after=2)  # a resume from step 2 redoes the rest
    assert [e["step"] for e in run.evals()] == [0, 2]
    # a run created before the evals table: reads as none, and the first write creates it
    con = sqlite3.connect(run.db_path)
    con.execute("DROP TABLE evals")
    con.commit()
    con.close()
    assert run.evals() == [] and run.eval_answers() == []
    run.truncate_steps(after=0)
    run.append_eval(0, {"eval/reward": 1.0}, [])
    assert [e["step"] for e in run.evals()] == [0]


def test_best_weights_appear_whole_with_their_record_and_a_clear_message_before():
    run = create_run(RunSpec(model="tiny-random", eval_every=5))
    with pytest.raises(StoreError, match="no best checkpoint yet: it is saved at each held-out evaluation"):
        run.require_weights("best")
    with pytest.raises(StoreError, match="not one of last, best"):
        run.require_weights("middle")
    tmp = run.best_tmp_dir()
    (tmp / "adapter_config.json").write_text("{}")
    assert run.best_weights() is None  # not in place until committed
    run.commit_best(tmp, {"step": 5, "by": "reward", "score": 0.5, "better": "higher"})
    assert (
        run.require_weights("best") == run.dir / "best"
        and (run.dir / "best" / "adapter_config.json").exists()
    )
    assert run.best_info() == {"step": 5, "by": "reward", "score": 0.5, "better": "higher"}
    assert not tmp.exists() and not list(run.dir.glob(".tmp-best-*"))
    off = create_run(RunSpec(model="tiny-random", eval_every=0))
    with pytest.raises(StoreError, match="held-out evaluation is off"):
        off.require_weights("best")


# --- the real worker and engine on the tiny model -------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_run_evaluates_keeps_the_best_and_resumes_without_losing_evals(tmp_path, capsys):
    from workbench import cli, worker

    spec = RunSpec(model="tiny-random", task="concise", train_size=16, eval_size=3, eval_prompts=8,
                   max_completion_length=8, num_generations=2, prompts_per_step=2, max_steps=5, save_every=2,
                   eval_every=2, dtype="float32", device="cpu")  # fmt: skip
    run = create_run(spec, status="running")
    state, reason = worker.train(run, lambda: run.steps_done() >= 3)  # stopped after step 3
    assert state == "stopped", reason
    assert [e["step"] for e in run.evals()] == [0, 2]  # the baseline, then every 2 steps; none at a stop
    # as if killed after step 4's eval and before its checkpoint: a resume from step 3 must redo both
    run.append_step(type("R", (), {"step": 4, "episodes": [], "metrics": {"reward": 0.0}})())
    run.append_eval(4, {"eval/reward": 123.0}, [])
    assert worker.train(run, lambda: False) == ("finished", None)
    evals = run.evals()
    assert [e["step"] for e in evals] == [0, 2, 4, 5] and evals[2][
        "eval/reward"
    ] != 123.0  # redone, once each
    for e in evals:
        assert e["eval/prompts"] == 3  # eval_prompts=8 clamped to the 3 held-out prompts
        for k in ("eval/reward", "eval/rewards/length/mean", "eval/checks/degenerate", "eval/checks/repetition",
                  "eval/checks/naturalness", "eval/checks/correct", "eval/checks/tokens", "eval/time"):  # fmt: skip
            assert isinstance(e[k], float) and math.isfinite(e[k]), (e["step"], k, e[k])
        assert 0.0 <= e["eval/checks/degenerate"] <= 1.0 and e["eval/checks/naturalness"] < 0
    assert evals[0]["eval/time_share"] is None and evals[-1]["eval/time_share"] > 0  # before / after training
    answers = run.eval_answers()
    assert len(answers) == 3 and {"prompt", "answer", "degenerate_reason", "correct"} <= set(answers[0])
    log = run.log_path.read_text() if run.log_path.exists() else capsys.readouterr().out
    assert "held-out eval at step 0" in log and "% of the" in log and "of training so far" in log

    info = run.best_info()
    assert info["by"] == "reward" and info["step"] in (0, 2, 4, 5)
    best_reward = max(e["eval/reward"] for e in evals)
    assert info["score"] == best_reward  # the best held-out reward, the latest of equals
    assert info["step"] == max(e["step"] for e in evals if e["eval/reward"] == best_reward)

    assert cli.main(["export", run.id, "--weights", "best", "--to", str(tmp_path / "best"), "--json"]) == 0
    about = json.loads((tmp_path / "best" / "workbench_run.json").read_text())
    assert about["source"] == "best" and about["best"]["step"] == info["step"]
    capsys.readouterr()
    assert cli.main(["compare", run.id, "--weights", "best", "--max-new-tokens", "4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["adapter"].endswith("best") and doc["weights_from"] == {"weights": "best", **info}


# --- the Train tab ----------------------------------------------------------------------------------------------
def test_the_train_tab_draws_held_out_checks_and_redraws_them_only_when_an_eval_lands():
    pytest.importorskip("gradio")
    import pandas as pd
    from test_ui import SKIP, fake_step, make_run

    from workbench.ui import insights, plots, train

    assert "off" in plots.heldout_figure(None, None, off=True).layout.annotations[0].text
    run = make_run(steps=2, state="running", alive=True)
    out = train.poll(None, "")
    assert "Waiting for the first held-out evaluation" in out[9].layout.annotations[0].text
    run.append_eval(0, _eval(0), [{"prompt": "Say <hi>", "answer": "hi hi hi", "degenerate_reason": "repeats",
                                   "correct": 0.0, "reference": "hello"}])  # fmt: skip
    again = train.poll(run.id, out[1])
    assert again[3:7] == (SKIP,) * 4 and again[9] != SKIP  # no new step: only the held-out outputs are sent
    names = {t.name for t in again[9].data}
    assert {"training reward", "held-out reward", "held-out degenerate", "held-out correct"} <= names
    assert (
        "Say &lt;hi&gt;" in again[10]
        and "degenerate: repeats" in again[10]
        and "1 of 1 degenerate" in again[10]
    )
    run.append_step(fake_step(3, [[0.0, 1.0, 0.0, 1.0]]))
    third = train.poll(run.id, again[1])
    assert third[3] != SKIP and third[9:] == (SKIP, SKIP)  # a new step, no new eval: the held-out plot stays
    # the hacking warning reaches the Train tab's warnings
    evals = [_eval(0), _eval(10, degenerate=4)]
    text = " ".join(insights.run_warnings(pd.DataFrame(CLIMBING), evals=evals))
    assert "Likely reward hacking" in text and "4 of 8 held-out answers are degenerate" in text


@pytest.mark.slow
def test_the_base_models_baseline_is_worked_out_once_across_runs(tmp_path, monkeypatch):
    from workbench import scoring
    from workbench.grpo import GRPOEngine
    from workbench.heldout import BaseMemo, evaluate_policy
    from workbench.models import load_model

    spec = RunSpec(model="tiny-random", max_completion_length=6, dtype="float32", device="cpu")
    rows = [{"prompt": "Name a colour."}, {"prompt": "Say hi.", "answer": "hi"}]

    def engine():
        model, tok = load_model("tiny-random", dtype="float32", device="cpu")
        return GRPOEngine(
            spec, model, tok, [("length", lambda completions, **kw: [1.0] * len(completions), 1.0)]
        )

    # step 0: the policy is the base, so the sampler's own log-probs are the naturalness (no forward pass), and they
    # equal what the forward pass gives
    real = scoring.naturalness
    monkeypatch.setattr(
        scoring, "naturalness", lambda *a, **kw: pytest.fail("the sampler's log-probs were ignored")
    )
    first = evaluate_policy(engine(), rows, None, memo=BaseMemo(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 1
    e = engine()
    prompts, _ = e.encode(rows)
    ids = json.loads(next(tmp_path.glob("*.json")).read_text())["ids"]
    with e.model.disable_adapter():
        forward = real(e.model, prompts, ids, e.pad_id)
    assert first.metrics["eval/checks/naturalness"] == pytest.approx(sum(forward) / len(forward), abs=1e-4)
    monkeypatch.setattr(scoring, "generate", lambda *a, **kw: pytest.fail("the baseline was generated again"))
    monkeypatch.setattr(
        scoring, "naturalness", lambda *a, **kw: pytest.fail("naturalness was computed again")
    )
    again = evaluate_policy(
        engine(), rows, None, memo=BaseMemo(tmp_path)
    )  # a new run: same model, prompts, cap
    assert [a["answer"] for a in again.answers] == [a["answer"] for a in first.answers]
    assert {k: v for k, v in again.metrics.items() if k != "eval/time"} == {
        k: v for k, v in first.metrics.items() if k != "eval/time"
    }
