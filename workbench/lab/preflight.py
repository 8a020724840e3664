"""Pre-flight: before any training, sample the base model with the run's exact settings, score the answers with the
run's rewards, and try the exploit battery (`battery.py`) on every prompt.

    workbench preflight --preset quick            # the same flags and --config as `workbench train`; --json
    doc = preflight(spec)                         # the report as one JSON-able dict (see `report`)

Sampling is the engine's: the first `prompts` training prompts in the order training draws them
(`tasks.prompt_batches`), G completions each, sampled prompts_per_step prompts at a time by `grpo.sampler` from
one generator seeded with spec.seed: the first batch is the run's first rollout. The report gives per reward and in
total the distribution, the share of groups with no spread (no learning signal), the correlation between rewards,
the share of answers cut at the length cap, how each exploit stands against the real answers, and the flags.

The report is saved under `$WORKBENCH_HOME/preflight/` keyed by the settings it depends on; a run launched with
those settings finds it (`for_run`) and keeps a copy as `preflight.json` in its folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunSpec, workbench_home
from ..grpo.advantages import weighted_rewards
from ..osutil import json_safe, write_json_atomic
from ..rewards import build_rewards, prompt_text
from ..tasks import chat_messages, load_task, prompt_batches
from .battery import CONTROL, EXPLOITS, SIZE, exploit_texts, judge
from .common import pearson, score_texts, summary, weights_of

DEFAULT_PROMPTS = 8
FILE = "preflight.json"
# The settings a pre-flight depends on (what it samples and how it scores): max_steps or the learning rate do not.
KEY_FIELDS = ("model", "task", "train_size", "eval_size", "system_prompt", "rewards", "num_generations",
              "prompts_per_step", "max_prompt_length", "max_completion_length", "temperature", "top_p", "seed",
              "dtype", "device")  # fmt: skip
TRUNCATION_FLAG = 0.25  # a quarter of the answers cut at the cap: the rewards mostly judge unfinished text
ZERO_SPREAD_FLAG = 0.5  # half the groups teach nothing


def first_rows(task: Any, spec: RunSpec, n: int) -> list[dict]:
    """The first n training prompts in the order training draws them."""
    out: list[dict] = []
    for batch in prompt_batches(task.train, spec.prompts_per_step, spec.seed):
        out += batch
        if len(out) >= n or len(out) >= len(task.train):
            return out[:n]
    return out


def sample_answers(
    spec: RunSpec, task: Any, messages: list, progress: Callable | None = None
) -> dict[str, Any]:
    """G sampled answers per prompt from the base model, as the engine samples them: texts, token lengths, cut at
    the cap, and `count` (text -> tokens, for sizing the exploits)."""
    import torch

    from ..grpo.sampler import make_sampler
    from ..models import encode_prompt, load_model, stop_ids

    model, tok = load_model(spec.model, spec.dtype, spec.device)
    prompts = [encode_prompt(tok, m, spec.max_prompt_length) for m in messages]
    sampler = make_sampler(model)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(spec.seed)
    kw = dict(n=spec.num_generations, max_new_tokens=spec.max_completion_length, eos_ids=stop_ids(tok, model),
              pad_id=tok.pad_token_id, temperature=spec.temperature, top_p=spec.top_p, generator=gen)  # fmt: skip
    texts, lengths, cut = [], [], []
    k = spec.prompts_per_step  # a step's batch at a time: the first call is the run's first rollout
    for i in range(0, len(prompts), k):
        if progress:
            progress(0.1 + 0.7 * i / len(prompts), f"sampling prompts {i + 1}-{min(i + k, len(prompts))}")
        with torch.no_grad():
            s = sampler.sample(prompts[i : i + k], **kw)
        n = s.mask.sum(1).tolist()
        ids = [row[:m].tolist() for row, m in zip(s.ids, n, strict=True)]
        texts += tok.batch_decode(ids, skip_special_tokens=True)
        lengths += n
        cut += [bool(t) for t in s.truncated.tolist()]
    return {"texts": texts, "lengths": lengths, "truncated": cut,
            "count": lambda t: len(tok(t, add_special_tokens=False)["input_ids"])}  # fmt: skip


def preflight(spec: RunSpec, prompts: int = DEFAULT_PROMPTS, progress: Callable | None = None,
              task: Any = None, sampler: Callable = sample_answers) -> dict[str, Any]:  # fmt: skip
    """Sample, score, try the exploits; the report (see `report`). `sampler` stands in for the model in tests."""
    t0 = time.perf_counter()
    task = task or load_task(spec)
    specs = task.rewards_for(spec)
    rewards = build_rewards(specs)  # a wrong reward fails now, before the model loads
    rows = first_rows(task, spec, prompts)
    system = task.system_prompt_for(spec)
    msgs = [chat_messages(r, system) for r in rows]
    if progress:
        progress(0.05, "loading the model")
    got = sampler(spec, task, msgs, progress)
    t1 = time.perf_counter()
    G = spec.num_generations
    per_func = score_texts(rewards, [m for m in msgs for _ in range(G)], got["texts"],
                           [r for r in rows for _ in range(G)], task.columns)  # fmt: skip
    if progress:
        progress(0.85, "scoring the exploit battery")
    lengths = np.asarray(got["lengths"]).reshape(len(rows), G)
    items = []  # (exploit, prompt index, text)
    for p, row in enumerate(rows):
        typical = int(np.median(lengths[p]))
        texts = exploit_texts(row, prompt_text(msgs[p]), got["count"], spec.max_completion_length, typical)
        items += [(name, p, text) for name, text in texts.items()]
    scores = score_texts(rewards, [msgs[p] for _, p, _ in items], [t for _, _, t in items],
                         [rows[p] for _, p, _ in items], task.columns)  # fmt: skip
    exploits = {name: np.full((len(rows), len(rewards)), np.nan) for name in EXPLOITS}
    examples: dict[str, str] = {}
    for (name, p, text), s in zip(items, scores, strict=True):
        exploits[name][p] = s
        examples.setdefault(name, text)
    seconds = {"sampling": t1 - t0, "scoring": time.perf_counter() - t1, "total": time.perf_counter() - t0}
    return report(spec, specs, [n for n, _, _ in rewards], weights_of(rewards), rows, msgs, got, per_func,
                  exploits, examples, seconds)  # fmt: skip


def _zero_spread(values: np.ndarray) -> np.ndarray:
    """Per group (rows of `values`, (P, G)): True when fewer than 2 answers are scored or all score the same."""
    ok = np.isfinite(values)
    if not values.size:
        return np.zeros(values.shape[0], dtype=bool)
    hi = np.where(ok, values, -np.inf).max(axis=1)
    lo = np.where(ok, values, np.inf).min(axis=1)
    return (ok.sum(axis=1) < 2) | ~(hi - lo > 1e-6)


def report(spec: RunSpec, specs: list, names: list[str], weights: np.ndarray, rows: list[dict], msgs: list,
           got: dict, per_func: np.ndarray, exploits: dict, examples: dict, seconds: dict) -> dict[str, Any]:  # fmt: skip
    """The pre-flight report from sampled answers and exploit scores (pure: the fast tests feed it canned data)."""
    P, G = len(rows), spec.num_generations
    total = weighted_rewards(per_func, weights)  # (P*G,)
    grouped = total.reshape(P, G)
    funcs = per_func.reshape(P, G, len(names))
    zero = _zero_spread(grouped)
    per_reward = []
    for j, (name, s) in enumerate(zip(names, specs, strict=True)):
        applies = np.isfinite(funcs[:, :, j]).any(axis=1)
        z = _zero_spread(funcs[:, :, j])[applies]
        per_reward.append({"name": name, "weight": float(weights[j]), "spec": str(s), **summary(funcs[:, :, j]),
                           "zero_spread_groups": int(z.sum()), "groups": int(applies.sum())})  # fmt: skip
    corr = [[1.0 if i == j else pearson(per_func[:, i], per_func[:, j]) for j in range(len(names))]
            for i in range(len(names))]  # fmt: skip
    cut = np.asarray(got["truncated"], dtype=bool)
    judged = judge(grouped, funcs, {k: v for k, v in exploits.items()}, names, weights, specs)
    for r in judged:
        r["example"] = examples.get(r["exploit"], "")
    doc = {
        "kind": "preflight",
        "created": time.time(),
        "settings": {k: spec.to_dict()[k] for k in KEY_FIELDS},
        "prompts": P,
        "group_size": G,
        "completions": P * G,
        "seconds": seconds,
        "rewards": per_reward,
        "total": {**summary(grouped), "zero_spread_groups": int(zero.sum()), "groups": P},
        "zero_spread": {
            "groups": P,
            "zero": int(zero.sum()),
            "share": float(zero.mean()) if P else 0.0,
            "text": zero_spread_text(int(zero.sum()), P, G, per_reward),
        },  # fmt: skip
        "correlation": {"names": names, "matrix": corr, "notes": correlation_notes(names, corr)},
        "truncated": {
            "share": float(cut.mean()) if cut.size else 0.0,
            "count": int(cut.sum()),
            "cap": spec.max_completion_length,
            "text": truncation_text(int(cut.sum()), int(cut.size), spec.max_completion_length, specs),
        },  # fmt: skip
        "exploits": judged,
        "samples": [
            {
                "group": i // G,
                "prompt": prompt_text(msgs[i // G]),
                "completion": got["texts"][i],
                "reward": None if np.isnan(total[i]) else float(total[i]),
                "rewards": {
                    n: None if np.isnan(v) else float(v) for n, v in zip(names, per_func[i], strict=True)
                },
                "tokens": int(got["lengths"][i]),
                "truncated": bool(cut[i]),
            }
            for i in range(P * G)
        ],  # fmt: skip
    }
    doc["flags"] = flags_of(doc)
    return json_safe(doc)


def zero_spread_text(zero: int, groups: int, G: int, per_reward: list[dict]) -> str:
    if not zero:
        return f"Every one of the {groups} groups has spread: each carries a learning signal."
    frozen = [r["name"] for r in per_reward if r["groups"] and r["zero_spread_groups"] == r["groups"]]
    why = (
        f" `{'`, `'.join(frozen)}` gave every answer of a group the same score in every group."
        if frozen
        else ""
    )
    return (f"{zero} of {groups} groups ({zero / groups:.0%}) gave all {G} answers the same total reward: GRPO learns "
            f"nothing from them (every advantage is 0).{why} Try more completions per prompt (num_generations), a "
            "higher temperature, or a reward with partial credit instead of pass/fail (e.g. tag_count, length); if "
            "a correctness reward is always 0, the prompts are too hard for this model.")  # fmt: skip


def truncation_text(cut: int, n: int, cap: int, specs: list = ()) -> str:
    share = cut / n if n else 0.0
    text = f"{cut} of {n} answers ({share:.0%}) hit the cap of {cap} tokens"
    if share < TRUNCATION_FLAG:
        return text + "."
    if any(getattr(s, "name", None) in SIZE for s in specs):
        return (text + ": the rewards mostly judge unfinished answers, all about as long. Raise "
                "max_completion_length so that the length term sees where answers really end.")  # fmt: skip
    return (text + ": the rewards mostly judge unfinished answers. Raise max_completion_length, or add a length "
            "or overlong term so that finishing in time pays.")  # fmt: skip


def correlation_notes(names: list[str], corr: list[list]) -> list[str]:
    notes = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            r = corr[i][j]
            if r is not None and r >= 0.9:
                notes.append(
                    f"`{names[i]}` and `{names[j]}` move together (r = {r:.2f}): one of them adds little."
                )
            elif r is not None and r <= -0.5:
                notes.append(f"`{names[i]}` and `{names[j]}` pull against each other (r = {r:.2f}): their weights "
                             "decide which one wins.")  # fmt: skip
    return notes


def flags_of(doc: dict) -> list[dict[str, str]]:
    """Every flag of a report, exploits first: {kind, text, and exploit/reward/fix where they apply}."""
    out = [{"kind": "exploit" if r["exploit"] != CONTROL else "reference", "exploit": r["exploit"],
            "reward": r.get("reward"), "fix": r["fix"], "text": r["text"]} for r in doc["exploits"] if r["flagged"]]  # fmt: skip
    if doc["zero_spread"]["share"] >= ZERO_SPREAD_FLAG:
        out.append({"kind": "signal", "text": doc["zero_spread"]["text"]})
    if doc["truncated"]["share"] >= TRUNCATION_FLAG:
        out.append({"kind": "truncation", "text": doc["truncated"]["text"]})
    out += [{"kind": "correlation", "text": t} for t in doc["correlation"]["notes"]]
    return out


# --- saved reports ------------------------------------------------------------------------------------------------
def key(spec: RunSpec, prompts: int = DEFAULT_PROMPTS) -> str:
    d = spec.to_dict()
    text = json.dumps({"prompts": prompts, **{k: d[k] for k in KEY_FIELDS}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    return workbench_home() / "preflight"


def save(doc: dict, spec: RunSpec) -> Path:
    """Keep a report where a run launched with the same settings finds it."""
    path = cache_dir() / f"{key(spec, doc['prompts'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return path


def for_run(run: Any) -> dict | None:
    """The run's pre-flight report: its own preflight.json, else a saved one with its settings (copied in)."""
    own = run.dir / FILE
    try:
        return json.loads(own.read_text())
    except (OSError, ValueError):
        pass
    path = cache_dir() / f"{key(run.spec)}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    write_json_atomic(own, doc)
    return doc
