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

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import CompareError
from .grpo.advantages import to_floats, weighted_rewards
from .grpo.sampler import Samples, make_sampler
from .models import encode_prompt, load_model, merge_adapter, pick_device, pick_dtype, stop_ids
from .rewards import build_rewards, prompt_text
from .stats import SUMMARY_COLUMNS, as_score, paired_summary
from .store import open_run
from .tasks import chat_messages, check_prompt, load_task

MODES = ("greedy", "sampled")
SIDES = ("base", "tuned")


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "tolist"):  # numpy scalars and arrays (reference columns read from Parquet)
        return _json_safe(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class Comparison:
    """The result: `table` (one row per prompt: answers and scores of both models) and `summary` (per reward)."""

    run_id: str
    adapter: str
    mode: str
    seed: int
    max_new_tokens: int
    rewards: dict[str, float]  # reward name -> weight in the total
    table: pd.DataFrame
    summary: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        return path

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN/inf as None), for `workbench compare --json` and the API."""
        summary = {str(r): {c: self.summary.loc[r, c] for c in SUMMARY_COLUMNS} for r in self.summary.index}
        doc = {
            "run_id": self.run_id,
            "adapter": self.adapter,
            "mode": self.mode,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "n_prompts": len(self.table),
            "rewards": self.rewards,
            **self.meta,
            "summary": summary,
            "rows": self.table.to_dict(orient="records"),
        }
        return json.loads(json.dumps(_json_safe(doc), allow_nan=False, default=str))


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


def _generate(model, tok, prompts, *, label, mode, temperature, top_p, seed, max_new_tokens, batch_size,
              progress, done_before, total) -> list[tuple[str, int, bool]]:  # fmt: skip
    """(answer text, tokens, truncated) per prompt, in batches; the generator restarts from `seed` for each model."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed) if mode == "sampled" else None
    sampler = make_sampler(model)  # the fast one copies the weights now: build it per model
    kw = dict(n=1, max_new_tokens=max_new_tokens, eos_ids=stop_ids(tok, model), pad_id=tok.pad_token_id,
              temperature=temperature, top_p=top_p, greedy=mode == "greedy", generator=gen)  # fmt: skip
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        s: Samples = sampler.sample(prompts=batch, **kw)
        for ids, mask, trunc in zip(s.ids, s.mask, s.truncated, strict=True):
            kept = ids[mask.bool()]
            out.append((tok.decode(kept.tolist(), skip_special_tokens=True), int(mask.sum()), bool(trunc)))
        if progress:
            progress((done_before + len(out)) / total, f"{label} model: {len(out)}/{len(prompts)} prompts")
    return out


def _score(rewards, messages, answers, columns) -> dict[str, list[float | None]]:
    """Every reward on the answers, plus "total" (weighted sum, NaN where no reward applies)."""
    scores = {}
    for name, fn, _ in rewards:
        missing = [c for c in getattr(fn, "needs", ()) if c not in columns]
        # A reward whose reference column the rows lack (e.g. your own prompt without an answer) does not apply.
        scores[name] = (
            [None] * len(answers) if missing else fn(prompts=messages, completions=answers, **columns)
        )
    per_func = to_floats([scores[n] for n, _, _ in rewards]).T  # (N, F)
    scores["total"] = weighted_rewards(per_func, [w for _, _, w in rewards]).tolist()
    return scores


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
    task = load_task(spec)
    rows = task.eval if rows is None else list(rows)
    if not rows:
        raise CompareError(
            "no prompts to compare: give at least one prompt, or use the run's held-out prompts"
        )
    rows = [{**r, "prompt": check_prompt(r.get("prompt"), f"prompt {i}")} for i, r in enumerate(rows, 1)]
    system_prompt = spec.system_prompt or task.system_prompt
    rewards = build_rewards(spec.rewards or task.rewards)
    messages = [chat_messages(r, system_prompt) for r in rows]
    col_names = list(dict.fromkeys(k for r in rows for k in r if k != "prompt"))
    columns = {c: [r.get(c) for r in rows] for c in col_names}

    dev = pick_device(spec.device)
    model, tok = load_model(spec.model, spec.dtype, dev)
    prompts = [encode_prompt(tok, m, spec.max_prompt_length) for m in messages]
    # Both passes see the same prompts, decoding and seed: only the weights differ.
    gen = dict(mode=mode, temperature=spec.temperature, top_p=spec.top_p, seed=int(seed),
               max_new_tokens=max_new, batch_size=batch_size, progress=progress, total=2 * len(prompts))  # fmt: skip
    answers = {"base": _generate(model, tok, prompts, label="base", done_before=0, **gen)}
    if progress:
        progress(0.5, "loading the tuned model")
    if kind == "adapter":
        model = merge_adapter(model, folder, spec.model)
    else:
        from transformers import AutoModelForCausalLM

        del model  # a full model replaces the base: do not hold two in memory
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(spec.dtype, dev))
        except Exception as e:
            raise CompareError(
                f"could not load the model in {folder} ({type(e).__name__}): point at a complete saved model"
            ) from e
        model.to(dev).eval()
    answers["tuned"] = _generate(model, tok, prompts, label="tuned", done_before=len(prompts), **gen)

    table = pd.DataFrame({"prompt": [prompt_text(m) for m in messages]})
    for (
        c,
        vals,
    ) in columns.items():  # the reference (e.g. the expected answer) beside the answers, for the CSV
        table[f"ref/{c}"] = vals
    scores = {}
    for side in SIDES:
        table[side] = [a for a, _, _ in answers[side]]
    for side in SIDES:
        scores[side] = _score(rewards, messages, table[side].tolist(), columns)
        for name, vals in scores[side].items():
            table[f"{side}/{name}"] = [as_score(v) for v in vals]
    # Token counts and truncation sit outside "base/<x>", which holds scores only (the UI shows those as chips).
    for side in SIDES:
        table[f"{side}_tokens"] = [n for _, n, _ in answers[side]]
        table[f"{side}_truncated"] = [t for _, _, t in answers[side]]
    summary = pd.DataFrame.from_dict(
        {name: paired_summary(scores["base"][name], scores["tuned"][name]) for name in scores["base"]},
        orient="index",
    )[SUMMARY_COLUMNS].astype({"wins": int, "ties": int, "losses": int})
    summary.index.name = "reward"
    if progress:
        progress(1.0, f"compared {len(prompts)} prompts")
    return Comparison(
        run_id=run.id,
        adapter=str(folder),
        mode=mode,
        seed=int(seed),
        max_new_tokens=max_new,
        rewards={n: w for n, _, w in rewards},
        table=table,
        summary=summary,
        meta={"model": spec.model, "weights": kind, "system_prompt": system_prompt},
    )
