"""Built-in tasks: "concise" (bundled prompts, length reward), "arithmetic" and "rg:<name>" (reasoning-gym).

Generated tasks draw eval items from a reasoning-gym dataset seeded with spec.seed and train items from one seeded
far from it, skipping eval's questions: the held-out set does not change when train_size does. Each row carries an `rg_entry` column from which the
verifier regenerates the item exactly (see `rewards.rg_key`), so the reward also works inside TRL.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from importlib import resources

from ..config import ConfigError, RewardSpec, RunSpec, length_reward
from ..rewards import rg_key
from .base import Task, TaskError, check_split, prompt_key, split_rows

REASONING_SYSTEM_PROMPT = (
    "Think about the problem step by step inside <think> </think> tags, then give only the final answer inside "
    "<answer> </answer> tags. For example: <think>2 + 3 = 5, and 5 * 4 = 20</think><answer>20</answer>"
)
# reasoning-gym seeds item i with seed + i: train draws far from eval's seeds so the two rarely even collide.
TRAIN_SEED_OFFSET = 1_000_003
# Easy enough that a 135M model gets some right from the start, so correctness has a signal to climb:
ARITHMETIC_CONFIG = {
    "min_terms": 2,
    "max_terms": 3,
    "min_digits": 1,
    "max_digits": 1,  # with two digits the bundled model answered 12% right (greedy), with one 25%
    "operators": ["+", "-", "*"],
    "allow_parentheses": False,
    "allow_negation": False,
}


def concise_rewards() -> list[RewardSpec]:
    """Concise *and* correct: length alone is gamed (symbol spam and repeated words are short; see the length-only
    preset), so correctness (weight 2: it must outweigh the length gain of a short wrong answer) and a repetition
    penalty come with it."""
    return [length_reward(), RewardSpec("contains_answer", 2.0), RewardSpec("repetition", 1.0)]


def load_concise(spec: RunSpec) -> Task:
    text = resources.files("workbench").joinpath("data/concise_prompts.jsonl").read_text(encoding="utf-8")
    rows = [r for line in text.splitlines() if line.strip() and "prompt" in (r := json.loads(line))]
    train, eval_ = split_rows(rows, spec, "the concise prompt set")
    return Task(
        name="concise",
        description=(
            f"Concise answers: {len(rows)} bundled questions and instructions of {len({r['category'] for r in rows})} "
            f"kinds ({sum('answer' in r for r in rows)} factual ones carry reference answers); rewarded for about "
            f"{length_reward().params['target']} words, a correct answer where there is a reference, and no repeats."
        ),
        train=train,
        eval=eval_,
        system_prompt="",  # no instruction to be brief: the reward alone should teach it
        rewards=concise_rewards(),
    )


# One worked example as an earlier chat turn. Why: a 135M model copies a format it has seen answered far more readily
# than it follows an instruction, and GRPO can only reinforce what the model samples. Measured on the bundled model
# (8 held-out prompts × 6 samples): <answer> tags in 0–8% of samples with the instruction alone, 35% with this turn.
ARITHMETIC_EXAMPLE = (
    {"role": "user", "content": "Calculate 7 + 5 * 2."},
    {"role": "assistant", "content": "<think>5 * 2 = 10, and 7 + 10 = 17</think><answer>17</answer>"},
)


def with_example(row: dict) -> dict:
    """The row with its question asked after ARITHMETIC_EXAMPLE's worked turn (a chat-message prompt)."""
    return {**row, "prompt": [*map(dict, ARITHMETIC_EXAMPLE), {"role": "user", "content": row["prompt"]}]}


