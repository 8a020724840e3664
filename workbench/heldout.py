"""Held-out checks during training: every `eval_every` steps the policy answers a held-out slice greedily, and the
run's rewards and the checks of Compare score the answers, so a reward climbing while the answers rot shows up live.

    checks = HeldOutChecks(run, spec, task)   # the worker builds one when spec.eval_every > 0
    checks.maybe(engine, step)                # evaluates when due: step 0, every eval_every steps, the last step

The slice is the first `eval_prompts` rows of the task's held-out split (never trained on; the same rows Compare
starts from). Answers come from the engine's own sampler (already in step with the weights), greedy, up to
max_completion_length tokens; `scoring.score_answers` scores them exactly as Compare does, and naturalness is the
answers' log-probability under the base model (the adapter switched off, or full fine-tuning's reference copy).
Metrics: `eval/reward`, `eval/rewards/<name>/mean`, `eval/checks/<check>` (means; degenerate = share of degenerate
answers), `eval/prompts`, `eval/time` (seconds, saving the best weights included) and `eval/time_share` (all held-out
evaluations so far over all training steps so far). Each evaluation goes to the store's `evals` table with its answers;
when the `keep_best_by` score is the best so far (ties go to the later, more trained, weights), the weights are saved
as the run's best/ beside the last. Greedy decoding draws no random numbers: training is the same with or without it.

What it costs is a greedy generation of eval_prompts answers and one forward pass for their naturalness: with the
quick preset's defaults 0.7 of a training step (measured in CPU time on one thread: 3.2 s against 4.5 s). At step 0
the policy is the base, so the sampler's own log-probs are the naturalness and the forward pass is skipped. `BaseMemo`
spares what need not be redone: an unchanged answer's naturalness, and the step-0 baseline (the base model's own
answers) of a model, prompts and cap already evaluated in an earlier run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import CHECKS, reference_grader
from .config import workbench_home
from .errors import ConfigError
from .osutil import write_json_atomic

# What keep_best_by reads, and which way is better.
BEST_BY = {"reward": ("eval/reward", "higher"),
           **{c: (f"eval/checks/{c}", CHECKS[c].better) for c in ("correct", "naturalness", "degenerate", "repetition")}}  # fmt: skip


@dataclass
class EvalResult:
    metrics: dict[str, float | None]  # eval/... names
    answers: list[dict[str, Any]]  # one per prompt: prompt, answer, degenerate_reason, reward, correct, ...


def eval_rows(spec: Any, task: Any) -> list[dict]:
    """The held-out slice: the first eval_prompts rows of the task's held-out split (fewer when it is smaller)."""
    return list(task.eval[: spec.eval_prompts])


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


