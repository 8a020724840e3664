"""Base vs tuned: both models answer the same prompts with the same decoding, every reward of the run scores both.

    workbench compare RUN [--mode greedy|sampled] [--seed 0] [--csv out.csv]

    from workbench.evaluate import compare
    cmp = compare(run_id, adapter_folder)        # the run task's held-out prompts, greedy
    cmp.summary                                  # per reward: base_mean, tuned_mean, diff, 95% CI, wins/ties/losses

The reward functions are the scorer: evaluation and training share one definition of "correct". The difference is
paired (the same prompt answered by both models), and its 95% interval is a paired bootstrap over prompts, so a
handful of prompts gives an honest, wide interval rather than a confident-looking mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .checks import CHECKS, reference_grader
from .errors import CompareError
from .models import encode_prompt, load_model, merge_adapter, pick_device, pick_dtype
from .osutil import json_safe
from .recovery import task_for_run
from .rewards import build_rewards, prompt_text
from .scoring import generate, naturalness, score_answers
from .stats import SUMMARY_COLUMNS, as_score, paired_summary
from .store import open_run
from .tasks import chat_messages, check_prompt, reference_columns
from .verdict import Verdict, judge

MODES = ("greedy", "sampled")
SIDES = ("base", "tuned")


@dataclass
class Comparison:
    """The result: `table` (one row per prompt: answers, reward scores and checks of both models), `summary` (per
    reward), `checks` (per check, with the direction that is better) and the `verdict` built from both."""

    run_id: str
    adapter: str
    mode: str
    seed: int
    max_new_tokens: int
    rewards: dict[str, float]  # reward name -> weight in the total
    table: pd.DataFrame
    summary: pd.DataFrame
    checks: pd.DataFrame
    verdict: Verdict
    meta: dict[str, Any] = field(default_factory=dict)

    def statistics(self) -> pd.DataFrame:
        """Rewards and checks in one frame: kind ("reward" | "check"), name, better, then SUMMARY_COLUMNS."""
        r = (
            self.summary.reset_index()
            .rename(columns={"reward": "name"})
            .assign(kind="reward", better="higher")
        )
        c = self.checks.reset_index().rename(columns={"check": "name"}).assign(kind="check")
        return pd.concat([r, c], ignore_index=True)[["kind", "name", "better", *SUMMARY_COLUMNS]]

    def to_csv(self, path: str | Path) -> tuple[Path, Path]:
        """The per-prompt table at `path`, and the statistics with the verdict beside it (`<stem>-summary.csv`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        stats = path.with_name(f"{path.stem}-summary.csv")
        verdict = pd.DataFrame(
            [{"kind": "verdict", "name": self.verdict.level, "better": self.verdict.headline}]
        )
        pd.concat([self.statistics(), verdict], ignore_index=True).to_csv(stats, index=False)
        return path, stats

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN/inf as None), for `workbench compare --json` and the API."""
        summary = {str(r): {c: self.summary.loc[r, c] for c in SUMMARY_COLUMNS} for r in self.summary.index}
        checks = {
            str(r): {c: self.checks.loc[r, c] for c in ["better", *SUMMARY_COLUMNS]}
            for r in self.checks.index
        }
        doc = {
            "run_id": self.run_id,
            "adapter": self.adapter,
            "mode": self.mode,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "n_prompts": len(self.table),
            "rewards": self.rewards,
            **self.meta,
            "verdict": self.verdict.to_dict(),
            "summary": summary,
            "checks": checks,
            "degenerate": {s: int(self.table[f"{s}:degenerate"].sum()) for s in SIDES},
            "rows": self.table.to_dict(orient="records"),
        }
        return json_safe(doc)


# --- models and generation --------------------------------------------------------------------------------------
def tuned_weights(adapter: str | Path) -> tuple[str, Path]:
    """("adapter" | "full", folder) of what a run saved; a checkpoint may keep its weights one folder down."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise CompareError(
            f"adapter folder {folder} does not exist: train the run or pick one with saved weights"
        )
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (d / "adapter_config.json").is_file():
            return "adapter", d
        if (d / "config.json").is_file():
            return "full", d
    raise CompareError(
        f"{folder} holds neither a LoRA adapter (adapter_config.json) nor a full model (config.json): point at the "
        "run's adapter/ folder or one of its checkpoints"
    )


