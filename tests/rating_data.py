"""A canned comparison for the rating tests: a run with a stand-in adapter folder and a comparison document shaped
like evaluate.Comparison.to_dict(), with hand-picked answers and scores, so no model is loaded.

Answers and scores are chosen so that the blind tests can look for them: no answer holds the words "base" or
"tuned", and every score is a number that appears nowhere else on the page (0.8125, 0.4375, ...).
"""

from __future__ import annotations

from workbench import ratings
from workbench.config import RunSpec, length_reward
from workbench.store import create_run

MODEL = "tiny-random"
# prompt, base answer, tuned answer, length reward (base, tuned), words (base, tuned), degenerate (base, tuned)
PAIRS = [
    (
        "Name a colour.",
        "Red.",
        "A nice colour is blue, like the sky on a clear day.",
        (0.1875, 0.8125),
        (1, 11),
        (0, 0),
    ),
    (
        "What is 2+2?",
        "2+2 equals 4.",
        "four four four four four four four four",
        (0.4375, 0.9375),
        (3, 8),
        (0, 1),
    ),
    ("Say hello.", "Hello there, friend!", "Hi.", (0.6875, 0.3125), (3, 1), (0, 0)),
    ("Capital of Peru?", "Lima is the capital of Peru.", "Lima.", (0.5625, 0.0625), (6, 1), (0, 0)),
]


def canned_run():
    spec = RunSpec(model=MODEL, task="concise", max_steps=1, eval_size=4, max_completion_length=16,
                   dtype="float32", device="cpu", rewards=[length_reward()])  # fmt: skip
    run = create_run(spec, status="finished")
    (run.dir / "adapter").mkdir()
    (run.dir / "adapter" / "adapter_config.json").write_text("{}")  # the Compare tab lists runs with weights
    return run


def canned_doc(run, n: int | None = None) -> dict:
    """The comparison document of the first `n` PAIRS (all by default)."""
    rows = []
    for prompt, base, tuned, length, words, degenerate in PAIRS[:n]:
        rows.append({"prompt": prompt, "base": base, "tuned": tuned,
                     "base/length": length[0], "tuned/length": length[1],
                     "base/total": length[0], "tuned/total": length[1],
                     "base:words": words[0], "tuned:words": words[1],
                     "base:degenerate": degenerate[0], "tuned:degenerate": degenerate[1],
                     "base:naturalness": None, "tuned:naturalness": None})  # fmt: skip
    return {"run_id": run.id, "adapter": str(run.dir / "adapter"), "mode": "greedy", "seed": 0,
            "max_new_tokens": 16, "n_prompts": len(rows), "rewards": {"length": 1.0}, "model": MODEL,
            "summary": {"length": {}, "total": {}},
            "checks": {"degenerate": {"better": "lower"}, "naturalness": {"better": "higher"},
                       "words": {"better": ""}},
            "rows": rows}  # fmt: skip


def canned_comparison(n: int | None = None) -> tuple[str, str]:
    """(run id, comparison id) of a stored canned comparison of the first `n` pairs."""
    run = canned_run()
    return run.id, ratings.save_comparison(canned_doc(run, n))