class BaseMemo:
    """What the base model does is the same at every evaluation, and in every run of the same model, prompts and
    length cap, so it is worked out once: how likely the base finds an answer (naturalness, per prompt and answer
    token ids, so an answer the policy gives unchanged costs no forward pass), and its own greedy answers at step 0,
    kept across runs in `folder` (a learner runs the same preset again and again) under a key made of the base
    weights' fingerprint, dtype, device, sampler, prompt token ids and the cap."""

    def __init__(self, folder: Path | None = None):
        self.folder, self.natural = folder, {}

    def baseline_file(self, engine: Any, prompts: list[list[int]]) -> Path | None:
        if self.folder is None:
            return None
        import torch

        sample = [(n, p.detach().flatten()[:: max(1, p.numel() // 64)].float().tolist())
                  for n, p in engine.model.named_parameters() if "lora_" not in n]  # fmt: skip
        key = {"weights": sample, "dtype": str(next(engine.model.parameters()).dtype), "device": str(engine.device),
               "sampler": type(engine.sampler).__name__, "prompts": prompts, "eos": list(engine.eos_ids),
               "cap": engine.spec.max_completion_length, "natural": _scorer(engine) is not None,
               "torch": torch.__version__}  # fmt: skip
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"


def _scorer(engine: Any):
    """The base model to score naturalness under: the policy with its adapter off (LoRA), else full fine-tuning's
    reference copy (kept only when beta > 0), else None."""
    return engine.model if engine.spec.use_lora else engine.ref_model


def _naturalness(engine: Any, prompts: list[list[int]], ids: list[list[int]], memo: BaseMemo) -> list:
    from .scoring import naturalness

    model = _scorer(engine)
    if model is None:
        return [None] * len(prompts)
    keys = [(tuple(p), tuple(a)) for p, a in zip(prompts, ids, strict=True)]
    todo = [i for i, k in enumerate(keys) if k not in memo.natural]
    if todo:
        off = engine.model.disable_adapter() if engine.spec.use_lora else contextlib.nullcontext()
        with off:
            vals = naturalness(model, [prompts[i] for i in todo], [ids[i] for i in todo], engine.pad_id)
        memo.natural.update(zip([keys[i] for i in todo], vals, strict=True))
    return [memo.natural[k] for k in keys]


def _answers(engine: Any, prompts: list[list[int]], memo: BaseMemo):
    """The policy's greedy answers; at step 0 (the base model) from the cross-run memo when it has them."""
    from .scoring import Answers, generate

    path = memo.baseline_file(engine, prompts) if engine.step_count == 0 else None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # unreadable: work it out again
            d = json.loads(path.read_text())
            memo.natural.update(
                ((tuple(p), tuple(a)), v) for p, a, v in zip(prompts, d["ids"], d["natural"], strict=True)
            )
            texts = [engine.tok.decode(i, skip_special_tokens=True) for i in d["ids"]]
            return Answers(texts, d["ids"], d["truncated"])
    answers = generate(engine.model, engine.tok, prompts, max_new_tokens=engine.spec.max_completion_length,
                       greedy=True, sampler=engine.sampler)  # fmt: skip
    if path is not None:
        if answers.logp:  # the policy is still the base model: the sampler's log-probs are the naturalness
            memo.natural.update(((tuple(p), tuple(a)), v) for p, a, v in zip(prompts, answers.ids, answers.logp, strict=True))  # fmt: skip
        natural = _naturalness(engine, prompts, answers.ids, memo)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"ids": answers.ids, "truncated": answers.truncated, "natural": natural})
    return answers


def remember_baseline(engine: Any, task: Any) -> None:
    """Work out the base model's step-0 answers to the engine's held-out slice into the cross-run memo (a standby
    worker does this before its run, so the run's first evaluation is a file read)."""
    prompts, _ = engine.encode(eval_rows(engine.spec, task))
    _answers(engine, prompts, BaseMemo(baseline_folder()))


def baseline_folder() -> Path:
    return workbench_home() / "cache" / "heldout-baselines"


def evaluate_policy(engine: Any, rows: list[dict], grader: Callable | None, memo: BaseMemo | None = None) -> EvalResult:  # fmt: skip
    """Greedy answers of `engine`'s current policy to `rows`, scored with the run's rewards and every check."""
    from .rewards import prompt_text
    from .scoring import score_answers

    t0 = time.perf_counter()
    memo = memo or BaseMemo()
    prompts, msgs = engine.encode(rows)
    answers = _answers(engine, prompts, memo)
    natural = _naturalness(engine, prompts, answers.ids, memo)
    rewards = list(zip(engine.names, engine.fns, engine.weights.tolist(), strict=True))
    scores = score_answers(rewards, grader, rows, msgs, answers, natural)
    m: dict[str, float | None] = {"eval/reward": _mean(scores["rewards"]["total"])}
    for name in engine.names:
        m[f"eval/rewards/{name}/mean"] = _mean(scores["rewards"][name])
    for name, vals in scores["checks"].items():
        m[f"eval/checks/{name}"] = _mean(vals)
    m["eval/prompts"] = float(len(rows))
    m["eval/time"] = time.perf_counter() - t0
    c = scores["checks"]
    out = [{"prompt": prompt_text(msgs[i]), "answer": answers.texts[i], "reference": _ref(rows[i]),
            "degenerate_reason": scores["degenerate_reason"][i], "reward": scores["rewards"]["total"][i],
            "correct": c["correct"][i], "naturalness": c["naturalness"][i], "repetition": c["repetition"][i],
            "tokens": answers.tokens[i], "truncated": answers.truncated[i]} for i in range(len(rows))]  # fmt: skip
    return EvalResult(m, out)


def _ref(row: dict) -> str | None:
    ref = row.get("answer")
    if isinstance(ref, (list, tuple)):  # any of several accepted answers
        return " | ".join(map(str, ref))
    return None if ref is None else str(ref)


def best_score(metrics: dict[str, Any], by: str) -> float | None:
    v = metrics.get(BEST_BY[by][0])
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def at_least_as_good(score: float, best: float | None, by: str) -> bool:
    """Whether `score` matches or beats `best` (ties go to the later weights: as good, and trained longer)."""
    if best is None:
        return True
    return score >= best if BEST_BY[by][1] == "higher" else score <= best


def best_text(info: dict[str, Any]) -> str:
    """How the best weights read: "the best weights: step 20, held-out reward 0.412"."""
    base = " (the base model: no later evaluation matched it)" if info.get("step") == 0 else ""
    return f"the best weights: step {info.get('step')}{base}, held-out {info.get('by')} {_num(info.get('score'))}"


def heldout_lines(evals: list[dict], best: dict[str, Any] | None) -> list[str]:
    """`workbench show`'s lines on the held-out evaluations: first → latest, their cost, and the best weights."""
    if not evals:
        return []
    a, b = evals[0], evals[-1]
    n = b.get("eval/prompts") or 0

    def move(key: str, fmt: str = ".3f", count: bool = False) -> str:
        f = (lambda v: _count(v, n)) if count else (lambda v: _num(v, fmt))
        return f"{f(a.get(key))} → {f(b.get(key))}"

    share = b.get("eval/time_share")
    lines = [f"  held-out {int(n)} prompts, step {a['step']} → {b['step']}: reward {move('eval/reward')}, degenerate "
             f"{move('eval/checks/degenerate', count=True)}, correct {move('eval/checks/correct', count=True)}, "
             f"naturalness {move('eval/checks/naturalness', '.2f')}"
             + (f"; evaluating cost {share:.1%} of the training time" if share is not None else "")]  # fmt: skip
    if best:
        lines.append(f"  best    {best_text(best)}")
    return lines


def _count(share: Any, n: float) -> str:
    return f"{round(share * n)}/{int(n)}" if isinstance(share, (int, float)) else "-"


def _num(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


class HeldOutChecks:
    """What the worker calls around its steps: evaluates when due, stores the result, keeps the best weights, and
    says in the log what each evaluation cost against the training so far."""

    def __init__(self, run: Any, spec: Any, task: Any, evaluate: Callable = evaluate_policy):
        self.run, self.spec, self.evaluate = run, spec, evaluate
        self.memo = BaseMemo(baseline_folder())
        self.rows = eval_rows(spec, task)
        if not self.rows:
            raise ConfigError(f"task {spec.task!r} has no held-out prompts to evaluate: raise eval_size")
        grader = reference_grader(self.rows, spec.rewards or task.rewards)
        self.grader = grader and grader[1]
        if spec.keep_best_by == "correct" and grader is None:
            raise ConfigError(
                f"keep_best_by='correct' needs reference answers, and the held-out prompts of task {spec.task!r} "
                "carry none: pick reward, degenerate, repetition or naturalness"
            )
        self.done = {e["step"] for e in run.evals()}
        self.eval_time = sum(e.get("eval/time") or 0.0 for e in run.evals())
        self.train_time = sum(m.get("step_time") or 0.0 for m in run.metrics())
        info = run.best_info()
        self.best = info.get("score") if info and info.get("by") == spec.keep_best_by else None
        self._said: set[str] = set()
        how = f"correctness by {grader[0]}" if grader else "no reference answers: correctness not scored"
        print(f"held-out checks: {len(self.rows)} prompts every {spec.eval_every} steps, greedy; {how}; best "
              f"weights by {spec.keep_best_by}", flush=True)  # fmt: skip

    def due(self, step: int) -> bool:
        return step not in self.done and (step % self.spec.eval_every == 0 or step >= self.spec.max_steps)

    def add_training_time(self, seconds: float | None) -> None:
        self.train_time += float(seconds or 0.0)

    def maybe(self, engine: Any, step: int, force: bool = False) -> None:
        """Evaluate at `step` when due (or `force`d, e.g. the run ended early), unless it was already evaluated."""
        if (force and step not in self.done) or self.due(step):
            self.evaluate_now(engine, step)

    def evaluate_now(self, engine: Any, step: int) -> None:
        t0 = time.perf_counter()
        res = self.evaluate(engine, self.rows, self.grader, memo=self.memo)
        m = res.metrics
        saved = self._keep_best(engine, step, m)
        spent = time.perf_counter() - t0
        self.eval_time += spent
        m["eval/time"] = spent
        m["eval/time_share"] = self.eval_time / self.train_time if self.train_time > 0 else None
        self.run.append_eval(step, m, res.answers)
        self.done.add(step)
        self._log(step, m, saved)

    def _keep_best(self, engine: Any, step: int, m: dict) -> str:
        by = self.spec.keep_best_by
        score = best_score(m, by)
        if score is None:
            self._once(f"no best weights: the held-out {by} score is missing at step {step} (no reward or check "
                       "applies to these prompts)")  # fmt: skip
            return ""
        if not at_least_as_good(score, self.best, by):
            return ""
        t0 = time.perf_counter()
        tmp = self.run.best_tmp_dir()
        engine.save_adapter(tmp)
        self.run.commit_best(tmp, {"step": step, "by": by, "score": score, "better": BEST_BY[by][1]})
        self.best = score
        return f"; best so far by {by} ({score:.3f}): saved to best/ in {time.perf_counter() - t0:.1f} s"

    def _once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            print(text, flush=True)

    def _log(self, step: int, m: dict, saved: str) -> None:
        n = m.get("eval/prompts") or len(self.rows)
        nat = m.get("eval/checks/naturalness")
        if nat is None and not self.spec.use_lora:
            self._once(
                "held-out naturalness is not scored: full fine-tuning keeps the base model only when beta > 0"
            )
        cost = (f"{m['eval/time']:.1f} s" + (f", {m['eval/time_share']:.1%} of the {self.train_time:.0f} s of training "
                f"so far (all evals {self.eval_time:.1f} s)" if m.get("eval/time_share") is not None else
                " (before training: the base model's baseline)"))  # fmt: skip
        print(f"held-out eval at step {step}: reward {_num(m.get('eval/reward'))}, degenerate "
              f"{_count(m.get('eval/checks/degenerate'), n)}, correct {_count(m.get('eval/checks/correct'), n)}, "
              f"naturalness {_num(nat, '.2f')}, repetition {_num(m.get('eval/checks/repetition'), '.2f')}; "
              f"{cost}{saved}", flush=True)  # fmt: skip