# --- the comparison ---------------------------------------------------------------------------------------------
def compare(
    run_id: str,
    adapter: Path,
    rows: list[dict] | None = None,
    mode: str = "greedy",
    seed: int = 0,
    max_new_tokens: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    batch_size: int = 8,
) -> Comparison:
    """Answer `rows` (default: the run task's held-out prompts) with the base model and with the tuned one; score."""
    if mode not in MODES:
        raise CompareError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    run = open_run(run_id)
    spec = run.spec
    max_new = int(max_new_tokens or spec.max_completion_length)
    if max_new < 1 or batch_size < 1:
        raise CompareError(f"max_new_tokens={max_new} and batch_size={batch_size} must be at least 1")
    kind, folder = tuned_weights(adapter)  # before loading anything: a wrong folder fails fast
    task = task_for_run(run)  # the run's own copy of its rows, when it has one
    rows = task.eval if rows is None else list(rows)
    if not rows:
        raise CompareError(
            "no prompts to compare: give at least one prompt, or use the run's held-out prompts"
        )
    rows = [{**r, "prompt": check_prompt(r.get("prompt"), f"prompt {i}")} for i, r in enumerate(rows, 1)]
    system_prompt = task.system_prompt_for(spec)
    rewards = build_rewards(task.rewards_for(spec))
    messages = [chat_messages(r, system_prompt) for r in rows]
    columns = reference_columns(rows)

    dev = pick_device(spec.device)
    model, tok = load_model(spec.model, spec.dtype, dev)
    prompts = [encode_prompt(tok, m, spec.max_prompt_length) for m in messages]
    n = len(prompts)
    # Both passes see the same prompts, decoding and seed: only the weights differ.
    gen = dict(max_new_tokens=max_new, greedy=mode == "greedy", temperature=spec.temperature, top_p=spec.top_p,
               seed=int(seed), batch_size=batch_size)  # fmt: skip

    def tell(done: int, what: str) -> None:
        if progress:
            progress(done / (2 * n + 1), what)

    answers = {
        "base": generate(model, tok, prompts, progress=lambda k: tell(k, f"base model: {k}/{n}"), **gen)
    }
    natural = {"base": naturalness(model, prompts, answers["base"].ids, tok.pad_token_id, batch_size)}
    tell(n, "loading the tuned model")
    model = _tuned_model(model, kind, folder, spec, dev)
    answers["tuned"] = generate(
        model, tok, prompts, progress=lambda k: tell(n + k, f"tuned model: {k}/{n}"), **gen
    )
    # Naturalness is measured under the *base* model for both sides: load it again (the tuned one replaced it).
    tell(2 * n, "scoring the tuned answers under the base model")
    del model
    model, _ = load_model(spec.model, spec.dtype, dev)
    natural["tuned"] = naturalness(model, prompts, answers["tuned"].ids, tok.pad_token_id, batch_size)
    del model

    grader = reference_grader(rows, task.rewards_for(spec))
    scores = {side: score_answers(rewards, grader and grader[1], rows, messages, answers[side], natural[side])
              for side in SIDES}  # fmt: skip
    table = pd.DataFrame({"prompt": [prompt_text(m) for m in messages]})
    for (
        c,
        vals,
    ) in columns.items():  # the reference (e.g. the expected answer) beside the answers, for the CSV
        table[f"ref/{c}"] = vals
    for side in SIDES:
        table[side] = answers[side].texts
    # "<side>/<reward>" holds reward scores (the UI shows them as chips), "<side>:<check>" the checks.
    for side in SIDES:
        for name, vals in scores[side]["rewards"].items():
            table[f"{side}/{name}"] = [as_score(v) for v in vals]
    for side in SIDES:
        for name, vals in scores[side]["checks"].items():
            table[f"{side}:{name}"] = [as_score(v) for v in vals]
        table[f"{side}:degenerate_reason"] = scores[side]["degenerate_reason"]
    summary = _summaries({s: scores[s]["rewards"] for s in SIDES}, "reward")
    checks = _summaries({s: scores[s]["checks"] for s in SIDES}, "check")
    lower = [c for c in checks.index if CHECKS[c].better == "lower"]  # fewer degenerate answers is a win
    checks.loc[lower, ["wins", "losses"]] = checks.loc[lower, ["losses", "wins"]].to_numpy()
    checks.insert(0, "better", [CHECKS[c].better or "" for c in checks.index])
    if grader is None:
        checks = checks.drop(index="correct")
    if progress:
        progress(1.0, f"compared {n} prompts")
    verdict = judge(summary.to_dict(orient="index"), checks.to_dict(orient="index"), n)
    return Comparison(
        run_id=run.id,
        adapter=str(folder),
        mode=mode,
        seed=int(seed),
        max_new_tokens=max_new,
        rewards={n: w for n, _, w in rewards},
        table=table,
        summary=summary,
        checks=checks,
        verdict=verdict,
        meta={
            "model": spec.model,
            "weights": kind,
            "system_prompt": system_prompt,
            "correctness": grader[0] if grader else None,
        },  # fmt: skip
    )


def _tuned_model(model, kind: str, folder: Path, spec, dev: str):
    """The base `model` with the run's adapter merged in, or the run's full model in its place."""
    if kind == "adapter":
        return merge_adapter(model, folder, spec.model)
    from transformers import AutoModelForCausalLM

    del model  # a full model replaces the base: do not hold two in memory
    try:
        tuned = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(spec.dtype, dev))
    except Exception as e:
        raise CompareError(
            f"could not load the model in {folder} ({type(e).__name__}): point at a complete saved model"
        ) from e
    return tuned.to(dev).eval()


def _summaries(scores: dict[str, dict[str, list]], index: str) -> pd.DataFrame:
    """One paired_summary row per name; `scores[side][name]` holds one value per prompt."""
    names = list(scores["base"])
    out = pd.DataFrame.from_dict(
        {name: paired_summary(scores["base"][name], scores["tuned"][name]) for name in names}, orient="index"
    )[SUMMARY_COLUMNS].astype({"wins": int, "ties": int, "losses": int})
    out.index.name = index
    return out
