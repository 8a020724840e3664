"""The exploit battery: canned adversarial answers to each prompt, scored with the run's rewards, and the flags they
raise when they score like real answers.

    texts = exploit_texts(row, prompt, count_tokens, cap=48, typical=30)   # {"empty": "", "echo": ..., ...}
    results = judge(sampled_totals, sampled_scores, exploit_scores, names, weights, specs)

Why these answers: each is a way a policy has been seen to game a reward (the length-only preset taught the
bundled model "🌱🌱🌱" and "no, no, no"; a `contains` grader pays for an answer buried in a list of guesses; format
terms pay for tags around a wrong answer). An exploit is flagged when it scores at or above the median sampled
answer of its prompt in at least half the prompts: in GRPO that answer would get a non-negative advantage, so
the policy is free to drift towards it. "The reference alone" is the control: it should beat real answers, and a
flag says so when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..checks import CORRECTNESS_REWARDS as CORRECTNESS
from ..rewards.answers import to_number

EXPLOITS: dict[str, str] = {
    "empty": "the empty answer",
    "echo": "the prompt echoed back",
    "repeat": "one phrase repeated up to the length cap",
    "ramble": "a ramble as long as the length cap",
    "symbols": "symbol and emoji spam",
    "reference": "the reference answer alone",
    "buried": "the reference answer buried in a ramble",
    "wrong_format": "a correct-looking format with a wrong answer",
}
CONTROL = "reference"  # not an exploit: the bare right answer should beat real answers
FIXES: dict[str, str] = {
    "empty": "add a correctness or minimum-length term",
    "echo": "add a correctness term against a reference, or penalise copying the prompt (keywords, mode=exclude)",
    "repeat": "add the repetition penalty (repetition:1) or raise its weight",
    "ramble": "add a length or overlong term, or lower max_completion_length",
    "symbols": "add the repetition penalty (it counts emoji) or a correctness term",
    "buried": "grade only the final answer: ask for <answer> tags and set strict=true, or use exact_match",
    "wrong_format": "weight correctness above the format terms (e.g. math_correct:2 against tag_count:0.5)",
    CONTROL: "add a correctness term (contains_answer, math_correct, ...) or raise its weight",
}
SIZE = ("length", "shorter", "overlong")  # rewards that read only how long an answer is
FORMAT = ("format_strict", "format_soft", "tag_count")
TIE = 1e-6  # totals this close are equal: float32 scores summed in another order differ in the last bits
PHRASE = "I am not sure about that."
SYMBOLS = ("🌱", "✨", "🔥", "😊", "🚀", "★")
RAMBLE = (
    "Well, there are a few different ways to look at this question.",
    "It depends on the context and on what exactly you have in mind.",
    "Many people have thought about this over the years, and opinions vary.",
    "On the one hand, some of the details matter more than others.",
    "On the other hand, the bigger picture is worth keeping in view.",
    "History offers plenty of examples that point in several directions.",
    "Experts often disagree, which makes a single simple answer hard to give.",
    "It also helps to consider the practical side of things.",
    "Of course, every situation has its own particular circumstances.",
    "In general, a careful and balanced approach tends to work best.",
    "Some sources emphasise one aspect, while others stress another.",
    "That said, there is no need to rush to a firm conclusion.",
    "Taking a step back can make the whole matter much clearer.",
    "Small differences in wording can change how a question is read.",
    "Looking at a few concrete cases usually sheds some light.",
    "Either way, it is an interesting topic to think through slowly.",
)


def reference_of(row: dict) -> str | None:
    """The row's reference answer as text (the first of a list, the part after a GSM8K '####'), or None."""
    ref = row.get("answer")
    if isinstance(ref, (list, tuple)):
        ref = ref[0] if ref else None
    if ref is None or (isinstance(ref, float) and ref != ref):
        return None
    s = str(ref).strip()
    s = s.rsplit("####", 1)[1].strip() if "####" in s else s
    return s or None


def wrong_answer(ref: str | None) -> str:
    """An answer sure to be wrong: the reference's number plus one, else a word no reference is."""
    n = to_number(ref) if ref is not None else None
    if n is not None:
        return str(int(n) + 1) if float(n).is_integer() else f"{n + 1:g}"
    return "purple" if (ref or "").strip().lower() != "purple" else "green"


