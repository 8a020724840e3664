"""The same run spec on TRL's GRPOTrainer: what `engine="trl"` runs.

`train_with_trl` maps every RunSpec field onto a `GRPOConfig` (`trl_export.grpo_config_kwargs`, TRL 1.16 semantics,
which the built-in engine follows), trains with the same reward functions and task data, and streams each step into the same `StepResult`
objects as the built-in engine, so the run store, live curves and comparison work unchanged.

- A workbench step is one rollout of prompts_per_step × G completions followed by num_iterations (μ) optimizer
  passes over it; in TRL that is μ optimizer steps (`steps_per_generation=1`), so TRL's `max_steps` is ours × μ and
  one StepResult is emitted every μ TRL steps.
- Prompts reach TRL in the order `tasks.prompt_batches` gives the built-in engine (`shuffle_dataset=False`), so the
  two engines see the same prompts at the same step.
- Episodes: each reward fn is wrapped to record what TRL gives it (prompts, completions, completion token ids,
  scores); totals and advantages are recomputed from those scores with `grpo.advantages` (TRL 1.16's formulas).
- TRL 1.16 has no max_prompt_length: prompts over it are used whole (a note is printed).
- Checkpoints: with `on_checkpoint`, TRL saves one every save_every steps and when stopped (its own folder layout:
  adapter, optimizer, scheduler, RNG, trainer_state.json) and hands each over to be renamed into the run store;
  `resume_from` continues from one, skipping the prompts already trained on. `check_checkpoint` reads one's files
  without a model, so that a cut-short one is found before TRL trips over it.

The same spec as a script for `accelerate launch` on GPUs: `trl_export.export_trl`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunSpec
from .grpo import Episode, NonFiniteError, RewardFunctionError, StepResult
from .grpo.advantages import group_advantages, to_floats, weighted_rewards
from .models import encode_prompt, load_model, pick_device, pick_dtype, stop_ids
from .rewards import build_rewards, completion_text, prompt_text
from .tasks import prompt_batches
from .trl_export import grpo_config_kwargs, trl_rows

_SUMMARY_KEYS = ("train_runtime", "train_loss")  # keys of the end-of-training log, not a step


# --- streaming TRL's steps into StepResults ---------------------------------------------------------------------


class _Rollout:
    """What the reward functions saw in the latest generation: prompts, completions, token ids, scores, timing."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prompts: list = []
        self.completions: list = []
        self.ids: list[list[int]] = []
        self.scores: dict[str, list] = {}
        self.first_reward_at: float | None = None
        self.reward_time = 0.0


class _RecordedReward:
    """A reward fn that records its inputs and scores into a _Rollout; TRL sees the same name and outputs."""

    def __init__(self, name: str, fn: Callable, rollout: _Rollout, first: bool):
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.fn, self.rollout, self.first = fn, rollout, first

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        t0 = time.perf_counter()
        r = self.rollout
        if self.first:  # the first reward call of a rollout: generation has just finished
            r.prompts, r.completions, r.ids = (
                list(prompts),
                list(completions),
                [list(c) for c in completion_ids],
            )
            r.first_reward_at = t0
        try:
            out = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as e:
            raise RewardFunctionError(self.__name__, e) from e
        r.scores[self.__name__] = [None if v is None else float(v) for v in out]
        r.reward_time += time.perf_counter() - t0
        return out


