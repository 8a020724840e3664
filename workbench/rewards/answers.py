"""Correctness: the one definition of "correct" that rewards and the evaluator share.

    extract_answer(text, strict=False) -> str | None    # the graded part of a completion
    is_correct(answer, reference, mode="math") -> bool | None   # None = the reference cannot be graded
    rg_score(answer, rg_entry) -> float | None           # a reasoning-gym task's own verifier

The rewards here (math_correct, exact_match, contains_answer, numeric_match, rg_verifier) are thin batches over these
functions, so an evaluator that calls them scores exactly what training rewarded.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
import unicodedata
from typing import Any

from .base import Param, RewardError, RewardInfo, binder

MODES = ("math", "exact", "contains", "numeric")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# Thousands separators only in groups of three (so "1,2,3" is not 123); an optional "/d" makes a fraction.
_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?")
_NUM_ANY = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
)

# Two numbers joined by an operator in plain text: an expression left for the reader to evaluate.
_UNEVALUATED = re.compile(r"\d\s*[-+*/×÷^]\s*\(?\s*-?\d")


def extract_answer(text: str, strict: bool = False) -> str | None:
    """The part of a completion that is graded.

    The last complete <answer>…</answer> block wins. Without one, `strict` gives None (no answer given); otherwise
    the text after an unclosed <answer> (a completion cut at the length limit), else everything after the last
    </think> (reasoning is not graded), else the whole text.
    """
    blocks = _ANSWER.findall(text)
    if blocks:
        return blocks[-1].strip()
    if strict:
        return None
    if "<answer>" in text:
        return text.rsplit("<answer>", 1)[1].strip()
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    return text.strip()


def normalize_text(s: str, ignore_case: bool = True) -> str:
    """NFKC, collapsed spaces, no wrapping quotes/markdown or trailing punctuation; case-folded when asked."""
    s = unicodedata.normalize("NFKC", str(s))
    s = " ".join(s.split()).strip(" \"'`*.!?;:,")
    return s.casefold() if ignore_case else s


def _reference_text(ref: Any) -> str:
    s = str(ref).strip()
    # GSM8K-style references put the final answer after "####"; what comes before is the worked solution.
    return s.rsplit("####", 1)[1].strip() if "####" in s else s


def _missing(ref: Any) -> bool:
    return (
        ref is None
        or (isinstance(ref, float) and math.isnan(ref))
        or (isinstance(ref, str) and not ref.strip())
    )


def to_number(s: Any) -> float | None:
    """A number from a reference: int/float, or text that is one number ("1,234", "-3.5", "3/4", "#### 72")."""
    if isinstance(s, bool):
        return None
    if isinstance(s, (int, float)):
        return float(s) if math.isfinite(s) else None
    t = _reference_text(s).replace("\u2212", "-").strip().rstrip(".").strip("$%")
    return _parse_number(t) if t and _NUM.fullmatch(t) else None


def last_number(text: str) -> float | None:
    """The last number written in `text` (answers usually end on the result), or None."""
    hits = _NUM_ANY.findall(text.replace("\u2212", "-"))
    return _parse_number(hits[-1]) if hits else None


def _parse_number(t: str) -> float | None:
    t = t.replace(",", "").replace(" ", "")
    try:
        if "/" in t:
            a, b = t.split("/")
            return float(a) / float(b) if float(b) != 0 else None
        return float(t)
    except ValueError:
        return None


def _math_verify(answer: str, reference: str) -> bool | None:
    from math_verify import parse, verify  # lazy: sympy import costs ~0.3 s

    # math-verify's timeouts use signals, which work only in the main thread; elsewhere run without them (as TRL).
    main = threading.current_thread() is threading.main_thread()
    if not main:  # it would warn about the missing timeout on every call
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
    gold = parse(reference, parsing_timeout=5 if main else None)
    if not gold:
        return None
    pred = parse(answer, parsing_timeout=5 if main else None)
    return bool(verify(gold, pred, timeout_seconds=5 if main else None))


def is_correct(
    answer: str | None,
    reference: Any,
    mode: str = "math",
    *,
    ignore_case: bool = True,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> bool | None:
    """Is an extracted answer right? None when the reference is missing or cannot be graded in this mode.

    A list reference means "any of these". Modes: math (math-verify equivalence), exact (after `normalize_text`),
    contains (the reference appears as a whole word or phrase), numeric (last number within tolerance).
    """
    if mode not in MODES:
        raise RewardError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    if isinstance(reference, (list, tuple)):
        results = [
            is_correct(answer, r, mode, ignore_case=ignore_case, rel_tol=rel_tol, abs_tol=abs_tol)
            for r in reference
        ]
        graded = [r for r in results if r is not None]
        return any(graded) if graded else None
    if _missing(reference):
        return None
    if mode == "numeric":
        ref = to_number(reference)
        if ref is None:
            return None
        got = last_number(answer or "")
        return got is not None and math.isclose(got, ref, rel_tol=rel_tol, abs_tol=abs_tol)
    if mode == "math":
        ref_text = _reference_text(reference)
        ok = _math_verify(answer or "", ref_text)
        ref_num = to_number(ref_text)
        # math-verify evaluates an expression it finds, so restating the question ("Calculate 1 - 6.") grades as
        # -5. Measured: 60 GRPO steps on arithmetic learned to echo the question and scored 96% "correct". A
        # numeric reference must be stated as the answer's final number, not left as an unevaluated expression.
        if ok and ref_num is not None and _UNEVALUATED.search(answer or ""):
            got = last_number(answer or "")
            return got is not None and math.isclose(got, ref_num, rel_tol=rel_tol, abs_tol=abs_tol)
        return ok
    ref = normalize_text(_reference_text(reference), ignore_case)
    if not ref:
        return None
    got = normalize_text(answer or "", ignore_case)
    if mode == "exact":
        return got == ref
    return re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", got) is not None


# --- reasoning-gym ------------------------------------------------------------------------------------------------


def rg_key(name: str, config: dict | None = None, seed: int = 0, size: int = 1, index: int = 0) -> str:
    """The `rg_entry` column value that lets a verifier rebuild an item exactly: dataset, config, seed, index."""
    return json.dumps({"dataset": name, "config": config or {}, "seed": seed, "size": size, "index": index})


@functools.lru_cache(maxsize=16)
def _rg_dataset(name: str, config_json: str, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


@functools.lru_cache(maxsize=4096)
def _rg_item(name: str, config_json: str, seed: int, size: int, index: int) -> dict:
    return _rg_dataset(name, config_json, seed, size)[index]


def rg_score(answer: str | None, rg_entry: Any) -> float | None:
    """Score an answer with the task's own `score_answer`, in [0, 1]; None when the entry cannot be read.

    `rg_entry` is JSON (or a dict): either `rg_key(...)` — the item is regenerated, so metadata keeps its exact
    types — or a reasoning-gym entry itself ({question, answer, metadata: {source_dataset, ...}}).
    """
    try:
        e = json.loads(rg_entry) if isinstance(rg_entry, str) else rg_entry
        if "index" in e:
            cfg = json.dumps(e.get("config") or {}, sort_keys=True)
            args = (e["dataset"], cfg, int(e.get("seed", 0)), int(e.get("size", 1)))
            entry, ds = _rg_item(*args, int(e["index"])), _rg_dataset(*args)
        else:
            entry, ds = e, _rg_dataset(e["metadata"]["source_dataset"], "{}", 0, 1)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError):
        return None
    return float(ds.score_answer(answer, entry))


# --- rewards ------------------------------------------------------------------------------------------------------


def _score_match(texts, prompts, cols, *, column, strict, mode, **tol):
    refs = cols[column]
    out = []
    for t, ref in zip(texts, refs, strict=True):
        ok = is_correct(extract_answer(t, strict), ref, mode, **tol)
        out.append(None if ok is None else float(ok))
    return out


def _score_math(texts, prompts, cols, *, column, strict):
    return _score_match(texts, prompts, cols, column=column, strict=strict, mode="math")


def _score_exact(texts, prompts, cols, *, column, strict, ignore_case):
    return _score_match(
        texts, prompts, cols, column=column, strict=strict, mode="exact", ignore_case=ignore_case
    )


def _score_contains(texts, prompts, cols, *, column, strict, ignore_case):
    return _score_match(
        texts, prompts, cols, column=column, strict=strict, mode="contains", ignore_case=ignore_case
    )


def _score_numeric(texts, prompts, cols, *, column, strict, rel_tol, abs_tol):
    return _score_match(
        texts, prompts, cols, column=column, strict=strict, mode="numeric", rel_tol=rel_tol, abs_tol=abs_tol
    )


def _score_rg(texts, prompts, cols, *, column, strict):
    return [rg_score(extract_answer(t, strict), e) for t, e in zip(texts, cols[column], strict=True)]


def _check_tol(column, strict, rel_tol, abs_tol):
    if rel_tol < 0 or abs_tol < 0:
        raise RewardError(f"numeric_match: rel_tol={rel_tol} and abs_tol={abs_tol} must be 0 or more")


def _column(default: str = "answer") -> Param:
    return Param(default, "Dataset column holding the reference.")


_STRICT = Param(False, "Grade only an <answer>…</answer> block; off = fall back to the text after </think>.")
_CASE = Param(True, "Compare regardless of case.")

REWARDS = [
    RewardInfo(
        "math_correct",
        "1 when math-verify finds the answer equal to the reference, 0 if not, None if the reference won't parse.",
        {"column": _column(), "strict": _STRICT},
        ("answer",),
        binder("math_correct", _score_math, ["column"]),
    ),
    RewardInfo(
        "exact_match",
        "1 when the answer equals the reference (ignoring case, spaces, quotes, end punctuation), else 0.",
        {"column": _column(), "strict": _STRICT, "ignore_case": _CASE},
        ("answer",),
        binder("exact_match", _score_exact, ["column"]),
    ),
    RewardInfo(
        "contains_answer",
        "1 when the reference appears in the answer as a whole word or phrase, else 0.",
        {"column": _column(), "strict": _STRICT, "ignore_case": _CASE},
        ("answer",),
        binder("contains_answer", _score_contains, ["column"]),
    ),
    RewardInfo(
        "numeric_match",
        "1 when the answer's last number is within tolerance of the reference, 0 if not, None if not a number.",
        {
            "column": _column(),
            "strict": _STRICT,
            "rel_tol": Param(1e-6, "Relative tolerance."),
            "abs_tol": Param(1e-9, "Absolute tolerance."),
        },
        ("answer",),
        binder("numeric_match", _score_numeric, ["column"], check=_check_tol),
    ),
    RewardInfo(
        "rg_verifier",
        "The reasoning-gym task's own score_answer on the extracted answer, in [0, 1].",
        {"column": _column("rg_entry"), "strict": _STRICT},
        ("rg_entry",),
        binder("rg_verifier", _score_rg, ["column"]),
    ),
]
