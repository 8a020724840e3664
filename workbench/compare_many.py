"""One comparison of the base model and 2 to 4 tuned models on the same prompts: the A/B of reward designs.

    workbench compare EXPERIMENT_ID  |  workbench compare RUN1 RUN2 [RUN3 RUN4]   [--json] [--csv out.csv]

    from workbench.compare_many import compare_many, runs_to_compare
    cmp = compare_many(runs_to_compare(["exp-20250101-120000-a1b2c3"]))   # {variant name: run id}
    cmp.ranking          # one row per variant, best first (ab_stats.RANKING_RULE), with what separates it
    cmp.verdicts         # per variant, against the base: what `workbench compare RUN` says of it alone
    cmp.pairs            # b − a for each pair of variants, on every reward, total and check, paired 95% CI
    cmp.table            # per prompt: base and every variant's answer side by side, with scores

The base answers once and each tuned model answers the same held-out prompts with the same decoding
(evaluate.answer_all). Every answer is scored with the union of the variants' rewards, with each variant's own
weighted total (`total@NAME`), and with the checks (one correctness grader for all: the first correctness reward
of any variant, else the task's). The statistics are ab_stats.py. The runs must share the model, the system prompt
and the held-out prompts (an experiment's variants do by construction); decoding follows the first run's settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .ab_stats import RANKING_RULE, ABStats, add_totals, summarise, total_label
from .checks import reference_grader
from .config import RewardSpec
from .errors import CompareError
from .evaluate import answer_all, answers_table, check_decoding, prompt_rows, tuned_weights
from .experiments import MAX_VARIANTS, NAME_RE, RESERVED, is_experiment_id, open_experiment, variant_name
from .osutil import json_safe
from .recovery import task_for_run
from .rewards import build_reward
from .scoring import score_answers
from .store import open_run
from .tasks import chat_messages, reference_columns


@dataclass
class MultiComparison:
    variants: dict[
        str, dict[str, Any]
    ]  # name -> {"run_id", "adapter", "weights", "rewards": {label: weight}}
    mode: str
    seed: int
    max_new_tokens: int
    table: pd.DataFrame
    stats: ABStats
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> pd.DataFrame:
        return self.stats.ranking

    @property
    def verdicts(self):
        return self.stats.verdicts

    @property
    def pairs(self) -> pd.DataFrame:
        return self.stats.pairs

    def statistics(self) -> pd.DataFrame:
        """Every variant against the base in one frame: variant, kind, name, better, SUMMARY_COLUMNS."""
        return pd.concat([s.assign(variant=v) for v, s in self.stats.summaries.items()], ignore_index=True)[
            ["variant", *next(iter(self.stats.summaries.values())).columns]
        ]

    def to_csv(self, path: str | Path) -> list[Path]:
        """The per-prompt table at `path`; `<stem>-ranking.csv`, `<stem>-summary.csv` (each variant against the
        base, with its verdict) and `<stem>-pairs.csv` beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        out = [path]
        verdicts = pd.DataFrame([{"variant": v, "kind": "verdict", "name": x.level, "better": x.headline}
                                 for v, x in self.verdicts.items()])  # fmt: skip
        for suffix, frame in (("ranking", self.ranking), ("summary", pd.concat([self.statistics(), verdicts])),
                              ("pairs", self.pairs)):  # fmt: skip
            out.append(path.with_name(f"{path.stem}-{suffix}.csv"))
            frame.to_csv(out[-1], index=False)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN as None), for `workbench compare --json` and the API."""
        variants = {}
        for v, info in self.variants.items():
            s = self.stats.summaries[v]
            # by kind first: "repetition" names both a reward and a check
            rewards, checks = (
                s[s["kind"] == k].drop(columns="kind").set_index("name") for k in ("reward", "check")
            )
            variants[v] = {**info, "verdict": self.verdicts[v].to_dict(),
                           "summary": rewards.drop(columns="better").to_dict(orient="index"),
                           "checks": checks.to_dict(orient="index"),
                           "degenerate": int(self.table[f"{v}:degenerate"].sum())}  # fmt: skip
        doc = {"mode": self.mode, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
               "n_prompts": len(self.table), **self.meta, "ranking_rule": RANKING_RULE,
               "ranking": self.ranking.to_dict(orient="records"), "base": self.ranking.attrs.get("base", {}),
               "base_degenerate": int(self.table["base:degenerate"].sum()), "variants": variants,
               "pairs": self.pairs.to_dict(orient="records"), "rows": self.table.to_dict(orient="records")}  # fmt: skip
        return json_safe(doc)

    def text(self) -> str:
        """For the terminal: the ranked table, the verdicts, the pairs on the quality checks and the totals."""
        n, r = len(self.table), self.ranking
        lines = [f"A/B of {len(r)} variants on {n} prompts ({self.mode}). {RANKING_RULE}", ""]
        lines.append(f"{'#':>2} {'variant':<20} {'verdict':<8} {'correct':>7} {'degen.':>7} {'natural':>7} "
                     f"{'own reward Δ [95% CI]':<24} ahead of the next")  # fmt: skip
        for _, x in r.iterrows():
            ci = (
                f"{x['own_reward_diff']:+.2f} [{x['own_reward_ci_low']:+.2f}, {x['own_reward_ci_high']:+.2f}]"
            )
            deg = f"{round(x['degenerate'] * n)}/{n}"
            lines.append(f"{x['rank']:>2} {x['variant']:<20} {x['verdict']:<8} {_pct(x['correct']):>7} {deg:>7} "
                         f"{x['naturalness']:>7.2f} {ci:<24} {x['ahead_of_next']}")  # fmt: skip
        b = r.attrs.get("base", {})
        deg = f"{round((b.get('degenerate') or 0) * n)}/{n}"
        lines.append(f"{'':>2} {'(base)':<20} {'':<8} {_pct(b.get('correct')):>7} {deg:>7} "
                     f"{b.get('naturalness', float('nan')):>7.2f}")  # fmt: skip
        lines += ["", "verdicts against the base:"]
        lines += [f"  {v}: {x.level.upper()}: {x.headline}" for v, x in self.verdicts.items()]
        keep = quality_pairs(self.pairs)
        if len(keep):
            lines += ["", "pairs of variants (b − a, paired 95% CI):"]
            for (a, b_), grp in keep.groupby(["a", "b"], sort=False):
                parts = [f"{g['name']} {g['diff']:+.2f} [{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]"
                         for _, g in grp.iterrows()]  # fmt: skip
                lines.append(f"  {b_} − {a}: " + ", ".join(parts))
        for v in self.variants:
            bad = self.table[self.table[f"{v}:degenerate"] > 0]
            if len(bad):
                lines += ["", f"degenerate answers of {v} ({len(bad)} of {n}):"]
                lines += [f"  {str(t)[:80]!r} ({why})" for t, why in
                          zip(bad[v].head(3), bad[f"{v}:degenerate_reason"].head(3), strict=True)]  # fmt: skip
        return "\n".join(lines)


PAIR_CHECKS = ("correct", "degenerate", "naturalness", "repetition")


def quality_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `pairs` worth reading first, pair by pair: the checks of answer quality, then each total."""
    parts = []
    for _, grp in pairs.groupby(["a", "b"], sort=False):
        checks = grp[(grp["kind"] == "check") & grp["name"].isin(PAIR_CHECKS)]
        parts.append(checks.iloc[checks["name"].map(PAIR_CHECKS.index).argsort()])
        parts.append(grp[(grp["kind"] == "reward") & grp["name"].str.startswith("total@")])
    return pd.concat(parts) if parts else pairs.iloc[:0]


