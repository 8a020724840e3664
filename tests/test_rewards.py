"""Reward library: hand-written completions for every reward (each with why it scores what it scores), the
registry's validation messages, math-verify and reasoning-gym on known right and wrong answers, and a tiny random
reward model built here. Fast: no policy model is loaded."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from workbench.config import RewardSpec
from workbench.rewards import (
    REGISTRY,
    RewardError,
    build_reward,
    build_rewards,
    completion_text,
    describe,
    extract_answer,
    is_correct,
    rg_key,
    rg_score,
)


def R(text: str):
    """A reward fn from its CLI spelling, e.g. R("length,target=3,unit=words")."""
    return build_reward(RewardSpec.parse(text))


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- registry -----------------------------------------------------------------------------------------------------

NEEDS_PARAMS = {"regex": "regex,pattern=x", "keywords": "keywords,words=x", "reward_model": None}


def test_registry_entries_are_described_and_build_with_defaults():
    assert len(REGISTRY) >= 15
    for name, info in REGISTRY.items():
        assert info.name == name and info.description and info.factory
        for p in info.params.values():
            assert p.help and (p.choices is None or p.default in p.choices)
        spec = NEEDS_PARAMS.get(name, name)
        if spec:
            fn = R(spec)
            assert fn.__name__ == name and callable(fn)
    assert "length:" in describe() and "target=20" in describe("length")


def test_unknown_name_param_and_bad_values_say_what_is_valid():
    with pytest.raises(RewardError, match="did you mean 'length'.*valid names are.*math_correct"):
        R("lenght")
    with pytest.raises(RewardError, match="no parameter colour.*target \\(default 20\\)"):
        R("length,colour=red")
    with pytest.raises(RewardError, match="unit='bytes' is not one of chars, words, tokens"):
        R("length,unit=bytes")
    with pytest.raises(RewardError, match="target='ten' must be int"):
        R("length,target=ten")
    with pytest.raises(RewardError, match="target=0 must be above 0"):
        R("length,target=0")
    with pytest.raises(RewardError, match="not a valid regular expression"):
        R("regex,pattern=(unclosed")
    with pytest.raises(RewardError, match="pattern is empty"):
        R("regex")
    with pytest.raises(RewardError, match="max_penalty=0.5 must be 0 or negative"):
        R("repetition,max_penalty=0.5")
    with pytest.raises(RewardError, match="no reward chosen"):
        build_rewards([])


def test_build_rewards_names_weights_and_repeats():
    fns = build_rewards([RewardSpec("length", 2.0), RewardSpec("tag_count", 0.5), RewardSpec("length", 1.0)])
    assert [(n, w) for n, _, w in fns] == [("length", 2.0), ("tag_count", 0.5), ("length_2", 1.0)]
    assert [f.__name__ for _, f, _ in fns] == ["length", "tag_count", "length_2"]  # TRL logs by __name__


def test_built_reward_pickles_and_accepts_trl_keywords():
    # TRL calls fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns); its async
    # rollout pickles reward fns, so a built reward must survive pickling and ignore the extra keywords.
    fn = pickle.loads(pickle.dumps(R("math_correct")))
    out = fn(
        prompts=["1+1?"],
        completions=[chat("<answer>2</answer>")],
        completion_ids=[[1, 2]],
        trainer_state=None,
        answer=["2"],
    )
    assert out == [1.0]


def test_missing_or_misaligned_column_is_named():
    with pytest.raises(RewardError, match="needs a dataset column 'answer'.*the rows have solution"):
        R("exact_match")(None, ["x"], solution=["x"])
    with pytest.raises(RewardError, match="column 'answer' has 1 values for 2 completions"):
        R("exact_match")(None, ["x", "y"], answer=["x"])
    # the column parameter points the reward at another column
    assert R("exact_match,column=solution")(None, ["x"], solution=["x"]) == [1.0]
    assert R("exact_match,column=solution").needs == ("solution",)  # what a caller must supply


def test_completion_text_handles_text_and_conversations():
    assert completion_text("hi") == "hi"
    assert completion_text(chat("hi")) == "hi"
    assert completion_text(None) == ""
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"


# --- length and shorter -------------------------------------------------------------------------------------------


def test_length_in_words_chars_and_tokens():
    words = R("length,target=4,unit=words")
    # 4 words: at the target; 2 words: half-way to empty; "": as far as it gets below; 8 words: double -> -1.
    assert words(None, ["one two three four", "one two", "", "a b c d e f g h"]) == [0.0, -0.5, -1.0, -1.0]
    # CJK has no spaces: each character counts as a word, so 4 ideographs hit the target of 4.
    assert words(None, ["我爱北京"]) == [0.0]
    chars = R("length,target=5,unit=chars")
    # "héllo" is 5 code points even though é takes 2 bytes; "hi" is 3 short of 5.
    assert chars(None, ["héllo", "hi"]) == [0.0, -0.6]
    raw = R("length,target=20,unit=chars,normalize=false")
    assert raw(None, ["x" * 25]) == [-5.0]  # the LLM-course formula -|len - 20|
    toks = R("length,target=3,unit=tokens")
    a, b = toks(None, ["Paris", "The capital of France is Paris, of course, everyone knows that."])
    assert a > b  # a one-word answer is near 3 tokens; the long sentence is far above


def test_shorter_is_better():
    fn = R("shorter,limit=10,unit=words")
    # empty = 1 (beware: pair with a content reward); 5 words = half the limit; 20 words = twice the limit -> -1
    assert fn(None, ["", "a b c d e", " ".join(["w"] * 20)]) == [1.0, 0.5, -1.0]


# --- format -------------------------------------------------------------------------------------------------------

GOOD = "<think>2 + 2 is 4</think>\n<answer>4</answer>"
CASES = [
    GOOD,  # 0: exactly think-then-answer
    "Sure! " + GOOD,  # 1: text before the think block: not strict, still soft
    "<answer>4</answer><think>late</think>",  # 2: answer before think: neither
    "<think>hm</think><answer>4</answer><answer>5</answer>",  # 3: two answers: not strict, soft, tag_count 0.5
    "<think>unfinished reasoning",  # 4: truncated: one tag only
    "",  # 5: empty
    "<think>  </think><answer>4</answer>",  # 6: blank thinking: not strict
    "<think>σκέψη 🤔</think><answer>四</answer>",  # 7: unicode content is fine
]


def test_format_strict_soft_and_tag_count():
    assert R("format_strict")(None, CASES) == [1, 0, 0, 0, 0, 0, 0, 1]
    assert R("format_soft")(None, CASES) == [1, 1, 0, 1, 0, 0, 1, 1]
    assert R("tag_count")(None, CASES) == [1, 1, 1, 0.5, 0.25, 0, 1, 1]
    assert R("format_strict")(None, [chat(GOOD)]) == [1.0]  # conversational completions too


# --- regex, keywords ----------------------------------------------------------------------------------------------


def test_regex_include_and_exclude():
    inc = R(r"regex,pattern=\d{4}")
    # a year matches; no 4-digit run does not; Arabic-Indic digits are \d in Python's unicode regex
    assert inc(None, ["in 1969", "in the sixties", "١٩٦٩"]) == [1.0, 0.0, 1.0]
    exc = R("regex,pattern=as an ai,mode=exclude,ignore_case=true")
    assert exc(None, ["As an AI, I cannot", "Paris."]) == [0.0, 1.0]


def test_keywords_whole_words_fraction():
    inc = R("keywords,words=Paris|France")
    # both present; only paris (case ignored); "Parisian" is not the word Paris; empty has none
    assert inc(None, ["Paris is in France", "paris!", "Parisian food", ""]) == [1.0, 0.5, 0.0, 0.0]
    exc = R("keywords,words=sorry|apologize,mode=exclude")
    assert exc(None, ["Sorry, I apologize", "Here you go", "sorry"]) == [0.0, 1.0, 0.5]
    assert R("keywords,words=café")(None, ["un CAFÉ noir"]) == [1.0]  # unicode case-folding


# --- repetition, overlong -----------------------------------------------------------------------------------------


def test_repetition_penalty():
    fn = R("repetition,ngram=2,max_penalty=-1.0")
    # "a b a b a b": bigrams ab, ba, ab, ba, ab -> 2 unique of 5 -> (1 - 2/5) * -1 = -0.6
    # all distinct -> 0; a single word has no bigram -> 0; empty -> 0
    assert fn(None, ["a b a b a b", "one two three four", "word", ""]) == pytest.approx([-0.6, 0.0, 0.0, 0.0])
    assert R("repetition,ngram=1")(None, ["la la la la"]) == [-0.75]  # 1 unique word of 4
    # punctuation does not hide a repeat, and emoji are units: spam is repetition too
    assert R("repetition,ngram=1")(None, ["No, no, no, no."]) == [-0.75]
    assert fn(None, ["🌱🌱🌱🌱🌱"]) == [-0.75]  # bigrams: 4, 1 unique


def test_soft_overlong_punishment_matches_dapo():
    fn = R("overlong,max_length=10,cache=4,unit=chars")
    # <= 6: no punishment; 8: half-way down the ramp (6-8)/4; 10: -1 at the limit; 12: beyond -> -1
    assert fn(None, ["x" * 5, "x" * 6, "x" * 8, "x" * 10, "x" * 12]) == [0.0, 0.0, -0.5, -1.0, -1.0]


# --- correctness: one definition shared with the evaluator -------------------------------------------------------


def test_extract_answer():
    assert extract_answer("<think>a</think><answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"  # the last block wins
    assert extract_answer("<think>x</think> so 7") == "so 7"  # reasoning is not graded
    assert extract_answer("<answer>12 cut off") == "12 cut off"  # truncated at the length limit
    assert extract_answer("just 7") == "just 7"
    assert extract_answer("just 7", strict=True) is None


def test_math_correct_with_math_verify():
    fn = R("math_correct")
    comps = [
        "<think>3*4=12</think><answer>12</answer>",  # right
        "<think>3*4=13</think><answer>13</answer>",  # wrong
        "<answer>12.0</answer>",  # right: math-verify sees 12.0 = 12
        "I think it is \\boxed{12}",  # right: no tags, the boxed value is parsed
        "<answer>twelve</answer>",  # wrong: words are not parsed as numbers
        "",  # empty: wrong
        chat("<answer>\\frac{24}{2}</answer>"),  # right: 24/2 = 12, conversational
    ]
    assert fn(None, comps, answer=["12"] * len(comps)) == [1, 0, 1, 1, 0, 0, 1]
    assert fn(None, ["<answer>0.5</answer>"], answer=["\\frac{1}{2}"]) == [1.0]  # latex reference
    # the question restated is not an answer, though math-verify would evaluate it (a hack GRPO found)
    echoes = ["Calculate 1 - 6.", "<answer>8 - 5</answer>", "Calculate 6 + 10 * 0.", "(2+3)*4"]
    assert fn(None, echoes, answer=["-5", "3", "6", "20"]) == [0.0, 0.0, 0.0, 0.0]
    worked = ["1 - 6 = -5", "<answer>1/2</answer>", "3*4 = 12, so 12.", "(2+3)*4 = 20"]
    assert fn(None, worked, answer=["-5", "0.5", "12", "20"]) == [1.0, 1.0, 1.0, 1.0]
    assert fn(None, ["<answer>72</answer>"], answer=["He earns 9*8 = 72.\n#### 72"]) == [1.0]  # GSM8K style
    # a reference math-verify cannot parse: the reward does not apply (None), whatever the answer
    assert fn(None, ["<answer>Paris</answer>", "12"], answer=["Paris", None]) == [None, None]
    strict = R("math_correct,strict=true")
    assert strict(None, ["12", "<answer>12</answer>"], answer=["12", "12"]) == [
        0.0,
        1.0,
    ]  # no tags, no credit


def test_math_correct_off_the_main_thread():
    # math-verify's timeouts use signals (main thread only); an evaluator running rewards in a thread still works
    import threading

    out = []
    t = threading.Thread(
        target=lambda: out.append(R("math_correct")(None, ["<answer>6</answer>", "5"], answer=["6", "6"]))
    )
    t.start()
    t.join()
    assert out == [[1.0, 0.0]]


def test_exact_contains_numeric_match():
    refs = ["Paris"] * 5
    comps = ["<answer>Paris.</answer>", "<answer>paris</answer>", "The capital is Paris", "Parisian", ""]
    # trailing period and case are ignored; a sentence is not an exact match; "Parisian" is not the word
    assert R("exact_match")(None, comps, answer=refs) == [1, 1, 0, 0, 0]
    assert R("contains_answer")(None, comps, answer=refs) == [1, 1, 1, 0, 0]
    assert R("exact_match,ignore_case=false")(None, ["paris"], answer=["Paris"]) == [0.0]
    assert R("exact_match")(None, ["Zürich"], answer=["ZÜRICH"]) == [1.0]  # unicode case-folding
    assert R("exact_match")(None, ["x"], answer=[["y", "x"]]) == [1.0]  # a list reference: any of them
    num = R("numeric_match,rel_tol=0.01")
    # 3.14 is within 1% of 3.1416; the last number counts ("2 ... 1,000" -> 1000); text reference -> None
    assert num(
        None, ["about 3.14", "3", "from 2 to 1,000", "pi"], answer=["3.1416", "3.1416", "1000", "pi"]
    ) == [
        1.0,
        0.0,
        1.0,
        None,
    ]
    assert num(None, ["−4"], answer=[-4]) == [1.0]  # unicode minus sign; a numeric reference column
    assert is_correct("3/4", "0.75", "numeric") and is_correct(None, "x", "exact") is False
    assert is_correct("x", None, "exact") is None


def test_rg_verifier_on_known_right_and_wrong_answers():
    import reasoning_gym

    ds = reasoning_gym.create_dataset("leg_counting", size=5, seed=3)
    item = ds[2]
    key = rg_key("leg_counting", {}, seed=3, size=5, index=2)
    fn = R("rg_verifier")
    right, wrong = f"<answer>{item['answer']}</answer>", f"<answer>{int(item['answer']) + 1}</answer>"
    # right answer -> 1 from the task's own score_answer; off by one -> 0; nothing -> 0; unreadable entry -> None
    assert fn(None, [right, wrong, "", right], rg_entry=[key, key, key, "not json"]) == [1.0, 0.0, 0.0, None]
    # a reasoning-gym entry itself (as exported by reasoning-gym) works too
    assert rg_score(item["answer"], json.dumps(item)) == 1.0


# --- reward model -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification with the bundled tokenizer, saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from workbench.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("rm") / "tiny-rm"
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_scores_batched_and_cached(tiny_rm):
    prompts = ["What is 2+2?", "Name a colour.", "Hi", [{"role": "user", "content": "Say hi"}]]
    comps = ["4", "Blue, a calm colour of the sky.", chat("Hello there, how are you today?"), "hi"]
    big = R(f"reward_model,model={tiny_rm},batch_size=4")
    one = R(f"reward_model,model={tiny_rm},batch_size=1")
    a, b = big(prompts, comps), one(prompts, comps)
    # A random model gives arbitrary but finite scores; padding in a batch must not change them.
    assert len(a) == 4 and all(math.isfinite(x) for x in a) and len(set(a)) == 4
    assert a == pytest.approx(b, abs=1e-5)
    # The prompt is part of what is scored.
    assert R(f"reward_model,model={tiny_rm},with_prompt=false")(prompts, comps) != pytest.approx(a)
    from workbench.rewards.model import load_reward_model

    assert load_reward_model(str(tiny_rm), "cpu") is load_reward_model(str(tiny_rm), "cpu")  # loaded once


def test_reward_model_missing_is_a_clear_error(tmp_path):
    with pytest.raises(RewardError, match="could not load.*sequence-classification"):
        R(f"reward_model,model={tmp_path / 'nope'}")(None, ["x"])
    with pytest.raises(RewardError, match="model is empty"):
        R("reward_model")
