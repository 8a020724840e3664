"""A/B of reward designs: variants and their matched runs (experiments.py, with stand-in workers), the multi-way
statistics and the ranking on canned scores (ab_stats.py), and one comparison of the base and two tuned tiny
models end to end (compare_many.py, slow)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from workbench import runner
from workbench.ab_stats import add_totals, pair_row, rank_key, summarise
from workbench.cli import main
from workbench.compare_many import runs_to_compare, union_rewards
from workbench.config import PRESETS, Limits, RewardSpec, RunSpec, length_reward
from workbench.errors import CompareError, ConfigError, RunnerBusy
from workbench.experiments import (
    experiment_of,
    list_experiments,
    parse_variant,
    share_task,
    start_experiment,
    variant_specs,
)
from workbench.stats import SUMMARY_COLUMNS
from workbench.store import list_runs, open_run

N = 12
LENGTH_ONLY = [("length", 1.0)]
CONCISE = [("length", 1.0), ("contains_answer", 2.0), ("repetition", 1.0)]


# --- variants ---------------------------------------------------------------------------------------------------
def test_a_variant_is_a_reward_list_a_preset_or_settings_and_may_not_move_the_prompts():
    assert parse_variant("length:1,target=12,unit=words; contains_answer:2") == (
        "length+contains_answer",
        {
            "rewards": [
                RewardSpec("length", 1.0, {"target": 12, "unit": "words"}),
                RewardSpec("contains_answer", 2.0),
            ]
        },
    )
    assert parse_variant("task") == ("task-rewards", {"rewards": []})  # the task's own rewards
    assert parse_variant('{"name": "kl", "beta": 0.1}') == ("kl", {"beta": 0.1})
    name, changes = parse_variant("preset:length-only")
    assert (
        name == "length-only" and changes["beta"] == 0.0 and "seed" not in changes and "task" not in changes
    )

    made = variant_specs(PRESETS["quick"], ["preset:length-only", "preset:quick"])
    (a, sa, ca), (b, sb, cb) = made
    # the length-only preset differs from quick in rewards and KL (both train 40 steps); the prompts are quick's in both
    assert (a, b) == ("length-only", "quick") and set(ca) == {"rewards", "beta"} and cb == {}
    assert (sa.seed, sa.task, sa.train_size, sa.eval_size) == (sb.seed, sb.task, sb.train_size, sb.eval_size)

    with pytest.raises(ConfigError, match="changes seed"):  # another seed = other prompts: not an A/B
        variant_specs(PRESETS["quick"], ['{"seed": 3}', "task"])
    with pytest.raises(ConfigError, match="2 to 4 variants"):
        variant_specs(PRESETS["quick"], ["task"])
    with pytest.raises(ConfigError, match="same settings"):
        variant_specs(PRESETS["quick"], ["task", '{"name": "again"}'])
    with pytest.raises(ConfigError, match="variant name 'base'"):
        variant_specs(PRESETS["quick"], ['{"name": "base", "beta": 0}', "task"])
    with pytest.raises(ConfigError, match="unknown setting"):
        variant_specs(PRESETS["quick"], ['{"betta": 0}', "task"])
    # two reward lists that start alike keep apart by name
    names = [n for n, _, _ in variant_specs(PRESETS["quick"], ["length:1", "length:2"])]
    assert names == ["length", "length-2"]


def _tiny(**kw) -> RunSpec:
    return RunSpec(**{**dict(model="tiny-random", task="concise", max_steps=1, eval_size=4, max_completion_length=8,
                             dtype="float32", device="cpu", eval_every=0), **kw})  # fmt: skip


def test_an_experiment_queues_its_variants_in_order_and_records_them(stand_in):
    exp = start_experiment(_tiny(), ["length:1", "task", '{"name": "kl", "beta": 0.1}'])
    runs = exp.runs
    assert list(runs) == ["length", "task-rewards", "kl"]
    states = {r.id: r.status() for r in list_runs()}
    first, *rest = runs.values()
    assert states[first]["state"] == "running"  # one active run: the others wait, first in, first out
    assert [states[r]["state"] for r in rest] == ["queued", "queued"]
    assert first in states[rest[0]]["reason"] and rest[0] in states[rest[1]]["reason"]
    # the record: any of its runs leads back to it and its siblings
    assert experiment_of(open_run(rest[1])).runs == runs and [e.id for e in list_experiments()] == [exp.id]
    assert open_run(first).spec.rewards == [RewardSpec("length", 1.0)] and open_run(rest[1]).spec.beta == 0.1
    assert runs_to_compare([exp.id]) == runs == runs_to_compare([*runs.values()])


def test_an_experiment_that_does_not_fit_the_queue_starts_nothing(stand_in):
    with pytest.raises(RunnerBusy, match="3 runs do not fit"):
        start_experiment(_tiny(), ["length:1", "task", '{"beta": 0.1}'], Limits(queue_size=1))
    assert list_runs() == [] and list_experiments() == []


def test_a_variant_starts_on_the_rows_its_first_sibling_trained_on(stand_in):
    from workbench.recovery import TASK_FILE

    exp = start_experiment(_tiny(), ["length:1", "task"], Limits(queue_size=4))
    a, b = (open_run(r) for r in exp.runs.values())
    rows = {"name": "concise", "train": [{"prompt": "only this"}], "eval": [{"prompt": "and this"}]}
    (a.dir / TASK_FILE).write_text(json.dumps(rows))  # what the first variant's worker copied at its start
    assert share_task(b) and json.loads((b.dir / TASK_FILE).read_text()) == rows
    assert not share_task(b)  # a run keeps the copy it has


def test_the_cli_launches_an_experiment_and_compare_needs_trained_weights(stand_in, capsys):
    code = main(["train", "--model", "tiny-random", "--max-steps", "1", "--variant", "length:1",
                 "--variant", "task", "--detach", "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [v["name"] for v in doc["variants"]] == ["length", "task-rewards"]
    code = main(["compare", doc["id"], "--json"])
    assert code == 2 and "no adapter or checkpoint yet" in json.loads(capsys.readouterr().out)["error"]
    with pytest.raises(CompareError, match="2 to 4 runs"):
        runs_to_compare([doc["variants"][0]["run_id"]])


# --- statistics and ranking on canned scores --------------------------------------------------------------------
def _side(length, correct, degenerate, natural, repetition, answer_hit=None):
    """Scores of one model on N prompts; every argument is a per-prompt list or one value for all."""
    full = lambda x: list(x) if isinstance(x, list) else [x] * N  # noqa: E731
    return {"rewards": {"length": full(length), "contains_answer": full(answer_hit if answer_hit is not None else
                                                                        correct),
                        "repetition": [-r for r in full(repetition)]},
            "checks": {"degenerate": full(degenerate), "repetition": full(repetition), "naturalness": full(natural),
                       "correct": full(correct), "words": full(20.0), "tokens": full(30.0),
                       "truncated": full(0.0)}}  # fmt: skip


def _hacked_and_better():
    half = [1.0, 0.0] * (N // 2)
    scores = {
        "base": _side(0.2, half, 0.0, -0.7, 0.05),
        # length only: the reward soars, half the answers are spam, correctness collapses
        "length-only": _side(0.95, [0.0] * N, [1.0, 0.0] * (N // 2), -1.6, 0.5),
        # length and correctness: shorter, as correct as the base or more, no spam
        "quick": _side(0.8, [1.0] * 8 + [0.0] * 4, 0.0, -0.9, 0.05),
    }
    designs = {"length-only": LENGTH_ONLY, "quick": CONCISE}
    add_totals(scores, designs)
    return scores, designs


def test_the_checks_rank_the_hacked_variant_last_whatever_its_own_reward_says():
    scores, designs = _hacked_and_better()
    ab = summarise(scores, designs, graded=True, n_prompts=N)
    assert ab.verdicts["length-only"].level == "hacked" and ab.verdicts["quick"].level == "better"
    r = ab.ranking
    assert r["variant"].tolist() == ["quick", "length-only"] and r["rank"].tolist() == [1, 2]
    # length-only's own reward rose more than quick's (0.75 vs 0.6 + ...): it still ranks last
    assert r.set_index("variant").loc["length-only", "own_reward_diff"] == pytest.approx(0.75)
    assert r["ahead_of_next"].iloc[0] == "verdict: better vs hacked" and r["ahead_of_next"].iloc[1] == ""
    assert (
        r.attrs["base"]["correct"] == 0.5 and r.set_index("variant").loc["length-only", "degenerate"] == 0.5
    )

    # each variant against the base is what a 2-way compare says: its own total and rewards, and the checks
    s = ab.summaries["quick"].set_index("name")
    assert s.loc["total@quick", "diff"] == pytest.approx(0.6 + 2 * (8 / 12 - 0.5))
    assert s.loc["total@length-only", "diff"] == pytest.approx(
        0.6
    )  # quick scored by length-only's design too
    assert s.loc["degenerate", "better"] == "lower" and s.loc["correct", "kind"] == "check"

    # the pair: quick − length-only on the same prompts
    p = ab.pairs.set_index("name")
    assert set(ab.pairs["a"]) == {"length-only"} and set(ab.pairs["b"]) == {"quick"}
    assert p.loc["correct", "diff"] == pytest.approx(8 / 12) and p.loc["correct", "ci_low"] > 0
    assert (
        p.loc["degenerate", "diff"] == pytest.approx(-0.5) and p.loc["degenerate", "wins"] == 6
    )  # fewer = win
    assert p.loc["total@length-only", "diff"] == pytest.approx(-0.15)  # by length-only's design, it wins


def test_within_a_verdict_the_checks_order_and_say_whether_they_separate():
    half = [1.0, 0.0] * (N // 2)
    scores = {
        "base": _side(0.2, half, 0.0, -0.7, 0.05),
        "a": _side(0.8, [1.0] * 8 + [0.0] * 4, 0.0, -0.8, 0.05),
        "b": _side(0.8, [1.0] * 7 + [0.0] * 5, 0.0, -0.8, 0.05),  # one fewer correct than a: within the noise
        "c": _side(
            0.8, [1.0] * N, 0.0, -0.8, 0.05, answer_hit=half
        ),  # all correct; its reward did not see it
    }
    designs = {"a": CONCISE, "b": CONCISE, "c": LENGTH_ONLY}
    add_totals(scores, designs)
    ab = summarise(scores, designs, graded=True, n_prompts=N)
    assert {v.level for v in ab.verdicts.values()} == {"better"}
    r = ab.ranking.set_index("variant")
    assert ab.ranking["variant"].tolist() == ["c", "a", "b"]  # by correct answers: 12, 8, 7 of 12
    assert r.loc["c", "ahead_of_next"].startswith("ahead on correct +0.33")  # 4 pairs won, none lost: CI > 0
    assert r.loc["a", "ahead_of_next"].startswith("not separated from b")

    # pair_row reads a pair from either side
    ab_ = pair_row(ab.pairs, "a", "b", "correct")
    ba = pair_row(ab.pairs, "b", "a", "correct")
    assert ab_["diff"] == pytest.approx(1 / 12) and ba["diff"] == pytest.approx(-1 / 12)
    assert (ab_["ci_low"], ab_["ci_high"]) == pytest.approx((-ba["ci_high"], -ba["ci_low"]))


def test_rank_key_orders_verdicts_before_checks_and_ignores_what_was_not_measured():
    keys = {lvl: rank_key(lvl, 0.9, 0.0, -0.5) for lvl in ("hacked", "better", "worse", "unclear", "mixed")}
    assert sorted(keys, key=keys.get) == ["better", "unclear", "mixed", "worse", "hacked"]
    assert rank_key("better", 0.2, 0.0, -0.5) < rank_key("unclear", 1.0, 0.0, 0.0)  # verdict first
    assert rank_key("better", math.nan, 0.1, -0.5) == rank_key("better", math.nan, 0.1, -0.5)


def test_totals_follow_the_training_sum_and_rewards_are_labelled_once():
    scores = {"base": {"rewards": {"x": [1.0, None, None], "y": [0.5, 2.0, None]}, "checks": {}}}
    add_totals(scores, {"v": [("x", 2.0), ("y", 1.0)]})
    total = scores["base"]["rewards"]["total@v"]
    assert total[:2] == [2.5, 2.0] and math.isnan(total[2])  # None counts 0; nothing applying stays unscored

    labels, designs = union_rewards({
        "A": [length_reward(), RewardSpec("contains_answer", 2.0)],
        "B": [RewardSpec("length", 0.5, {"target": 30, "unit": "words"}), RewardSpec("contains_answer", 1.0)],
    })  # fmt: skip
    assert list(labels) == [
        "length",
        "contains_answer",
        "length@B",
    ]  # same name, other target: its own column
    assert designs == {"A": [("length", 1.0), ("contains_answer", 2.0)],
                       "B": [("length@B", 0.5), ("contains_answer", 1.0)]}  # fmt: skip


# --- end to end on the tiny model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_many_asks_the_base_once_and_agrees_with_the_two_way_compare(stand_in, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench import evaluate
    from workbench.compare_many import compare_many
    from workbench.models import load_model

    exp = start_experiment(_tiny(rewards=[length_reward()]), ["preset:length-only", "task"])
    for run in reversed(list_runs()):
        runner.kill_run(run.id)
    for i, rid in enumerate(exp.runs.values()):  # a random LoRA per variant, as if each had trained
        model, _ = load_model("tiny-random", dtype="float32", device="cpu")
        torch.manual_seed(10 + i)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        peft.save_pretrained(open_run(rid).dir / "adapter")

    calls = []
    real = evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cmp = compare_many(runs_to_compare([exp.id]))
    assert len(calls) == 3  # the base once, then each tuned model
    t = cmp.table
    assert {"base", "length-only", "task-rewards", "base/total@length-only", "task-rewards/contains_answer",
            "length-only:degenerate", "task-rewards:naturalness"} <= set(t.columns)  # fmt: skip
    assert cmp.variants["length-only"]["rewards"] == {"length": 1.0}
    assert (
        set(cmp.ranking["variant"]) == {"length-only", "task-rewards"} and len(cmp.pairs["b"].unique()) == 1
    )

    # the 2-way compare of one variant says the same of it: same answers, same verdict
    rid = exp.runs["task-rewards"]
    two = evaluate.compare(rid, open_run(rid).require_weights())
    assert two.table["base"].tolist() == t["base"].tolist()
    assert two.table["tuned"].tolist() == t["task-rewards"].tolist()
    assert two.verdict.level == cmp.verdicts["task-rewards"].level
    own = cmp.stats.summaries["task-rewards"].set_index("name").loc["total@task-rewards"]
    assert own["diff"] == pytest.approx(two.summary.loc["total", "diff"])

    files = cmp.to_csv(tmp_path / "ab.csv")
    assert [f.name for f in files] == ["ab.csv", "ab-ranking.csv", "ab-summary.csv", "ab-pairs.csv"]
    assert pd.read_csv(files[1])["variant"].tolist() == cmp.ranking["variant"].tolist()
    doc = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    assert doc["n_prompts"] == 4 and set(doc["variants"]) == {"length-only", "task-rewards"}
    one = doc["variants"][
        "task-rewards"
    ]  # "repetition" is a reward of this variant and a check: both kept apart
    assert (
        set(one["summary"]["repetition"]) == set(SUMMARY_COLUMNS)
        and one["checks"]["repetition"]["better"] == "lower"
    )
    assert (
        "never by a variant's own reward" in doc["ranking_rule"] and "verdicts against the base" in cmp.text()
    )


# --- the app: "Add variant" on the Train tab, the A/B section of the Compare tab -------------------------------
def _canned_comparison():
    from workbench.compare_many import MultiComparison

    scores, designs = _hacked_and_better()
    ab = summarise(scores, designs, graded=True, n_prompts=N)
    texts = {"base": "Paris is the capital.", "length-only": "🌱🌱🌱🌱🌱", "quick": "<b>Paris</b>."}
    t = pd.DataFrame({"prompt": ["Capital of France?"] * N, **{s: [x] * N for s, x in texts.items()}})
    for side, sc in scores.items():
        for kind, sep in (("rewards", "/"), ("checks", ":")):
            for k, vals in sc[kind].items():
                t[f"{side}{sep}{k}"] = vals
        t[f"{side}:degenerate_reason"] = [
            "symbol or emoji run" if d else "" for d in sc["checks"]["degenerate"]
        ]
    variants = {
        v: {"run_id": f"run-{v}", "total": f"total@{v}", "rewards": dict(designs[v])} for v in designs
    }
    return MultiComparison(variants, "greedy", 0, 48, t, ab)


def test_the_train_tab_collects_variants_and_launches_them_within_the_visitors_share(stand_in):
    from workbench.ui import access
    from workbench.ui.variants import add_variant, launch_variants, variants_markdown

    vs = add_variant([], "", [length_reward()])
    vs = add_variant(vs, "correct", [length_reward(), RewardSpec("contains_answer", 2.0)])
    assert [v["name"] for v in vs] == ["A", "correct"] and "*Add at least" not in variants_markdown(vs)
    assert "contains_answer:2" in variants_markdown(vs) and "Add at least 1 more" in variants_markdown(vs[:1])
    with pytest.raises(ConfigError, match="exactly these rewards"):
        add_variant(vs, "again", [length_reward()])
    with pytest.raises(ConfigError, match="already"):
        add_variant(vs, "A", [])
    with pytest.raises(ValueError, match="no parameter"):
        add_variant(vs, "C", [RewardSpec("length", 1.0, {"targett": 3})])

    with pytest.raises(ConfigError, match="3 variants is above .* limit of 2"):  # a visitor allowed 2 runs
        launch_variants(
            _tiny(), [*vs, {"name": "task", "rewards": []}], Limits(max_runs_per_visitor=2), "tok"
        )
    assert list_runs() == []
    first, msg = launch_variants(_tiny(), vs, Limits(max_runs_per_visitor=2), "tok")
    exp = list_experiments()[0]
    assert first == exp.runs["A"] and exp.id in msg and len(list_runs()) == 2
    for rid in exp.runs.values():
        access.check_owner(rid, "tok", "stop")  # the launching browser owns every variant


def test_the_compare_tab_shows_the_ranking_the_pairs_and_the_answers_in_columns():
    from workbench.ui.ab import ab_headline, columns_html, pairs_frame, ranking_frame

    cmp = _canned_comparison()
    r = ranking_frame(cmp)
    assert r["variant"].tolist() == ["quick", "length-only", "(base)"] and r["correct"].iloc[-1] == 0.5
    assert set(pairs_frame(cmp)["name"]) == {"correct", "degenerate", "naturalness", "repetition",
                                             "total@length-only", "total@quick"}  # fmt: skip
    head = ab_headline(cmp)
    assert "never by a variant's own reward" in head and head.index("1. **quick**") < head.index(
        "2. **length-only"
    )
    html = columns_html(cmp, limit=2)
    assert html.count('class="wb-pair"') == 2 and "repeat(3, minmax(0, 1fr))" in html
    assert "&lt;b&gt;Paris&lt;/b&gt;" in html and "<b>Paris" not in html  # answers are escaped
    assert "degenerate: symbol or emoji run" in html and f"… {N - 2} more in the CSV" in html
    assert "never by a variant" in cmp.text() and "quick − length-only: correct +0.67" in cmp.text()


@pytest.mark.slow
def test_the_app_launches_an_ab_and_lists_it_for_compare(app_url, stand_in):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    vs = [{"name": "short", "rewards": [{"name": "length", "weight": 1.0, "params": {}}]},
          {"name": "task", "rewards": []}]  # fmt: skip
    client.predict(variants=vs, model="tiny-random", max_steps=2, api_name="/launch_ab")
    exp = list_experiments()[0]
    assert list(exp.runs) == ["short", "task"] and open_run(exp.runs["short"]).spec.model == "tiny-random"
    exps, runs = client.predict(api_name="/ab_choices")
    assert exp.id in json.dumps(exps)
    with pytest.raises(
        AppError, match="no adapter or checkpoint yet"
    ):  # nothing trained yet: said, not crashed
        client.predict(list(exp.runs.values()), "held-out prompts", 2, "", "", "greedy", 0, 8, "last",
                       api_name="/compare_ab")  # fmt: skip
