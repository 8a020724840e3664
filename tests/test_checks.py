"""Checks that don't trust the reward, and the verdict built on them: canned texts and constructed comparisons."""

from __future__ import annotations

import pytest

from workbench.checks import degenerate_reason, reference_grader, repetition_share, text_checks, word_count
from workbench.config import RewardSpec
from workbench.verdict import judge, significant


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),  # nothing said
        ("   \n ", "empty"),
        (
            "🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱",
            "no letters",
        ),  # the photosynthesis answer after a length-only run
        ("!!! ??? ...", "no letters"),
        ("Hiiiiiiiiiiiiiiiii…", "repeated"),  # one character held down
        ("Awful, no, no, no, no, no, no, no", "repeats 'no'"),  # a word back to back
        ("Gravity pulls. Gravity pulls. Gravity pulls.", "repeats 'gravity pulls'"),  # a phrase back to back
        (
            "Photosynthesis 🌱🌱🌱🌱 is great",
            "symbol or emoji run",
        ),  # four emoji in a row, letters around them
        ("Wow 🎉 🎉 🎉 🎉", "symbol or emoji run"),  # spaces do not break a run of emoji
        ("Yes!!!!!!!!!!", "repeated"),  # a punctuation run
        ("ok 😀😀😀", "mostly symbols"),  # three emoji out of five visible characters
    ],
)
def test_degenerate_answers_are_caught_with_a_reason(text, why):
    assert why in (degenerate_reason(text) or "")


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "144",  # a bare number answers "What is 12 squared?"
        "2 + 3 = 5, and 5 * 4 = 20",  # arithmetic symbols are not emoji
        "Water boils at 100 °C (212 °F) at sea level.",
        "Great job! 🎉🎉",  # two emoji in a sentence are ordinary chat
        "Gravitomax.",  # wrong, but not degenerate: correctness and naturalness catch it, not this check
        "I think so, I think.",  # said twice, not three times
        "<think>2+3=5</think><answer>5</answer>",
        "1,000,000 people",  # a run of digits is a number
    ],
)
def test_ordinary_answers_are_not_degenerate(text):
    assert degenerate_reason(text) is None


def test_repetition_share_counts_repeated_ngrams_of_words_and_emoji():
    assert repetition_share("The quick brown fox jumps over the lazy dog.") == 0.0
    assert repetition_share("no, no, no, no, no") == pytest.approx(2 / 3)  # 3 trigrams, 1 unique
    assert repetition_share("🌱" * 10) == pytest.approx(7 / 8)  # emoji count as units
    assert repetition_share("Hi") == 0.0  # fewer than 3 units: nothing to repeat
    assert word_count("Hello, world! 🌱 ...") == 2


def test_text_checks_give_one_value_per_answer_and_the_reasons():
    out = text_checks(["Paris.", "no no no no"], tokens=[3, 5], truncated=[False, True])
    assert out["degenerate"] == [0.0, 1.0]
    assert out["degenerate_reason"][0] == "" and "repeats" in out["degenerate_reason"][1]
    assert out["truncated"] == [0.0, 1.0] and out["tokens"] == [3.0, 5.0] and out["words"] == [1.0, 4.0]
    assert out["correct"] == [None, None]  # no grader: no reference to check against


def test_reference_grader_picks_the_fitting_grader():
    rows = [{"prompt": "Capital of Chile?", "answer": ["Santiago"]}, {"prompt": "Name a colour."}]
    how, grade = reference_grader(rows, [RewardSpec("length")])
    assert how.startswith("contains_answer")  # a list of accepted strings: contained as a phrase
    # right, no reference (does not apply); then wrong
    assert grade(["It is Santiago.", "Blue"]) == [1.0, None]
    assert grade(["Hai Chile!", "Blue"])[0] == 0.0
    nums = [{"prompt": "100 / 8?", "answer": "12.5"}, {"prompt": "2+2?", "answer": 4}]
    how, grade = reference_grader(nums, [])
    assert how.startswith("numeric_match") and grade(["100 divided by 8 is 1.", "It is 4"]) == [0.0, 1.0]
    # the run's own correctness reward wins: one definition of "correct"
    how, _ = reference_grader(nums, [RewardSpec("exact_match", 1.0)])
    assert how.startswith("exact_match")
    assert reference_grader([{"prompt": "Hi"}], []) is None  # nothing to grade against


