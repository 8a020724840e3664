"""Rewards on the shape of the text: length, the <think>/<answer> format, regex and keywords, repetition, overlong.

Each `_score_*` function takes plain completion texts (see `base.Reward`) and returns one float per completion.
Lengths are measured in an explicit unit: "chars" (Unicode code points), "words" (runs of non-space; each CJK
character counts as one word, since those scripts do not separate words by spaces) or "tokens" (of the `tokenizer`
parameter, the bundled model's by default, so a score does not change with the policy model).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

import regex

from ..paths import DEFAULT_MODEL
from .base import Param, RewardError, RewardInfo, binder, positive

log = logging.getLogger("workbench.rewards")
UNITS = ("chars", "words", "tokens")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from ..models import load_tokenizer  # lazy: transformers is slow to import and only "tokens" needs it

    return load_tokenizer(name)


def measure(texts: list[str], unit: str, tokenizer: str = DEFAULT_MODEL) -> list[int]:
    """Length of each text in `unit` (chars, words or tokens)."""
    if unit == "chars":
        return [len(t) for t in texts]
    if unit == "words":
        return [len(_WORD.findall(t)) for t in texts]
    if unit == "tokens":
        tok = _tokenizer(tokenizer)
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
    raise RewardError(f"unit={unit!r} is not one of {', '.join(UNITS)}")


def _unit_params(default_unit: str) -> dict[str, Param]:
    return {
        "unit": Param(default_unit, "What length is counted in.", UNITS),
        "tokenizer": Param(DEFAULT_MODEL, "Tokenizer (model name, folder or hub id) when unit is tokens."),
    }


# --- length -------------------------------------------------------------------------------------------------------


def _score_length(texts, prompts, cols, *, target, unit, tokenizer, normalize):
    # The LLM-course exercise is -|len - target|; normalised by target it is 0 at the target and -1 at empty or
    # double length, on a scale that mixes with other rewards whatever the target.
    lengths = measure(texts, unit, tokenizer)
    return [-abs(n - target) / (target if normalize else 1) for n in lengths]


def _score_shorter(texts, prompts, cols, *, limit, unit, tokenizer):
    # Linear, not clipped at 0: a clip would give every over-limit completion the same score, so a group of long
    # answers would carry no signal at all. Beware: an empty answer scores best; pair it with a content reward.
    return [1.0 - n / limit for n in measure(texts, unit, tokenizer)]


# --- the <think>/<answer> format ----------------------------------------------------------------------------------

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRICT = re.compile(r"\A\s*<think>(.+?)</think>\s*<answer>(.+?)</answer>\s*\Z", re.DOTALL)
_SOFT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def _score_format_strict(texts, prompts, cols):
    # The whole completion is exactly think-then-answer, each tag once and neither part blank.
    out = []
    for t in texts:
        m = _STRICT.match(t)
        ok = m and all(t.count(tag) == 1 for tag in TAGS) and m.group(1).strip() and m.group(2).strip()
        out.append(1.0 if ok else 0.0)
    return out


def _score_format_soft(texts, prompts, cols):
    # A think block followed by an answer block somewhere; text around them is allowed.
    return [1.0 if _SOFT.search(t) else 0.0 for t in texts]


def _score_tag_count(texts, prompts, cols):
    # Partial credit, 0.25 per tag that appears exactly once: a dense signal a small model can climb.
    return [sum(0.25 for tag in TAGS if t.count(tag) == 1) for t in texts]


# --- regex and keywords -------------------------------------------------------------------------------------------


# A visitor's pattern can backtrack for hours, and Python's `re` holds the GIL while it does (one pattern would stop
# every visitor's page). The `regex` package matches with a timeout: a completion it cannot decide in time scores 0.
REGEX_TIMEOUT_S = 0.1
MAX_PATTERN_CHARS = 1000


def _check_regex(pattern, mode, ignore_case):
    if not pattern:
        raise RewardError("regex: pattern is empty; give a regular expression, e.g. pattern=\\d+")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RewardError(
            f"regex: pattern is {len(pattern)} characters long; keep it under {MAX_PATTERN_CHARS}"
        )
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise RewardError(f"regex: pattern {pattern!r} is not a valid regular expression ({e})") from None


def _score_regex(texts, prompts, cols, *, pattern, mode, ignore_case):
    rx = regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    out, slow = [], 0
    for t in texts:
        try:
            hit = rx.search(t, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:  # undecided is not a match nor its absence: no reward either way
            slow += 1
            out.append(0.0)
            continue
        out.append(float(hit if mode == "include" else not hit))
    if slow:
        log.warning("regex reward: pattern %r took over %gs on %d of %d completions; they score 0",
                    pattern[:80], REGEX_TIMEOUT_S, slow, len(texts))  # fmt: skip
    return out


def _keyword_list(words: str) -> list[str]:
    return [w.strip() for w in str(words).split("|") if w.strip()]


def _check_keywords(words, mode, ignore_case):
    if not _keyword_list(words):
        raise RewardError("keywords: words is empty; list them separated by |, e.g. words=Paris|France")


def _score_keywords(texts, prompts, cols, *, words, mode, ignore_case):
    # Whole-word match for word-like keywords (so "cat" is not found in "concatenate"), substring otherwise.
    kws = _keyword_list(words)
    flags = re.IGNORECASE if ignore_case else 0
    rxs = [
        re.compile(rf"(?<!\w){re.escape(k)}(?!\w)" if k[0].isalnum() else re.escape(k), flags) for k in kws
    ]
    out = []
    for t in texts:
        frac = sum(rx.search(t) is not None for rx in rxs) / len(rxs)
        out.append(frac if mode == "include" else 1.0 - frac)
    return out


# --- repetition and overlong --------------------------------------------------------------------------------------


def is_symbol(ch: str) -> bool:
    # "So" is emoji and pictographs; maths operators (Sm) and currency (Sc) appear in ordinary answers.
    return unicodedata.category(ch) in ("So", "Cs", "Co")


def units(text: str) -> list[str]:
    """Words (runs of letters, digits, apostrophes) lower-cased, and each symbol or emoji as a unit of its own."""
    out, word = [], []
    for ch in text.lower():
        if ch.isalnum() or (ch in "'’" and word):
            word.append(ch)
            continue
        if word:
            out.append("".join(word))
            word = []
        if is_symbol(ch):
            out.append(ch)
    if word:
        out.append("".join(word))
    return out


def _score_repetition(texts, prompts, cols, *, ngram, max_penalty):
    # TRL's repetition penalty (Demystifying Long CoT, App. C.2) over `units` (words and single emoji or symbols)
    # instead of token ids, so it reads the same for every model: (1 - unique/total n-grams) * max_penalty; 0 when
    # there are fewer than n units. Emoji count (they are tokens in TRL's version too): "🌱🌱🌱🌱" is repetition.
    out = []
    for t in texts:
        w = units(t)
        grams = list(zip(*[w[i:] for i in range(ngram)], strict=False))
        out.append((1 - len(set(grams)) / len(grams)) * max_penalty if grams else 0.0)
    return [v + 0.0 for v in out]  # + 0.0 turns -0.0 into 0.0


def _check_repetition(ngram, max_penalty):
    positive(ngram=ngram)
    if max_penalty > 0:
        raise RewardError(f"repetition: max_penalty={max_penalty} must be 0 or negative (it is a penalty)")


def _score_overlong(texts, prompts, cols, *, max_length, cache, unit, tokenizer):
    # DAPO eq. 13 (TRL get_soft_overlong_punishment): 0 up to max_length - cache, then a linear ramp to -1 at
    # max_length, -1 beyond.
    out = []
    for n in measure(texts, unit, tokenizer):
        if n <= max_length - cache:
            out.append(0.0)
        elif n <= max_length:
            out.append((max_length - cache - n) / cache)
        else:
            out.append(-1.0)
    return out


def _check_overlong(max_length, cache, unit, tokenizer):
    positive(max_length=max_length, cache=cache)
    if cache > max_length:
        raise RewardError(f"overlong: cache={cache} is above max_length={max_length}; lower cache")


MODES = ("include", "exclude")

REWARDS = [
    RewardInfo(
        "length",
        "Closeness to a target length: -|length - target| / target (0 at the target).",
        {
            "target": Param(20, "Target length, in `unit`."),
            **_unit_params("words"),
            "normalize": Param(
                True, "Divide the distance by the target; off = the course's raw -|len - target|."
            ),
        },
        (),
        binder(
            "length",
            _score_length,
            check=lambda target, unit, tokenizer, normalize: positive(target=target),
        ),
    ),
    RewardInfo(
        "shorter",
        "Shorter is better: 1 - length / limit (1 when empty, 0 at the limit, negative beyond).",
        {"limit": Param(100, "Length that scores 0, in `unit`."), **_unit_params("words")},
        (),
        binder("shorter", _score_shorter, check=lambda limit, unit, tokenizer: positive(limit=limit)),
    ),
    RewardInfo(
        "format_strict",
        "1 when the whole completion is <think>…</think><answer>…</answer>, each tag once, else 0.",
        {},
        (),
        binder("format_strict", _score_format_strict),
    ),
    RewardInfo(
        "format_soft",
        "1 when a <think>…</think> block is followed by an <answer>…</answer> block anywhere, else 0.",
        {},
        (),
        binder("format_soft", _score_format_soft),
    ),
    RewardInfo(
        "tag_count",
        "0.25 for each of <think>, </think>, <answer>, </answer> that appears exactly once.",
        {},
        (),
        binder("tag_count", _score_tag_count),
    ),
    RewardInfo(
        "regex",
        "1 when a regular expression matches (include) or does not match (exclude), else 0.",
        {
            "pattern": Param(
                "",
                "Regular expression (Python syntax), searched anywhere in the completion; a "
                f"completion it cannot decide within {REGEX_TIMEOUT_S:g} s scores 0.",
            ),
            "mode": Param("include", "include = reward a match; exclude = reward its absence.", MODES),
            "ignore_case": Param(False, "Match regardless of case."),
        },
        (),
        binder("regex", _score_regex, check=_check_regex),
    ),
    RewardInfo(
        "keywords",
        "Fraction of keywords present (include) or absent (exclude); whole words, separated by |.",
        {
            "words": Param("", "Keywords separated by |, e.g. Paris|France."),
            "mode": Param("include", "include = reward presence; exclude = reward absence.", MODES),
            "ignore_case": Param(True, "Match regardless of case."),
        },
        (),
        binder("keywords", _score_keywords, check=_check_keywords),
    ),
    RewardInfo(
        "repetition",
        "Penalty for repeated word n-grams: (1 - unique/total) × max_penalty, 0 when nothing repeats.",
        {
            "ngram": Param(3, "n: words per n-gram."),
            "max_penalty": Param(-1.0, "Score of a completion made only of repeats (0 or negative)."),
        },
        (),
        binder("repetition", _score_repetition, check=_check_repetition),
    ),
    RewardInfo(
        "overlong",
        "DAPO soft overlong punishment: 0 up to max_length - cache, ramps to -1 at max_length, -1 beyond.",
        {
            "max_length": Param(
                48, "Length at which the punishment reaches -1 (e.g. max_completion_length)."
            ),
            "cache": Param(16, "Width of the ramp before max_length."),
            **_unit_params("tokens"),
        },
        (),
        binder("overlong", _score_overlong, check=_check_overlong),
    ),
]