def _mean_logs(logs: list[dict]) -> dict[str, float]:
    """Average the TRL logs of one workbench step (μ optimizer steps); non-numbers and NaN/None are dropped."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for log in logs for k in log):
        vals = [float(log[key]) for log in logs if isinstance(log.get(key), (int, float))]
        vals = [v for v in vals if math.isfinite(v)]
        if vals and key not in ("epoch", "step_time"):
            out[key] = max(vals) if key == "num_tokens" else sum(vals) / len(vals)  # num_tokens is cumulative
    return out


def _stream_callback(spec, names, weights, rollout, on_step, should_stop, stop_ids, on_checkpoint=None):
    """A TrainerCallback that turns every μ TRL steps into one StepResult, asks TRL to stop when told (saving a
    checkpoint first when there is `on_checkpoint`), and hands each saved checkpoint to `on_checkpoint`."""
    from transformers import TrainerCallback

    mu, group = spec.num_iterations, spec.num_generations

    class StreamSteps(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict] = []
            self.began = self.ended = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % mu == 0:  # a workbench step begins with a new rollout
                self.began = time.perf_counter()
                rollout.reset()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % mu == 0:
                self.ended = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or any(k in logs for k in _SUMMARY_KEYS):
                return
            for key in ("loss", "grad_norm"):
                v = logs.get(key)
                if isinstance(v, float) and not math.isfinite(v):
                    raise NonFiniteError(f"{key} is {v} at TRL step {state.global_step}")
            self.logs.append(dict(logs))
            if state.global_step % mu:
                return
            step = state.global_step // mu
            metrics = _mean_logs(self.logs)
            self.logs = []
            step_time = self.ended - self.began
            generation = (rollout.first_reward_at or self.began) - self.began
            metrics.update(
                {
                    "step_time": step_time,
                    "time/generation": generation,  # includes TRL's old/reference log-prob passes
                    "time/rewards": rollout.reward_time,
                    "time/training": max(step_time - generation - rollout.reward_time, 0.0),
                }
            )
            on_step(
                StepResult(
                    step=step, episodes=_episodes(step, rollout, names, weights, group), metrics=metrics
                )
            )
            if should_stop():  # asked between workbench steps: TRL checks this right after the log
                control.should_training_stop = True
                control.should_save = on_checkpoint is not None  # a resume goes on from here, redoing nothing

        def on_save(self, args, state, control, **kwargs):
            if on_checkpoint is not None:  # TRL has written checkpoint-<its step> whole by now
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                on_checkpoint(folder, state.global_step // mu)

    def _episodes(step, r: _Rollout, names, weights, g) -> list[Episode]:
        if not r.ids:
            return []
        scores = [r.scores.get(n, [None] * len(r.ids)) for n in names]
        total = weighted_rewards(to_floats(scores).T, weights)  # (N,) from (N, F); NaN = no reward applies
        adv, _ = group_advantages(total, g, spec.scale_rewards)
        totals, advs = np.nan_to_num(total).tolist(), adv.tolist()  # an unscorable completion: total 0
        return [
            Episode(
                step=step,
                group=i // g,
                prompt=prompt_text(r.prompts[i]),  # the last user turn
                completion=completion_text(r.completions[i]),
                rewards={n: s[i] for n, s in zip(names, scores, strict=True)},
                reward=totals[i],
                advantage=advs[i],
                length=len(ids),
                truncated=bool(ids) and ids[-1] not in stop_ids,  # TRL: no EOS (or pad) at the end
            )
            for i, ids in enumerate(r.ids)
        ]

    return StreamSteps()


# --- training ----------------------------------------------------------------------------------------------------


def _train_dataset(spec: RunSpec, task: Any, system_prompt: str):
    """The prompts of max_steps steps, in the built-in engine's order, as a datasets.Dataset."""
    from datasets import Dataset

    batches = list(
        itertools.islice(prompt_batches(task.train, spec.prompts_per_step, spec.seed), spec.max_steps)
    )
    rows = trl_rows([row for batch in batches for row in batch], system_prompt)
    try:
        return Dataset.from_list(rows), len(batches)
    except Exception as e:  # pyarrow rejects a column whose values change type from row to row
        raise ValueError(
            f"task {task.name!r}: its rows cannot become a datasets.Dataset for TRL ({type(e).__name__}: {e}); "
            "give every row the same columns with one type per column"
        ) from None


def _note_long_prompts(tok, rows: list[dict], limit: int) -> None:
    seen = {json.dumps(r["prompt"], sort_keys=True, default=str): r["prompt"] for r in rows}
    lengths = [len(encode_prompt(tok, p)) for p in seen.values()]
    over = sum(n > limit for n in lengths)
    if over:
        print(
            f"note: {over} of {len(lengths)} prompts are longer than max_prompt_length={limit} tokens (longest "
            f"{max(lengths)}); TRL 1.16 does not cut prompts, so they are used whole",
            flush=True,
        )