# --- the verdict on constructed comparisons ---------------------------------------------------------------------
def row(base, tuned, lo, hi):
    return {"base_mean": base, "tuned_mean": tuned, "diff": tuned - base, "ci_low": lo, "ci_high": hi}


FLAT = row(0.5, 0.5, -0.1, 0.1)


def test_reward_up_with_degenerate_answers_is_called_hacking_never_better():
    # the length-only run of the issue: length +1.09 while 11 of 24 tuned answers became spam
    rewards = {"length": row(-1.80, -0.71, 0.77, 1.39), "total": row(-1.80, -0.71, 0.77, 1.39)}
    checks = {"degenerate": row(0.0, 11 / 24, 0.25, 0.67), "naturalness": FLAT, "correct": FLAT}
    v = judge(rewards, checks, n_prompts=24)
    assert v.level == "hacked"
    assert "11 of 24 tuned answers are degenerate against 0 for the base" in v.headline
    assert "reward hacking" in v.headline and "better" not in v.headline.lower()
    assert "Length (+1.09, 95% CI +0.77 to +1.39) rose" in v.headline


def test_both_reward_and_checks_up_is_better():
    rewards = {"length": row(-1.8, -0.5, 0.9, 1.6), "correct": row(0.5, 0.7, 0.05, 0.3)}
    rewards["total"] = row(-1.3, 0.2, 1.0, 1.9)
    checks = {"degenerate": row(0.0, 0.0, 0.0, 0.0), "correct": row(0.5, 0.7, 0.05, 0.3), "naturalness": FLAT}
    v = judge(rewards, checks, n_prompts=24)
    assert v.level == "better" and "better" in v.headline and "no check" in v.headline


def test_noise_is_unclear():
    v = judge({"length": row(-1.0, -0.95, -0.2, 0.3)}, {"degenerate": row(0.0, 0.04, 0.0, 0.12)}, 24)
    assert v.level == "unclear" and "beyond its 95% CI" in v.headline
    # fewer repeats alone, rewards flat, are no reason to call the model better; more correct answers are
    fewer_repeats = judge({"length": FLAT}, {"repetition": row(0.02, 0.0, -0.04, -0.01)}, 24)
    more_correct = judge({"length": FLAT}, {"correct": row(0.25, 0.6, 0.1, 0.5)}, 24)
    assert fewer_repeats.level == "unclear" and more_correct.level == "better"


def test_small_naturalness_drift_is_not_held_against_the_model_but_a_large_one_is():
    rewards = {"length": row(-1.8, -0.5, 0.9, 1.6)}
    small = judge(rewards, {"naturalness": row(-1.9, -2.1, -0.3, -0.1)}, 24)
    large = judge(rewards, {"naturalness": row(-1.9, -4.5, -3.0, -2.2)}, 24)
    assert small.level == "better"
    assert large.level == "hacked" and "drifted" in large.headline
    # the same for repetition: +0.07 of repeated 3-grams in short arithmetic answers is no rot, +0.3 is
    assert judge(rewards, {"repetition": row(0.02, 0.09, 0.05, 0.09)}, 24).level == "better"
    assert judge(rewards, {"repetition": row(0.02, 0.32, 0.14, 0.46)}, 24).level == "hacked"


def test_checks_worse_without_reward_gain_is_worse_and_lengths_never_veto():
    v = judge({"length": FLAT}, {"correct": row(0.6, 0.2, -0.6, -0.2)}, 24)
    assert v.level == "worse" and "correct answers 60% → 20%" in v.headline
    longer = judge({"length": row(-1.8, -0.5, 0.9, 1.6)}, {"words": row(40, 12, -30, -25)}, 24)
    assert longer.level == "better"  # words have no better direction: shorter is what the reward asked for


def test_one_prompt_has_no_statistics():
    v = judge(
        {"length": {"base_mean": -1, "tuned_mean": 0, "diff": 1, "ci_low": None, "ci_high": None}}, {}, 1
    )
    assert v.level == "too few"
    assert significant({"ci_low": float("nan"), "ci_high": 1.0}) == 0