def load_arithmetic(spec: RunSpec) -> Task:
    train, eval_ = generate_rg("basic_arithmetic", ARITHMETIC_CONFIG, spec)
    train, eval_ = [with_example(r) for r in train], [with_example(r) for r in eval_]
    return Task(
        name="arithmetic",
        description=(
            "Arithmetic with a reasoning format: reasoning-gym basic_arithmetic (2–3 one-digit terms, + - *), "
            "asked after one worked example turn, rewarded for the <think>/<answer> format and a correct answer "
            "(math-verify)."
        ),
        train=train,
        eval=eval_,
        system_prompt=REASONING_SYSTEM_PROMPT,
        rewards=[RewardSpec("tag_count", 0.5), RewardSpec("math_correct", 1.0)],
    )


def rg_datasets() -> list[str]:
    """Names of the reasoning-gym datasets ("rg:<name>" tasks)."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def parse_rg(ref: str) -> tuple[str, dict]:
    """`name[,key=value,...]` -> (name, config overrides)."""
    head, *kvs = [p.strip() for p in ref.split(",") if p.strip()] or [""]
    config = {}
    for kv in kvs:
        if "=" not in kv:
            raise TaskError(
                f"reasoning-gym setting {kv!r} must look like key=value, e.g. rg:chain_sum,max_terms=3"
            )
        k, v = kv.split("=", 1)
        config[k.strip()] = _value(v.strip())
    return head, config


def _value(v: str):
    """A setting's value: a JSON number/true/false when it reads as one, else the text."""
    try:
        return json.loads(v)
    except ValueError:
        return v


def load_rg(ref: str, spec: RunSpec) -> Task:
    name, config = parse_rg(ref)
    train, eval_ = generate_rg(name, config, spec)
    return Task(
        name=f"rg:{ref}",
        description=f"reasoning-gym {name}: generated from seed {spec.seed}, scored by the task's own verifier.",
        train=train,
        eval=eval_,
        system_prompt=REASONING_SYSTEM_PROMPT,
        rewards=[RewardSpec("tag_count", 0.5), RewardSpec("rg_verifier", 1.0)],
    )


def generate_rg(name: str, config: dict, spec: RunSpec) -> tuple[list[dict], list[dict]]:
    """Eval and train items from two datasets: eval's depends only on (seed, eval_size), so it stays put when
    train_size changes (some tasks' items depend on the dataset size). Train skips any question eval holds."""
    names = rg_datasets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TaskError(
            f"unknown reasoning-gym dataset {name!r}: {hint}valid names include {', '.join(names[:12])} … "
            f"({len(names)} in all, e.g. basic_arithmetic, chain_sum, leg_counting)"
        )
    eval_ = _draw(name, config, spec.seed, spec.eval_size, set())
    train = _draw(
        name, config, spec.seed + TRAIN_SEED_OFFSET, spec.train_size, {prompt_key(r["prompt"]) for r in eval_}
    )
    return check_split(train, eval_, spec, f"rg:{name}")


def _draw(name: str, config: dict, seed: int, n: int, seen: set) -> list[dict]:
    """Up to n distinct items in index order; the virtual size leaves room for skipped duplicates."""
    import reasoning_gym

    size = 2 * n + 16
    try:
        ds = reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    except TypeError as e:
        from reasoning_gym.factory import DATASETS

        fields = [f.name for f in dataclasses.fields(DATASETS[name][1]) if f.name not in ("seed", "size")]
        raise TaskError(f"rg:{name}: {e}; its settings are {', '.join(fields)}") from None
    except (AssertionError, ValueError, ConfigError) as e:
        raise TaskError(
            f"rg:{name} cannot make {size} items with settings {config} ({e or type(e).__name__}): change the "
            "settings or lower train_size / eval_size"
        ) from None
    rows, seen = [], set(seen)
    for i in range(size):
        item = ds[i]
        key = prompt_key(item["question"])
        if key in seen:
            continue
        seen.add(key)
        answer = item.get("answer")
        rows.append(
            {
                "prompt": item["question"],
                "answer": answer if answer is None else str(answer),
                "rg_entry": rg_key(name, config, seed, size, i),
            }
        )
        if len(rows) == n:
            break
    return rows
