"""Base vs tuned comparison: the paired statistics on hand-made scores (fast), and compare() end to end on the tiny
random model with a random LoRA adapter (slow): the base answers are what the base model alone says, the tuned ones
what the adapted model says, and the table, summary, CSV and JSON have the promised shape."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from workbench.config import PRESETS, RewardSpec, RunSpec, length_reward
from workbench.evaluate import SUMMARY_COLUMNS, CompareError, compare, paired_summary, tuned_weights
from workbench.models import ModelError
from workbench.store import create_run
from workbench.tasks import chat_messages, load_task


# --- statistics -------------------------------------------------------------------------------------------------
def test_a_constant_gain_has_a_zero_width_interval_and_wins_everywhere():
    base = [0.0, 0.5, -1.0, 2.0, 0.25]
    s = paired_summary(base, [b + 1 for b in base])
    # every resample of identical differences has mean exactly 1
    assert s["diff"] == 1.0 and s["ci_low"] == 1.0 and s["ci_high"] == 1.0
    assert (s["wins"], s["ties"], s["losses"]) == (5, 0, 0)
    assert s["base_mean"] == pytest.approx(0.35) and s["tuned_mean"] == pytest.approx(1.35)


def test_mixed_signs_give_an_interval_that_straddles_zero():
    # differences +1, -1, +1, -1, 0, +1, -1, 0: mean 0, and resampling moves it both ways
    base = [0.0] * 8
    tuned = [1.0, -1.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0]
    s = paired_summary(base, tuned)
    assert s["diff"] == 0.0 and s["ci_low"] < 0 < s["ci_high"]
    assert (s["wins"], s["ties"], s["losses"]) == (3, 2, 3)
    assert paired_summary(base, tuned) == s  # the bootstrap seed is fixed: the same interval every time


def test_unscored_prompts_are_left_out_of_the_pairing():
    # prompt 2 is unscored on the base side and prompt 3 on the tuned side (None or NaN: "does not apply")
    s = paired_summary([1.0, 2.0, None, 4.0], [2.0, 2.0, 9.0, math.nan])
    assert s["diff"] == 0.5  # pairs (1, 2) and (2, 2) only
    assert (s["wins"], s["ties"], s["losses"]) == (1, 1, 0)
    assert s["base_mean"] == pytest.approx(7 / 3) and s["tuned_mean"] == pytest.approx(
        13 / 3
    )  # each side's own
    assert 0.0 <= s["ci_low"] <= s["ci_high"] <= 1.0  # within the observed differences


def test_fewer_than_two_pairs_has_no_interval():
    one = paired_summary([0.0, None], [1.0, 3.0])
    assert (
        one["diff"] == 1.0 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"]) and one["wins"] == 1
    )
    none = paired_summary([None], [None])
    assert all(math.isnan(none[k]) for k in ("base_mean", "tuned_mean", "diff", "ci_low", "ci_high"))
    assert none["wins"] + none["ties"] + none["losses"] == 0
    with pytest.raises(ValueError, match="one of each per prompt"):
        paired_summary([1.0], [1.0, 2.0])


# --- errors before any model is loaded --------------------------------------------------------------------------
def _run(**kw):
    spec = dict(model="tiny-random", task="concise", max_steps=1, eval_size=4, max_completion_length=8,
                dtype="float32", device="cpu", rewards=[length_reward()])  # fmt: skip
    return create_run(RunSpec(**{**spec, **kw}), status="finished")


def test_a_wrong_adapter_folder_or_no_prompts_is_refused_with_what_to_do(tmp_path):
    run = _run()
    with pytest.raises(CompareError, match="does not exist"):
        compare(run.id, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="neither a LoRA adapter"):
        compare(run.id, tmp_path / "empty")
    # a checkpoint that keeps its adapter one folder down is found
    (tmp_path / "ckpt" / "adapter").mkdir(parents=True)
    (tmp_path / "ckpt" / "adapter" / "adapter_config.json").write_text("{}")
    assert tuned_weights(tmp_path / "ckpt") == ("adapter", tmp_path / "ckpt" / "adapter")
    with pytest.raises(CompareError, match="no prompts"):
        compare(run.id, tmp_path / "ckpt", rows=[])
    with pytest.raises(ValueError, match="prompt 1.*empty"):
        compare(run.id, tmp_path / "ckpt", rows=[{"prompt": "  "}])
    with pytest.raises(CompareError, match="greedy, sampled"):
        compare(run.id, tmp_path / "ckpt", mode="beam")
    (tmp_path / "ckpt" / "adapter" / "adapter_config.json").write_text("not json")
    with pytest.raises(ModelError, match="could not apply the adapter"):
        compare(run.id, tmp_path / "ckpt")


# --- end to end on the tiny model -------------------------------------------------------------------------------
@pytest.fixture
def adapter(tmp_path):
    """A LoRA adapter with random A and B (init_lora_weights=False), so it changes what the model says."""
    from peft import LoraConfig, get_peft_model

    from workbench.models import load_model

    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", peft_model


def _greedy_alone(model, tok, rows, system_prompt, max_new_tokens=8) -> list[str]:
    """What a model says to each prompt on its own: HF generate, greedy, one prompt at a time (no padding)."""
    out = []
    for row in rows:
        ids = tok.apply_chat_template(chat_messages(row, system_prompt), add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]  # fmt: skip
        full = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip
        out.append(tok.decode(full[0, len(ids) :], skip_special_tokens=True))
    return out


@pytest.mark.slow
def test_compare_answers_with_both_models_and_scores_them(adapter, tmp_path):
    from workbench.models import load_model

    folder, peft_model = adapter
    run = _run()
    calls = []
    cmp = compare(run.id, folder, batch_size=3, progress=lambda f, m: calls.append((f, m)))
    t, s = cmp.table, cmp.summary
    assert len(t) == 4 and cmp.mode == "greedy"
    for col in ("prompt", "base", "tuned", "base/length", "tuned/length", "base/total", "tuned/total",
                "base:tokens", "tuned:tokens", "base:truncated", "tuned:truncated", "ref/category",
                "base:degenerate", "tuned:naturalness", "tuned:degenerate_reason", "base:words"):  # fmt: skip
        assert col in t.columns, col
    assert list(s.index) == ["length", "total"] and list(s.columns) == SUMMARY_COLUMNS
    assert (s["wins"] + s["ties"] + s["losses"] == 4).all()

    # Same prompts, same decoding: the base column is what the base model says alone, the tuned column what the
    # (unmerged) peft model says alone, each through HF generate rather than the fast sampler compare() used.
    spec = run.spec
    task = load_task(spec)
    base_model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    assert t["base"].tolist() == _greedy_alone(base_model, tok, task.eval, task.system_prompt)
    assert t["tuned"].tolist() == _greedy_alone(peft_model, tok, task.eval, task.system_prompt)
    assert t["base"].tolist() != t["tuned"].tolist()  # the adapter is not a no-op
    assert t["prompt"].tolist() == [r["prompt"] for r in task.eval]

    # The scores are the run's reward (length, target 12 words): recompute base's from the reward itself.
    from workbench.rewards import build_rewards

    (_, fn, _), = build_rewards(run.spec.rewards)  # fmt: skip
    assert t["base/length"].tolist() == pytest.approx(fn(completions=t["base"].tolist()))
    assert s.loc["total", "diff"] == pytest.approx((t["tuned/total"] - t["base/total"]).mean())

    # progress after every batch of 3: base 3/4, 4/4, then tuned, ending at 1.0
    msgs = [m for _, m in calls]
    assert "base model: 3/4" in msgs and "tuned model: 4/4" in msgs
    fracs = [f for f, _ in calls]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0

    per_prompt, stats = cmp.to_csv(tmp_path / "out" / "cmp.csv")
    back = pd.read_csv(per_prompt, keep_default_na=False)
    assert list(back.columns) == list(t.columns) and back["tuned"].tolist() == t["tuned"].tolist()
    summary = pd.read_csv(stats)  # rewards, then checks, then the verdict
    assert summary["kind"].tolist()[:2] == ["reward", "reward"] and summary["kind"].iloc[-1] == "verdict"
    assert {"degenerate", "naturalness", "repetition", "words", "tokens", "truncated"} <= set(summary["name"])
    doc = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    assert doc["run_id"] == run.id and doc["n_prompts"] == 4 and len(doc["rows"]) == 4
    assert set(doc["summary"]["total"]) == set(SUMMARY_COLUMNS) and doc["rewards"] == {"length": 1.0}


@pytest.mark.slow
def test_sampled_mode_repeats_with_the_same_seed_and_a_full_model_folder_works(adapter, tmp_path):
    folder, peft_model = adapter
    run = _run(temperature=1.0, top_p=1.0)
    a = compare(run.id, folder, mode="sampled", seed=3)
    b = compare(run.id, folder, mode="sampled", seed=3)
    assert a.table["base"].tolist() == b.table["base"].tolist()
    assert a.table["tuned"].tolist() == b.table["tuned"].tolist()
    c = compare(run.id, folder, mode="sampled", seed=4)
    assert c.table["base"].tolist() != a.table["base"].tolist()  # the seed is what fixes the samples
    # no mode: the run's compare_mode (the reasoning preset is judged sampled)
    own = compare(_run(temperature=1.0, top_p=1.0, compare_mode="sampled").id, folder, seed=3)
    assert own.mode == "sampled" and own.table["base"].tolist() == a.table["base"].tolist()
    assert PRESETS["reasoning"].compare_mode == "sampled" and PRESETS["quick"].compare_mode == "greedy"

    # use_lora off saves a full model instead of an adapter: compare loads it as the tuned model
    peft_model.merge_and_unload().save_pretrained(tmp_path / "full")
    full = compare(run.id, tmp_path / "full")
    with_adapter = compare(run.id, folder)
    assert full.to_dict()["weights"] == "full"
    assert full.table["tuned"].tolist() == with_adapter.table["tuned"].tolist()
    assert full.table["base"].tolist() == with_adapter.table["base"].tolist()


@pytest.mark.slow
def test_a_reward_without_its_reference_column_does_not_apply(adapter):
    # Your own prompt without a reference answer: exact_match cannot score it, the length reward still can.
    folder, _ = adapter
    run = _run(rewards=[RewardSpec("exact_match"), RewardSpec("length", 0.5)])
    cmp = compare(run.id, folder, rows=[{"prompt": "What is 2 + 2?"}])
    assert math.isnan(cmp.table.loc[0, "base/exact_match"]) and not math.isnan(
        cmp.table.loc[0, "base/length"]
    )
    doc = cmp.to_dict()
    assert doc["summary"]["exact_match"]["diff"] is None and doc["summary"]["length"]["ci_low"] is None
    # with the reference it applies, and a wrong answer scores 0 (the tiny model cannot add)
    scored = compare(run.id, folder, rows=[{"prompt": "What is 2 + 2?", "answer": "4"}])
    assert scored.table.loc[0, "base/exact_match"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("template", [True, False], ids=["chat template", "no chat template"])
def test_training_and_compare_give_the_model_the_same_prompt_ids(tmp_path, template):
    # A base model's tokenizer has no chat template: Compare used to join the plain text, training to fail.
    from workbench.grpo import GRPOEngine
    from workbench.models import load_model

    model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    if not template:
        tok.chat_template = None
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    run = _run(model=str(folder), max_prompt_length=16, system_prompt="Answer briefly.", num_generations=2,
               prompts_per_step=2)  # fmt: skip
    long = " ".join(["Name a colour."] * 12)  # more than 16 tokens: cut from the left
    rows = [{"prompt": "What is 2 + 2?"}, {"prompt": long}]

    engine = GRPOEngine.from_spec(run.spec, load_task(run.spec))
    ids, _ = engine.encode(rows)
    plain = tok("Answer briefly.\n\nWhat is 2 + 2?")["input_ids"]
    assert (ids[0] != plain) if template else (ids[0] == plain)
    assert len(ids[1]) == 16 and tok.decode(ids[1]).endswith("assistant\n" if template else "colour.")
    assert engine.step(rows).step == 1  # training runs on this tokenizer

    # Compare's greedy answers are what the model says to exactly those ids (the folder is also the "tuned" model).
    cmp = compare(run.id, folder, rows=rows)
    said = []
    for i in ids:
        out = model.generate(torch.tensor([i]), attention_mask=torch.ones(1, len(i), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip
        said.append(tok.decode(out[0, len(i) :], skip_special_tokens=True))
    assert cmp.table["base"].tolist() == said


@pytest.mark.slow
def test_checks_score_both_sides_and_naturalness_is_measured_under_the_base_model(adapter):
    from workbench.models import encode_prompt, load_model
    from workbench.scoring import generate, naturalness

    folder, _ = adapter
    run = _run()
    cmp = compare(run.id, folder)
    t, doc = cmp.table, cmp.to_dict()
    # naturalness of the *tuned* answers is their log-probability under the *base* model: recompute it by hand
    base_model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    task = load_task(run.spec)
    prompts = [
        encode_prompt(tok, chat_messages(r, task.system_prompt), run.spec.max_prompt_length)
        for r in task.eval
    ]

    def by_hand(side: str) -> list[float]:
        out = []
        for p, a in zip(prompts, t[side], strict=True):
            i = tok(a, add_special_tokens=False)["input_ids"]
            logits = base_model(torch.tensor([p + i])).logits[0, len(p) - 1 : -1]
            out.append(float(logits.log_softmax(-1).gather(-1, torch.tensor(i)[:, None]).mean().detach()))
        return out

    # the stored tokens also hold the end token when the answer ended: compare where no end token was generated
    cut = t["tuned:truncated"] > 0
    assert cut.any()
    assert t.loc[cut, "tuned:naturalness"].tolist() == pytest.approx(
        [b for b, c in zip(by_hand("tuned"), cut, strict=True) if c], abs=1e-4
    )
    # the base's own values come from its sampler's log-probs, no second forward pass: the forward's numbers
    again = generate(base_model, tok, prompts, max_new_tokens=doc["max_new_tokens"], greedy=True)
    assert again.texts == t["base"].tolist()
    forward = naturalness(base_model, prompts, again.ids, tok.pad_token_id)
    assert t["base:naturalness"].tolist() == pytest.approx(forward, abs=1e-4)
    assert naturalness(base_model, prompts[:1], [[]]) == [None]  # no tokens, nothing to measure
    # every check has a paired summary with its direction, and the verdict and degenerate counts are in the JSON
    # the concise prompts carry reference answers: correctness is checked although no reward of the run reads them
    assert set(doc["checks"]) == {
        "degenerate",
        "repetition",
        "naturalness",
        "correct",
        "words",
        "tokens",
        "truncated",
    }
    assert doc["correctness"].startswith("contains_answer")
    assert doc["checks"]["degenerate"]["better"] == "lower" and doc["checks"]["words"]["better"] == ""
    assert doc["verdict"]["level"] in ("better", "hacked", "worse", "mixed", "unclear", "too few")
    assert doc["degenerate"] == {s: int(t[f"{s}:degenerate"].sum()) for s in ("base", "tuned")}
