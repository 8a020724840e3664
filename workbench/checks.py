"""Checks: measurements of an answer that are not a training reward, so they can tell whether raising it helped.

    from workbench.checks import degenerate_reason, repetition_share, reference_grader, CHECKS
    degenerate_reason("🌱🌱🌱🌱🌱🌱")          # -> "symbol or emoji run"
    degenerate_reason("Paris is the capital.")   # -> None
    repetition_share("no, no, no, no, no")       # -> 0.67 (share of repeated 3-grams)

A reward is what the model is trained to raise; a check is what tells you whether raising it helped. Every
comparison (and the held-out slice the worker evaluates during training) scores both models with these, and the
verdict (`verdict.py`) never calls a model better when a check that judges quality got significantly worse.

The text checks are pure and linear-time (no backtracking regex: a visitor's answer text must not hang the server).
`naturalness` (the mean token log-probability of an answer under the *base* model) needs a model: `evaluate.py`
computes it. Correctness reuses the rewards' own grading (`rewards.answers`): one definition of "correct".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RewardSpec
from .rewards.text import is_symbol, units
from .tasks.base import reference_columns


@dataclass(frozen=True)
class CheckInfo:
    """One check: what it measures, which direction is better (None = neither), and whether it can veto a verdict."""

    description: str
    better: str | None  # "higher", "lower" or None (informational, e.g. length)
    judges_quality: bool  # a significant change for the worse stops the verdict from saying "better"


CHECKS: dict[str, CheckInfo] = {
    "degenerate": CheckInfo(
        "1 when the answer is degenerate: empty, no letters or digits, a word or phrase said 3+ times back to back, one "
        "character repeated many times, or a run of symbols or emoji; else 0.",
        "lower",
        True,
    ),
    "repetition": CheckInfo(
        "Share of repeated 3-grams of words and symbols (0 = nothing repeats, near 1 = one phrase over and over).",
        "lower",
        True,
    ),
    "naturalness": CheckInfo(
        "Mean log-probability per token of the answer under the base model: how far the language has drifted.",
        "higher",
        True,
    ),
    "correct": CheckInfo(
        "1 when the answer matches the prompt's reference answer (the task's grader), 0 if not; only where a "
        "reference exists.",
        "higher",
        True,
    ),
    "words": CheckInfo("Length of the answer in words.", None, False),
    "tokens": CheckInfo("Length of the answer in tokens (its end-of-sequence token included).", None, False),
    "truncated": CheckInfo("1 when the answer was cut at the length cap, else 0.", "lower", False),
}
# A drop in naturalness smaller than this (nats per token) is drift worth reporting, not a worse model: any
# fine-tuning moves the language a little, and e^0.5 ≈ 1.6× less likely per token is still ordinary text.
NATURALNESS_TOLERANCE = 0.5
# A rise in the repeated-3-gram share smaller than this is no sign of rot: short answers repeat a few 3-grams by
# nature ("2 + 3 = 5, and 5 + 4 = 9"; measured: +0.07 on arithmetic with correct, well-formed answers), while
# the length-only run that degenerated rose by +0.30.
REPETITION_TOLERANCE = 0.1

# --- degenerate answers -----------------------------------------------------------------------------------------
MAX_PHRASE_WORDS = 8  # a "phrase" repeated back to back is 1 to 8 words long
REPEATS = 3  # said this many times in a row
LETTER_RUN = 5  # "Hiiiii": no English word holds a letter 3 times in a row, 5 is far past any spelling
OTHER_RUN = 8  # "!!!!!!!!", "........": punctuation runs of 8 or more
SYMBOL_RUN = 4  # four emoji or pictographs in a row ("🌱🌱🌱🌱")
SYMBOL_SHARE = 0.3  # or symbols are more than 30% of the visible characters (at least 3 of them)
_JOINERS = {"\u200d", "\ufe0f", "\ufe0e"}  # zero-width joiner and variation selectors inside emoji sequences


def _repeated_phrase(seq: Sequence[str]) -> str | None:
    """The first word or phrase (≤ MAX_PHRASE_WORDS units) said REPEATS times back to back, or None."""
    n = len(seq)
    for k in range(1, MAX_PHRASE_WORDS + 1):
        if k * REPEATS > n:
            break
        run = (
            0  # positions i where seq[i] == seq[i - k]; a phrase said R times in a row gives k·(R-1) of them
        )
        for i in range(k, n):
            run = run + 1 if seq[i] == seq[i - k] else 0
            if run >= k * (REPEATS - 1):
                return " ".join(seq[i - k + 1 : i + 1])
    return None


def degenerate_reason(text: str) -> str | None:
    """Why an answer is degenerate ("empty", "no letters or digits", "repeats 'no' 3+ times", ...), or None when it is not."""
    t = (text or "").strip()
    if not t:
        return "empty"
    if not any(ch.isalnum() for ch in t):  # a bare number ("144") is a fine answer to "What is 12 squared?"
        return "no letters or digits"
    prev, run, sym_run, symbols, visible = "", 0, 0, 0, 0
    for ch in t:
        if ch in _JOINERS:
            continue
        if ch.isspace():
            prev, run = "", 0
            continue  # spaces neither break nor extend a symbol run: "🌱 🌱 🌱 🌱" is still spam
        visible += 1
        run = run + 1 if ch.lower() == prev else 1
        prev = ch.lower()
        if ch.isalpha() and run >= LETTER_RUN:
            return f"'{ch}' repeated {LETTER_RUN}+ times"
        if not ch.isalnum() and run >= OTHER_RUN:
            return f"'{ch}' repeated {OTHER_RUN}+ times"
        if is_symbol(ch):
            symbols, sym_run = symbols + 1, sym_run + 1
            if sym_run >= SYMBOL_RUN:
                return "symbol or emoji run"
        else:
            sym_run = 0
    if symbols >= 3 and symbols > SYMBOL_SHARE * visible:
        return "mostly symbols or emoji"
    phrase = _repeated_phrase(units(t))
    if phrase is not None:
        return f"repeats {phrase[:40]!r} {REPEATS}+ times in a row"
    return None


def repetition_share(text: str, n: int = 3) -> float:
    """1 − unique/total n-grams of `units(text)`; 0 when there are fewer than n units."""
    u = units(text or "")
    grams = [tuple(u[i : i + n]) for i in range(len(u) - n + 1)]
    return (1 - len(set(grams)) / len(grams)) + 0.0 if grams else 0.0


def word_count(text: str) -> int:
    return sum(1 for w in (text or "").split() if any(ch.isalnum() for ch in w))


# --- correctness against the reference --------------------------------------------------------------------------
CORRECTNESS_REWARDS = ("rg_verifier", "math_correct", "exact_match", "numeric_match", "contains_answer")


def reference_grader(rows: Sequence[dict], rewards: Sequence[RewardSpec]) -> tuple[str, Callable] | None:
    """(how, fn(answers) -> list[1.0 | 0.0 | None]) grading answers against the rows' references, or None.

    Which grader: the run's own correctness reward when it has one (one definition of "correct"); else the task's
    reasoning-gym verifier (`rg_entry`); else an `answer` column graded as a number when every reference is one,
    and otherwise as "the reference (or any of a list) appears in the answer as a whole word or phrase".
    """
    from .rewards import build_reward
    from .rewards.answers import to_number

    cols = {k for r in rows for k in r}
    own = [r for r in rewards if r.name in CORRECTNESS_REWARDS]
    for r in own:
        column = r.params.get("column", "rg_entry" if r.name == "rg_verifier" else "answer")
        if column in cols:
            spec = RewardSpec(r.name, 1.0, dict(r.params))
            return f"{r.name} (the run's reward)", _bound(build_reward(spec), rows)
    if "rg_entry" in cols:
        return "rg_verifier (the task's verifier)", _bound(build_reward(RewardSpec("rg_verifier")), rows)
    refs = [r.get("answer") for r in rows if r.get("answer") is not None]
    if not refs:
        return None
    numeric = all(not isinstance(a, (list, tuple)) and to_number(a) is not None for a in refs)
    name = "numeric_match" if numeric else "contains_answer"
    return f"{name} (against the answer column)", _bound(build_reward(RewardSpec(name)), rows)


def _bound(fn: Callable, rows: Sequence[dict]) -> Callable[[list[str]], list[float | None]]:
    columns = reference_columns(list(rows))

    def grade(answers: list[str]) -> list[float | None]:
        vals = fn(prompts=[r.get("prompt") for r in rows], completions=list(answers), **columns)
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in vals]

    return grade


# --- all checks on a set of answers -----------------------------------------------------------------------------
def text_checks(
    answers: Sequence[str],
    tokens: Sequence[int],
    truncated: Sequence[bool],
    grader: Callable[[list[str]], list[float | None]] | None = None,
) -> dict[str, list[Any]]:
    """Every check except naturalness, one value per answer (None where it does not apply), plus the reasons.

    Returns {check name: values} and "degenerate_reason": the reason text per answer ("" when fine).
    """
    reasons = [degenerate_reason(a) or "" for a in answers]
    out: dict[str, list[Any]] = {
        "degenerate": [float(bool(r)) for r in reasons],
        "repetition": [repetition_share(a) for a in answers],
        "correct": grader(list(answers)) if grader is not None else [None] * len(answers),
        "words": [float(word_count(a)) for a in answers],
        "tokens": [float(n) for n in tokens],
        "truncated": [float(bool(t)) for t in truncated],
    }
    out["degenerate_reason"] = reasons
    return out
