"""Scoring answers to prompts: every reward of a run, every check (`checks.py`), and naturalness under the base model.

    from workbench.scoring import Answers, generate, naturalness, score_answers
    ans = generate(model, tok, prompt_ids, max_new_tokens=48, greedy=True)       # texts, token ids, truncation
    nat = naturalness(base_model, prompt_ids, ans.ids)                           # mean log-prob per token
    scores = score_answers(rewards, grader, rows, messages, ans, nat)

Compare (`evaluate.py`) scores the base and the tuned model's answers with this, and the worker scores a held-out
slice with it during training, so the curve and the final comparison measure the same things the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import text_checks
from .grpo.advantages import to_floats, weighted_rewards
from .grpo.forward import completion_logps
from .grpo.sampler import make_sampler
from .models import stop_ids
from .tasks import reference_columns


@dataclass
class Answers:
    """One model's answers, one per prompt: the text, the token ids it generated (its end token included), cut?
    `logp`: greedy answers only, each one's mean log-prob per token under the model that wrote it, at temperature 1:
    the base model's own answers get their naturalness free, with no second forward pass."""

    texts: list[str]
    ids: list[list[int]]
    truncated: list[bool]
    logp: list[float | None] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return [len(i) for i in self.ids]


def generate(model, tok, prompts: Sequence[list[int]], *, max_new_tokens: int, greedy: bool = True,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 8, sampler=None,
             progress: Callable[[int], None] | None = None) -> Answers:  # fmt: skip
    """One answer per prompt, in batches. `sampler`: reuse one (the engine's, kept in step with training)."""
    dev = next(model.parameters()).device
    gen = None if greedy else torch.Generator(device=dev).manual_seed(seed)
    sampler = sampler or make_sampler(model)  # the fast one copies the weights now: build it per model
    # Greedy picks the same tokens at any temperature; at 1 the sampler's log-probs are the naturalness measure.
    kw = dict(n=1, max_new_tokens=max_new_tokens, eos_ids=stop_ids(tok, model), pad_id=tok.pad_token_id,
              temperature=1.0 if greedy else temperature, top_p=top_p, greedy=greedy, generator=gen)  # fmt: skip
    out = Answers([], [], [])
    for i in range(0, len(prompts), batch_size):
        s = sampler.sample(prompts=list(prompts[i : i + batch_size]), **kw)
        for ids, mask, trunc, logps in zip(s.ids, s.mask, s.truncated, s.logps, strict=True):
            kept = ids[mask.bool()].tolist()
            if greedy:
                out.logp.append(float(logps[mask.bool()].float().mean()) if kept else None)
            out.ids.append(kept)
            out.texts.append(tok.decode(kept, skip_special_tokens=True))
            out.truncated.append(bool(trunc))
        if progress:
            progress(len(out.ids))
    return out


@torch.no_grad()
def naturalness(model, prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int = 0,
                batch_size: int = 8) -> list[float | None]:  # fmt: skip
    """Mean log-probability per token of each answer given its prompt, under `model` (the base), at temperature 1.

    One forward pass per batch through the training forward (`grpo.forward.completion_logps`). None for an answer
    with no tokens. How far it falls from the base model's own answers measures how far the language has drifted.
    """
    dev = next(model.parameters()).device
    out: list[float | None] = []
    for i in range(0, len(prompts), batch_size):
        ps, cs = prompts[i : i + batch_size], answers[i : i + batch_size]
        L, T = max(len(p) for p in ps), max(1, max(len(c) for c in cs))
        p_ids = torch.full((len(ps), L), pad_id, dtype=torch.long)
        p_mask = torch.zeros(len(ps), L, dtype=torch.long)
        c_ids = torch.full((len(cs), T), pad_id, dtype=torch.long)
        c_mask = torch.zeros(len(cs), T)
        for r, (p, c) in enumerate(zip(ps, cs, strict=True)):
            p_ids[r, L - len(p) :], p_mask[r, L - len(p) :] = (
                torch.tensor(p, dtype=torch.long),
                1,
            )  # left-padded
            if c:
                c_ids[r, : len(c)], c_mask[r, : len(c)] = torch.tensor(c, dtype=torch.long), 1
        logps, _ = completion_logps(model, p_ids.to(dev), p_mask.to(dev), c_ids.to(dev), 1, 1.0)  # (B, T)
        per = (logps.float().cpu() * c_mask).sum(1) / c_mask.sum(1).clamp(min=1)  # (B,)
        out += [
            float(v) if n > 0 else None for v, n in zip(per.tolist(), c_mask.sum(1).tolist(), strict=True)
        ]
    return out


def reward_scores(rewards: Sequence[tuple[str, Callable, float]], messages: list, texts: list[str],
                  columns: dict[str, list]) -> dict[str, list[float | None]]:  # fmt: skip
    """Every reward on the answers, plus "total" (the weighted sum, NaN where no reward applies)."""
    scores = {}
    for name, fn, _ in rewards:
        missing = [c for c in getattr(fn, "needs", ()) if c not in columns]
        # A reward whose reference column the rows lack (e.g. your own prompt without an answer) does not apply.
        scores[name] = (
            [None] * len(texts) if missing else list(fn(prompts=messages, completions=texts, **columns))
        )
    per_func = to_floats([[v for v in scores[n]] for n, _, _ in rewards]).T  # (N, F)
    scores["total"] = weighted_rewards(per_func, [w for _, _, w in rewards]).tolist()
    return scores


def score_answers(rewards: Sequence[tuple[str, Callable, float]], grader: Callable | None, rows: Sequence[dict],
                  messages: list, answers: Answers, natural: list[float | None]) -> dict[str, Any]:  # fmt: skip
    """{"rewards": {name: values, "total": ...}, "checks": {name: values}, "degenerate_reason": [...]}."""
    columns = reference_columns(list(rows))
    checks = text_checks(answers.texts, answers.tokens, answers.truncated, grader)
    reasons = checks.pop("degenerate_reason")
    checks = {"degenerate": checks.pop("degenerate"), "repetition": checks.pop("repetition"),
              "naturalness": list(natural), **checks}  # fmt: skip
    return {
        "rewards": reward_scores(rewards, messages, answers.texts, columns),
        "checks": checks,
        "degenerate_reason": reasons,
    }
