"""The presets on the bundled model, end to end: train, compare, and hold the comparison to what the preset promises.

Slow (a real 30-step run each, about a minute on 2 cores). `quick` must improve the answers, not just the score; the
`length-only` lesson must be caught by the checks as reward hacking, never called better.
"""

from __future__ import annotations

import pytest

from workbench.config import PRESETS
from workbench.evaluate import compare
from workbench.store import create_run
from workbench.worker import train


def _train_and_compare(preset: str):
    run = create_run(PRESETS[preset])
    state, reason = train(run, should_stop=lambda: False)
    assert state == "finished", reason
    return compare(run.id, run.require_weights())


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2 min on 2 quiet cores; a busy machine can take ten times that
def test_quick_preset_makes_answers_concise_without_breaking_them():
    cmp = _train_and_compare("quick")
    s, c = cmp.summary, cmp.checks
    assert s.loc["length", "ci_low"] > 0  # answers moved towards 12 words, beyond the noise
    assert c.loc["correct", "ci_high"] >= 0  # correctness not significantly worse than the base
    degenerate = cmp.to_dict()["degenerate"]
    assert degenerate["tuned"] <= degenerate["base"] + 1  # no more than one extra degenerate answer
    assert cmp.verdict.level in ("better", "mixed"), cmp.verdict.headline


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_length_only_preset_is_flagged_as_reward_hacking():
    cmp = _train_and_compare("length-only")
    assert cmp.summary.loc["length", "ci_low"] > 0  # the reward rose ...
    degenerate = cmp.to_dict()["degenerate"]
    assert degenerate["tuned"] >= degenerate["base"] + 3  # ... by degenerating the answers
    assert cmp.verdict.level == "hacked" and "better" not in cmp.verdict.headline.lower()