def _pct(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, (int, float)) and x == x else "-"


# --- which runs ----------------------------------------------------------------------------------------------
def runs_to_compare(ids: list[str]) -> dict[str, str]:
    """{variant name: run id} from run ids and experiment ids (an experiment stands for all its variants). A run
    of an experiment is named by its variant, any other by its id's last part ("run-a1b2c3")."""
    out: dict[str, str] = {}
    for i in ids:
        pairs = open_experiment(i).runs.items() if is_experiment_id(i) else [(None, i)]
        for name, rid in pairs:
            run = open_run(rid)
            name = name or variant_name(run) or f"run-{run.id.rsplit('-', 1)[-1]}"
            if rid in out.values():
                continue
            base, k = name, 2
            while name in out:
                name, k = f"{base[:29]}-{k}", k + 1
            out[name] = rid
    if not 2 <= len(out) <= MAX_VARIANTS:
        raise CompareError(f"{len(out)} run(s) to compare: an A/B takes 2 to {MAX_VARIANTS} runs (for one run, "
                           "`workbench compare RUN` compares it with the base)")  # fmt: skip
    return out


def union_rewards(designs: dict[str, list[RewardSpec]]) -> tuple[dict[str, RewardSpec], dict[str, list]]:
    """(label -> spec, variant -> [(label, weight)]): one label per distinct reward (name and parameters); a name
    that two variants use with other parameters is labelled `name@variant` the second time."""
    labels: dict[str, RewardSpec] = {}
    keys: dict[str, str] = {}  # name + parameters -> label
    out: dict[str, list] = {}
    for v, specs in designs.items():
        out[v] = []
        for s in specs:
            key = json.dumps([s.name, s.params], sort_keys=True, default=str)
            if key not in keys:
                label, k = s.name, 2
                while label in labels:
                    label, k = (f"{s.name}@{v}" if k == 2 else f"{s.name}@{v}-{k}"), k + 1
                keys[key], labels[label] = label, RewardSpec(s.name, 1.0, dict(s.params))
            out[v].append((keys[key], float(s.weight)))
    return labels, out