def build_trainer(spec: RunSpec, task: Any, on_step, should_stop, output_dir: Path, on_checkpoint=None):
    """A GRPOTrainer for `spec`, its reward fns wrapped to record episodes, with the streaming callback; with
    `on_checkpoint(folder, step)`, saving a checkpoint every save_every steps."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    # fp16 trains as mixed precision over fp32 weights (fp16 weights cannot take gradient updates safely).
    model, tok = load_model(
        spec.model, dtype="float32" if dtype == torch.float16 else spec.dtype, device=device
    )
    rewards = build_rewards(task.rewards_for(spec))
    names, weights = [n for n, _, _ in rewards], [w for _, _, w in rewards]
    system_prompt = task.system_prompt_for(spec)
    dataset, n_batches = _train_dataset(spec, task, system_prompt)
    _note_long_prompts(tok, dataset.to_list()[: spec.prompts_per_step * 8], spec.max_prompt_length)
    kwargs = grpo_config_kwargs(spec, weights)
    kwargs["max_steps"] = min(spec.max_steps, n_batches) * spec.num_iterations
    # Small models: recomputing activations costs more time than the memory is worth. transformers 5 renamed the
    # switch (the old name warns on every run).
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    kwargs[
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    ] = False
    config = GRPOConfig(
        output_dir=str(output_dir),
        **kwargs,
        shuffle_dataset=False,  # the dataset is already in the built-in engine's order
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        logging_steps=1,
        report_to="none",
        # TRL counts μ optimizer steps per workbench step; the worker saves the final adapter itself
        save_strategy="steps" if on_checkpoint else "no",
        save_steps=spec.save_every * spec.num_iterations,
        disable_tqdm=True,
    )
    rollout = _Rollout()
    wrapped = [_RecordedReward(n, fn, rollout, first=i == 0) for i, (n, fn, _) in enumerate(rewards)]
    ends = set(stop_ids(tok, model)) | ({tok.pad_token_id} - {None})  # TRL also counts a final pad as an end
    callback = _stream_callback(spec, names, weights, rollout, on_step, should_stop, ends, on_checkpoint)
    lora = spec.lora_kwargs()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=wrapped,
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=LoraConfig(**lora) if lora else None,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the worker prints its own progress
    return trainer


def train_with_trl(
    spec: RunSpec,
    task: Any,
    on_step: Callable[[StepResult], None],
    should_stop: Callable[[], bool],
    output_dir: Path,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    resume_from: Path | None = None,
) -> Path:
    """Train `spec` on `task` with TRL's GRPOTrainer; call `on_step` after every step; return the adapter folder.

    Stops after the current step when `should_stop()` turns true. The final adapter (or the full model when
    use_lora is off) is saved with its tokenizer to `output_dir/adapter`, stopped or not. `on_checkpoint(folder,
    step)` receives each checkpoint TRL saves (to move it away); `resume_from` is one to continue from.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(spec, task, on_step, should_stop, output_dir, on_checkpoint)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    final = output_dir / "adapter"
    trainer.save_model(str(final))
    return final


def check_checkpoint(folder: Path) -> int:
    """Read every file of a TRL checkpoint as a resume would, without a model; return its TRL step. A cut-short or
    garbled file raises (ValueError, zipfile.BadZipFile, a safetensors error, ...)."""
    import zipfile

    from safetensors import safe_open

    step = int(json.loads((folder / "trainer_state.json").read_text())["global_step"])
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{folder.name} holds no weights (*.safetensors)")
    for f in weights:
        with safe_open(str(f), framework="pt") as st:
            names = st.keys()
            for key in names:
                st.get_tensor(key)
    for f in [*folder.glob("*.pt"), *folder.glob("*.pth")]:  # torch.save writes zip archives: check every CRC
        with zipfile.ZipFile(f) as z:
            if (bad := z.testzip()) is not None:
                raise ValueError(f"{f.name}: {bad} is corrupt")
    return step


class CheckpointProbe:
    """What recovery.restore_checkpoint needs of an engine, for a TRL run: TRL loads the checkpoint itself when it
    resumes; this only checks that it can."""

    def __init__(self, num_iterations: int):
        self.mu, self.step_count = num_iterations, 0

    def load_checkpoint(self, folder: Path) -> None:
        self.step_count = check_checkpoint(folder) // self.mu
