"""Base vs tuned: both models answer the same prompts with the same decoding, every reward of the run scores both.

    workbench compare RUN [--mode greedy|sampled] [--seed 0] [--csv out.csv]

    from workbench.evaluate import compare
    cmp = compare(run_id, adapter_folder)        # the run task's held-out prompts, greedy
    cmp.summary                                  # per reward: base_mean, tuned_mean, diff, 95% CI, wins/ties/losses

The reward functions are the scorer: evaluation and training share one definition of "correct". The difference is
paired (the same prompt answered by both models), and its 95% interval is a paired bootstrap over prompts, so a
handful of prompts gives an honest, wide interval rather than a confident-looking mean.

`answer_all` (the base answers once, then any number of tuned models) and `answers_table` are shared with the A/B
comparison of several runs (compare_many.py); the paired statistics are stats.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .checks import reference_grader
from .errors import CompareError
from .models import encode_prompt, load_model, merge_adapter, pick_device, pick_dtype
from .osutil import json_safe
from .recovery import task_for_run
from .rewards import build_rewards, prompt_text
from .scoring import Answers, generate, naturalness, score_answers
from .stats import SUMMARY_COLUMNS, as_score, check_frame, paired_frame, paired_summary  # noqa: F401
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


def check_decoding(mode: str, max_new_tokens: int, batch_size: int) -> int:
    """The number of new tokens, once mode and sizes are known to be usable (CompareError otherwise)."""
    if mode not in MODES:
        raise CompareError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if int(max_new_tokens) < 1 or batch_size < 1:
        raise CompareError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be at least 1")
    return int(max_new_tokens)


def prompt_rows(task, rows: list[dict] | None) -> list[dict]:
    """The rows to compare on (default: the task's held-out prompts), each prompt checked."""
    rows = task.eval if rows is None else list(rows)
    if not rows:
        raise CompareError(
            "no prompts to compare: give at least one prompt, or use the run's held-out prompts"
        )
    return [{**r, "prompt": check_prompt(r.get("prompt"), f"prompt {i}")} for i, r in enumerate(rows, 1)]


# --- the comparison ---------------------------------------------------------------------------------------------
def compare(
    run_id: str,
    adapter: Path,
    rows: list[dict] | None = None,
    mode: str | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    batch_size: int = 8,
) -> Comparison:
    """Answer `rows` (default: the run task's held-out prompts) with the base model and with the tuned one; score.
    `mode`: greedy or sampled decoding; None = the run's compare_mode."""
    run = open_run(run_id)
    spec = run.spec
    mode = mode or spec.compare_mode
    max_new = check_decoding(mode, max_new_tokens or spec.max_completion_length, batch_size)
    kind, folder = tuned_weights(adapter)  # before loading anything: a wrong folder fails fast
    task = task_for_run(run)  # the run's own copy of its rows, when it has one
    rows = prompt_rows(task, rows)
    system_prompt = task.system_prompt_for(spec)
    rewards = build_rewards(task.rewards_for(spec))
    messages = [chat_messages(r, system_prompt) for r in rows]
    columns = reference_columns(rows)

    gen = dict(mode=mode, seed=int(seed), max_new_tokens=max_new, batch_size=batch_size)
    answers, natural = answer_all(spec, messages, {"tuned": (kind, folder)}, progress=progress, **gen)
    grader = reference_grader(rows, task.rewards_for(spec))
    scores = {side: score_answers(rewards, grader and grader[1], rows, messages, answers[side], natural[side])
              for side in SIDES}  # fmt: skip
    table = answers_table(messages, columns, answers, scores)
    summary = paired_frame(scores["base"]["rewards"], scores["tuned"]["rewards"], "reward")
    checks = check_frame(scores["base"]["checks"], scores["tuned"]["checks"], graded=grader is not None)
    n = len(rows)
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


def answer_all(spec, messages: list, tuned: dict[str, tuple[str, Path]], *, mode: str, seed: int,
               max_new_tokens: int, batch_size: int = 8,
               progress: Callable[[float, str], None] | None = None) -> tuple[dict[str, Answers], dict[str, list]]:  # fmt: skip
    """The base model's answers and each tuned model's (`tuned`: side -> ("adapter" | "full", folder)) to the same
    prompts with the same decoding and seed: only the weights differ. The base answers once, however many tuned
    models there are. Also each side's naturalness, always measured under the base model."""
    dev = pick_device(spec.device)
    model, tok = load_model(spec.model, spec.dtype, dev)
    prompts = [encode_prompt(tok, m, spec.max_prompt_length) for m in messages]
    n, total = len(prompts), (1 + len(tuned)) * len(prompts) + 1
    gen = dict(max_new_tokens=max_new_tokens, greedy=mode == "greedy", temperature=spec.temperature,
               top_p=spec.top_p, seed=int(seed), batch_size=batch_size)  # fmt: skip

    def tell(done: int, what: str) -> None:
        if progress:
            progress(done / total, what)

    answers = {
        "base": generate(model, tok, prompts, progress=lambda k: tell(k, f"base model: {k}/{n}"), **gen)
    }
    base = answers[
        "base"
    ]  # greedy: the sampler's log-probs are the base's naturalness, no second forward pass
    natural = {"base": base.logp or naturalness(model, prompts, base.ids, tok.pad_token_id, batch_size)}
    for i, (side, (kind, folder)) in enumerate(tuned.items()):
        at = (1 + i) * n
        tell(at, f"loading the {side} model")
        if model is None:  # the previous tuned model was merged into the base: start from a fresh one
            model, _ = load_model(spec.model, spec.dtype, dev)
        model = _tuned_model(model, kind, folder, spec, dev)
        answers[side] = generate(
            model, tok, prompts, progress=lambda k, at=at, s=side: tell(at + k, f"{s} model: {k}/{n}"), **gen
        )
        model = None  # one model in memory at a time
    # Naturalness is measured under the *base* model for every side: load it again (the tuned ones replaced it).
    tell(total - 1, "scoring the tuned answers under the base model")
    model, _ = load_model(spec.model, spec.dtype, dev)
    for side in tuned:
        natural[side] = naturalness(model, prompts, answers[side].ids, tok.pad_token_id, batch_size)
    del model
    return answers, natural


def answers_table(messages: list, columns: dict[str, list], answers: dict[str, Answers],
                  scores: dict[str, dict[str, Any]]) -> pd.DataFrame:  # fmt: skip
    """One row per prompt: the prompt, its reference, each side's answer, then "<side>/<reward>" (reward scores,
    shown as chips) and "<side>:<check>" (the checks) for every side, in the order of `answers`."""
    sides = list(answers)
    table = pd.DataFrame({"prompt": [prompt_text(m) for m in messages]})
    for c, vals in columns.items():  # the reference (e.g. the expected answer) beside the answers
        table[f"ref/{c}"] = vals
    for side in sides:
        table[side] = answers[side].texts
    for side in sides:
        for name, vals in scores[side]["rewards"].items():
            table[f"{side}/{name}"] = [as_score(v) for v in vals]
    for side in sides:
        for name, vals in scores[side]["checks"].items():
            table[f"{side}:{name}"] = [as_score(v) for v in vals]
        table[f"{side}:degenerate_reason"] = scores[side]["degenerate_reason"]
    return table