# --- the comparison ------------------------------------------------------------------------------------------
def compare_many(runs: dict[str, str], weights: str = "last", rows: list[dict] | None = None,
                 mode: str | None = None, seed: int = 0, max_new_tokens: int | None = None,
                 progress: Callable[[float, str], None] | None = None, batch_size: int = 8) -> MultiComparison:  # fmt: skip
    """Answer `rows` (default: the runs' shared held-out prompts) with the base model and every run's tuned model
    (`runs`: variant name -> run id); score, compare and rank (see the module docstring)."""
    bad = [v for v in runs if not NAME_RE.fullmatch(v) or v.lower() in RESERVED]
    if bad:
        raise CompareError(f"variant name(s) {', '.join(map(repr, bad))} cannot be column names: use letters, "
                           "digits, '_', '.', '+' or '-'")  # fmt: skip
    opened = {v: open_run(rid) for v, rid in runs.items()}
    first = next(iter(opened.values()))
    spec = first.spec
    mode = mode or spec.compare_mode  # None: the first run's
    max_new = check_decoding(mode, max_new_tokens or spec.max_completion_length, batch_size)
    folders = {v: tuned_weights(r.require_weights(weights)) for v, r in opened.items()}  # fail before loading
    tasks = {v: task_for_run(r) for v, r in opened.items()}
    task = tasks[next(iter(opened))]
    _check_matched(opened, tasks, own_rows=rows is not None)
    rows = prompt_rows(task, rows)
    messages = [chat_messages(r, task.system_prompt_for(spec)) for r in rows]
    labels, designs = union_rewards({v: tasks[v].rewards_for(r.spec) for v, r in opened.items()})
    rewards = [(label, build_reward(s), 1.0) for label, s in labels.items()]
    grader = reference_grader(rows, list(labels.values()))

    answers, natural = answer_all(spec, messages, folders, mode=mode, seed=int(seed), max_new_tokens=max_new,
                                  batch_size=batch_size, progress=progress)  # fmt: skip
    scores = {}
    for side in answers:
        scores[side] = score_answers(
            rewards, grader and grader[1], rows, messages, answers[side], natural[side]
        )
        scores[side]["rewards"].pop("total")  # the union's sum means nothing: each variant has its own total
    add_totals(scores, designs)
    stats = summarise(scores, designs, graded=grader is not None, n_prompts=len(rows))
    if progress:
        progress(1.0, f"compared {len(rows)} prompts")
    variants = {v: {"run_id": r.id, "adapter": str(folders[v][1]), "weights": folders[v][0],
                    "rewards": {label: w for label, w in designs[v]}, "total": total_label(v)}
                for v, r in opened.items()}  # fmt: skip
    meta = {"model": spec.model, "system_prompt": task.system_prompt_for(spec), "weights_from": weights,
            "correctness": grader[0] if grader else None}  # fmt: skip
    table = answers_table(messages, reference_columns(rows), answers, scores)
    return MultiComparison(variants, mode, int(seed), max_new, table, stats, meta)


def _check_matched(opened: dict, tasks: dict, own_rows: bool) -> None:
    """The base must be one model asked one set of questions the same way: refuse runs that differ there."""
    (v0, r0), t0 = next(iter(opened.items())), tasks[next(iter(opened))]
    for v, r in opened.items():
        what = [
            k for k in ("model", "max_prompt_length", "dtype") if getattr(r.spec, k) != getattr(r0.spec, k)
        ]
        if tasks[v].system_prompt_for(r.spec) != t0.system_prompt_for(r0.spec):
            what.append("system prompt")
        if not own_rows and [x["prompt"] for x in tasks[v].eval] != [x["prompt"] for x in t0.eval]:
            what.append("held-out prompts")
        if what:
            raise CompareError(f"runs {r0.id} ({v0}) and {r.id} ({v}) differ in {', '.join(what)}: an A/B compares "
                               "runs of one base model on the same prompts; launch them as one experiment "
                               "(`workbench train --variant ... --variant ...`)")  # fmt: skip
