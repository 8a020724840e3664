"""What a task is, how its rows are checked, how they split into train and held-out eval, and in which order
training steps draw the train rows (`prompt_batches`).

A row is a dict with "prompt" (text, or a list of chat messages) plus reference columns such as "answer". The split
is deterministic from the seed, the two parts never share a prompt, and the eval part is taken first so it does not
move when train_size changes.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import RewardSpec, RunSpec
from ..errors import TaskError

MIN_ROWS = 4  # below this a "split" is meaningless: too few to train on and hold some out
ROLES = ("system", "user", "assistant")


@dataclass
class Task:
    """Train prompts, held-out eval prompts (never trained on), and the task's suggested rewards and system prompt."""

    name: str
    description: str
    train: list[dict]
    eval: list[dict]
    system_prompt: str = ""
    rewards: list[RewardSpec] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Reference columns the rows carry besides "prompt" (what rewards can read)."""
        return column_names(
            self.train + self.eval
        )  # all rows: a reference may be missing from the first ones

    def rewards_for(self, spec: RunSpec) -> list[RewardSpec]:
        """What a run of `spec` is rewarded by: the run's rewards, else the task's."""
        return spec.rewards or self.rewards

    def system_prompt_for(self, spec: RunSpec) -> str:
        """The system prompt a run of `spec` puts first: the run's, else the task's."""
        return spec.system_prompt or self.system_prompt


def column_names(rows: list[dict]) -> list[str]:
    """The reference columns the rows carry besides "prompt", in first-seen order (a row may lack some)."""
    return list(dict.fromkeys(k for r in rows for k in r if k != "prompt"))


def reference_columns(rows: list[dict]) -> dict[str, list]:
    """Each reference column as a list over the rows, None where a row has no value: what rewards take."""
    return {k: [r.get(k) for r in rows] for k in column_names(rows)}


def chat_messages(row: dict, system_prompt: str = "") -> list[dict]:
    """The messages to feed the chat template: the system prompt first when non-empty and the row has none."""
    p = row["prompt"]
    msgs = [dict(m) for m in p] if isinstance(p, list) else [{"role": "user", "content": str(p)}]
    if system_prompt and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def prompt_key(prompt: Any) -> str:
    """A hashable identity of a prompt, so duplicates can be told apart from distinct prompts."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def check_prompt(p: Any, where: str) -> str | list[dict]:
    """Return a valid prompt (stripped text, or chat messages as plain dicts) or raise TaskError naming the row."""
    if hasattr(p, "tolist"):  # a numpy array of messages, as Parquet gives back a list column
        p = p.tolist()
    if p is None or (isinstance(p, float) and math.isnan(p)):
        raise TaskError(f"{where}: the prompt is empty; fill it in or delete the row")
    if isinstance(p, str):
        s = p.strip()
        if not s:
            raise TaskError(f"{where}: the prompt is empty (only spaces); fill it in or delete the row")
        if s.startswith("[{"):  # chat messages written as JSON text, e.g. in a CSV cell
            try:
                msgs = json.loads(s)
            except ValueError:
                return s
            return check_prompt(msgs, where)
        return s
    if isinstance(p, (list, tuple)):
        return _check_messages(list(p), where)
    kind = "a number" if isinstance(p, (int, float)) else type(p).__name__
    raise TaskError(f"{where}: the prompt is {kind} ({str(p)[:40]!r}), not text or a list of chat messages")


def _check_messages(msgs: list, where: str) -> list[dict]:
    if not msgs:
        raise TaskError(f"{where}: the prompt is an empty list of messages")
    out = []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise TaskError(
                f'{where}: message {i} of the prompt must be like {{"role": "user", "content": "..."}} with '
                f"role one of {', '.join(ROLES)}; got {str(m)[:60]!r}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise TaskError(
            f"{where}: the last message of the prompt must be a non-empty user message (it is answered)"
        )
    return out


def dedupe(rows: list[dict]) -> list[dict]:
    """Drop rows whose prompt repeats an earlier one: a duplicate could land in train and eval both."""
    seen, out = set(), []
    for r in rows:
        k = prompt_key(r["prompt"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def split_rows(rows: list[dict], spec: RunSpec, source: str) -> tuple[list[dict], list[dict]]:
    """Shuffle a fixed list with spec.seed; eval = the first min(eval_size, n // 2), train = up to train_size next."""
    rows = dedupe(rows)
    order = list(range(len(rows)))
    random.Random(spec.seed).shuffle(order)
    rows = [rows[i] for i in order]
    n_eval = min(spec.eval_size, len(rows) // 2)
    return check_split(rows[n_eval : n_eval + spec.train_size], rows[:n_eval], spec, source)


def check_split(
    train: list[dict], eval_: list[dict], spec: RunSpec, source: str
) -> tuple[list[dict], list[dict]]:
    """Refuse a split too small to run: every step needs prompts_per_step train prompts, the comparison one eval."""
    n = len(train) + len(eval_)
    if n < MIN_ROWS or not eval_:
        raise TaskError(
            f"{source} has {n} distinct prompt(s); at least {MIN_ROWS} are needed (some to train on, some held "
            "out for the comparison): add rows"
        )
    if len(train) < spec.prompts_per_step:
        raise TaskError(
            f"{source} leaves {len(train)} training prompt(s) after holding out {len(eval_)}, fewer than "
            f"prompts_per_step={spec.prompts_per_step}: add rows, or lower prompts_per_step or eval_size"
        )
    keys = {prompt_key(r["prompt"]) for r in eval_}
    if any(prompt_key(r["prompt"]) in keys for r in train):  # dedupe guarantees this never happens
        raise RuntimeError(f"{source}: train and eval share a prompt; this is a bug in the split")
    return train, eval_


def prompt_batches(
    rows: list[dict[str, Any]], prompts_per_step: int, seed: int, start_step: int = 0
) -> Iterator[list[dict[str, Any]]]:
    """Endless batches of `prompts_per_step` rows: each epoch a fresh seeded shuffle, the incomplete tail dropped.

    The one definition of which prompts a training step sees: the built-in engine, TRL and a resumed run all draw
    from it, so they see the same prompts at the same step.

    `start_step=k` yields what an uninterrupted run would yield from its (k+1)-th batch on (a resume).
    """
    if prompts_per_step < 1 or len(rows) < prompts_per_step:
        raise ValueError(f"need at least prompts_per_step={prompts_per_step} rows, got {len(rows)}")
    per_epoch = len(rows) // prompts_per_step
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        order = list(range(len(rows)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        for b in range(skip, per_epoch):
            yield [rows[i] for i in order[b * prompts_per_step : (b + 1) * prompts_per_step]]
        epoch, skip = epoch + 1, 0