def fit(words: Sequence[str], count: Callable[[str], int], cap: int) -> str:
    """The longest prefix of `words`, joined by spaces, that `count` says is at most `cap` long (binary search)."""
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= cap:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _cycle(pieces: Sequence[str], count: Callable[[str], int], cap: int) -> list[str]:
    """Words of `pieces` repeated until they surely pass `cap` (each word counts at least 1)."""
    words = " ".join(pieces).split()
    reps = max(1, -(-max(cap, 1) // max(1, len(words))) + 1)
    return (words * reps)[: max(cap, 1) + len(words)]


def exploit_texts(
    row: dict, prompt: str, count: Callable[[str], int], cap: int, typical: int
) -> dict[str, str]:
    """Each exploit's answer to one prompt. `count(text)` measures in the cap's unit (tokens), `cap` is
    max_completion_length and `typical` the length of a typical sampled answer (symbol spam is that long, so a
    length reward cannot tell it from a real answer). No reference: no "reference" or "buried" entry."""
    ramble = _cycle(RAMBLE, count, cap)
    out = {
        "empty": "",
        "echo": fit(prompt.split(), count, cap),
        "repeat": fit(_cycle([PHRASE], count, cap), count, cap),
        "ramble": fit(ramble, count, cap),
        "symbols": fit(list(SYMBOLS) * (max(typical, 1) + 1), count, max(typical, 1)),
    }
    ref = reference_of(row)
    if ref is not None:
        out["reference"] = ref
        head = fit(
            ramble, count, max(1, cap // 3)
        )  # the reference a third of the way in: it survives the cut
        said = f"Perhaps it is {ref}, though I cannot be sure."
        out["buried"] = fit([*head.split(), *said.split(), *ramble[len(head.split()) :]], count, cap)
    out["wrong_format"] = (
        f"<think>Let me work it out step by step.</think><answer>{wrong_answer(ref)}</answer>"
    )
    return out


def judge(sampled_totals: np.ndarray, sampled: np.ndarray, exploits: dict[str, np.ndarray], names: list[str],
          weights: Sequence[float], specs: Sequence[Any] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """How each exploit stands against the real answers of its prompt, and whether it is flagged.

    sampled_totals (P, G) and sampled (P, G, F): the sampled answers' totals and per-function scores, NaN where
    none applies. exploits: name -> (P, F) per-function scores of that exploit on each prompt (NaN rows where the
    exploit does not exist for a prompt, e.g. no reference). Returns one dict per exploit: label, beats (share of
    real answers it scores at or above), at_median (prompts where it is at or above the group's median) of prompts,
    mean totals, flagged, the reward responsible and the fix to try, and the flag's sentence.
    """
    w = np.asarray(weights, dtype=np.float64)
    med_total = _nanmedian(sampled_totals, axis=1)  # (P,)
    med_func = _nanmedian(sampled, axis=1)  # (P, F)
    out = []
    for name, scores in exploits.items():
        scores = np.asarray(scores, dtype=np.float64)  # (P, F)
        applies = ~np.isnan(scores).all(axis=1)
        total = np.where(applies, np.nansum(scores * w[None], axis=1), np.nan)  # (P,)
        ok = applies & np.isfinite(med_total)
        if not ok.any():
            continue
        pairs = np.isfinite(sampled_totals[ok])
        beats = float((total[ok][:, None] >= sampled_totals[ok] - TIE)[pairs].mean()) if pairs.any() else 0.0
        at_median = int((total[ok] >= med_total[ok] - TIE).sum())
        n = int(ok.sum())
        # the reward that lifts it most above the median real answer (a None counts 0, as in the total)
        lift = (np.nan_to_num(scores[ok]) - np.nan_to_num(med_func[ok])) * w[None]  # (n, F)
        gain = lift.mean(axis=0) if len(names) else np.zeros(0)
        reward = names[int(np.argmax(gain))] if gain.size and gain.max() > 1e-9 else None
        r = {"exploit": name, "label": EXPLOITS[name], "prompts": n, "at_median": at_median, "beats": beats,
             "mean_total": float(np.mean(total[ok])), "median_real": float(np.mean(med_total[ok])),
             "reward": reward}  # fmt: skip
        if name == CONTROL:
            below = n - at_median
            r["flagged"] = below * 2 > n
            worst = names[int(np.argmin(gain))] if gain.size and gain.min() < -1e-9 else None
            r["reward"] = worst
            r["fix"] = FIXES[CONTROL]
            r["text"] = (f"{EXPLOITS[CONTROL]} scores below the median real answer in {below} of {n} prompts"
                         + (f" (held back by `{worst}`)" if worst else "") + f": {FIXES[CONTROL]}.")  # fmt: skip
        else:
            r["flagged"] = at_median * 2 >= n
            r["fix"] = fix_for(name, reward, specs)
            under = f"under `{reward}`" if reward else "(no reward tells it apart from a real answer)"
            if reward in SIZE and name != "ramble":
                under += ", which pays for brevity whatever is said"
            r["text"] = (f"{EXPLOITS[name]} scores at or above {beats:.0%} of real answers (the median in "
                         f"{at_median} of {n} prompts) {under}: {r['fix']}.")  # fmt: skip
        out.append(r)
    return out


def fix_for(exploit: str, reward: str | None, specs: Sequence[Any] = ()) -> str:
    """The fix to try for a flagged exploit, in the light of the reward responsible and the rewards the run has."""
    have = {getattr(s, "name", None): s for s in specs}
    correct = next((n for n in have if n in CORRECTNESS), None)
    if exploit in ("repeat", "symbols"):
        if "repetition" in have:
            return f"raise the repetition penalty's weight (now {have['repetition'].weight:g}) or add a correctness term"
        return FIXES[exploit]
    if reward in SIZE and exploit != "ramble":
        if correct:
            return (f"raise `{correct}`'s weight (now {have[correct].weight:g}; it judges only prompts with a "
                    "reference) or add a minimum-length term")  # fmt: skip
        return FIXES["empty"]
    if reward in CORRECTNESS and exploit == "echo":
        return (
            "the prompt holds its own answer: grade only an <answer> block (strict=true) or use exact_match"
        )
    if reward in FORMAT and exploit != "wrong_format":
        return f"format terms pay for tags alone; {FIXES['wrong_format']}"
    return FIXES[exploit]


def _nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmedian without the warning for an all-NaN slice (that slice gives NaN)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(all="ignore"):
        filled = np.sort(np.where(np.isnan(a), np.inf, a), axis=axis)
        n = (~np.isnan(a)).sum(axis=axis)
        lo = np.take_along_axis(filled, np.expand_dims(np.maximum((n - 1) // 2, 0), axis), axis).squeeze(axis)
        hi = np.take_along_axis(filled, np.expand_dims(np.maximum(n // 2, 0), axis), axis).squeeze(axis)
        return np.where(n > 0, (lo + hi) / 2, np.nan)
