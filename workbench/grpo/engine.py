"""GRPOEngine: one GRPO step = rollout → rewards → group advantages → μ optimizer passes; plus checkpoints.

    engine = GRPOEngine.from_spec(spec, task)
    for rows in itertools.islice(prompt_batches(task.train, spec.prompts_per_step, spec.seed), spec.max_steps):
        result = engine.step(rows)          # StepResult: episodes + TRL-named metrics + time/<phase>

How it differs from TRL's GRPOTrainer (same objective, same metrics; the parity tests hold it to TRL's loss):
- the rollout samples from a merged, fused copy of the weights (`sampler.FusedLlamaSampler`), refreshed after each update;
  how far its log-probs are from the trainer's is logged as TRL logs vLLM's (`sampling/sampling_logp_difference/*`);
- the training forward computes each prompt once per group and logits only at completion positions (`forward`);
- one step = one rollout of prompts_per_step × G completions, then num_iterations (μ) full-batch updates on it,
  which is TRL with steps_per_generation = 1 and no gradient accumulation.
"""

from __future__ import annotations

import ctypes
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunSpec
from ..models import encode_prompt, load_model, stop_ids
from .advantages import group_advantages, nanmean, nanstd, weighted_rewards
from .forward import completion_logps
from .fused import FusedProjections
from .llama import supports
from .loss import policy_loss
from .sampler import make_sampler
from .samples import Samples
from .selfcheck import forward_ok
from .types import Episode, NonFiniteError, RewardFunctionError, StepResult

_STATE = "engine_state.pt"


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS after every step.

    Why: a training step allocates and frees ~0.5 GB of activations; with glibc's default trim and mmap
    thresholds much of it goes back to the OS and comes back as fresh pages, which the kernel must fault in and
    zero on the next step (measured: the forward pass varied 0.19–0.6 s from step to step; with this, 0.19–0.27 s).
    A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of free heap
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: blocks up to 32 MB (glibc's cap) come from the heap
    except (OSError, AttributeError):
        pass


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one left-padded block and its mask, both (P, L): generation continues on the right."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p) :], mask[r, L - len(p) :] = torch.tensor(p, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def sampling_gap(sampled: torch.Tensor, trained: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |trained − sampled| log-prob of the scored sampled tokens (B, T), as TRL names the vLLM gap.

    Why: the sampler runs its own copy of the weights through its own code; if the two ever compute different
    functions (a stale copy, a dropped bias, an adapter one of them ignores), the curve leaves zero.
    """
    delta = (trained.float() - sampled.float()).abs()[mask.bool()]  # (scored tokens,)
    if delta.numel() == 0:
        return {"sampling/sampling_logp_difference/mean": 0.0, "sampling/sampling_logp_difference/max": 0.0}
    return {"sampling/sampling_logp_difference/mean": float(delta.mean()),
            "sampling/sampling_logp_difference/max": float(delta.max())}  # fmt: skip


class GRPOEngine:
    """Trains `model` (wrapped in LoRA when spec.use_lora) with GRPO on batches of task rows."""

    def __init__(self, spec: RunSpec, model, tokenizer, reward_fns: list[tuple[str, Any, float]],
                 system_prompt: str = "", columns: tuple[str, ...] = ()):  # fmt: skip
        from transformers import get_scheduler

        keep_freed_memory()
        self.spec, self.tok, self.system_prompt = spec, tokenizer, system_prompt
        # The task's reference columns: a batch whose rows all lack one (an open-ended prompt has no "answer")
        # still passes it, as None, so a reward says "does not apply" instead of failing on a missing column.
        self.columns = tuple(columns)
        self.names = [n for n, _, _ in reward_fns]
        self.fns = [f for _, f, _ in reward_fns]
        self.weights = torch.tensor([float(w) for _, _, w in reward_fns])
        self.device = next(model.parameters()).device
        self.model = self._trainable(model)
        self.ref_model = None
        if (
            spec.beta > 0 and not spec.use_lora
        ):  # full fine-tuning has no adapter to switch off: keep a frozen copy
            import copy

            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel for all ~200 LoRA tensors instead of a dozen small ops each (CPU and CUDA support it)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=spec.learning_rate, weight_decay=spec.weight_decay, fused=True
        )
        mu = spec.num_iterations  # the schedule counts optimizer steps, μ per GRPO step (as TRL does)
        self.scheduler = get_scheduler(spec.scheduler_name, self.optimizer,
                                       num_warmup_steps=spec.warmup_steps * mu,
                                       num_training_steps=spec.max_steps * mu)  # fmt: skip
        self.generator = torch.Generator(device=self.device).manual_seed(spec.seed)
        self.sampler = make_sampler(self.model)
        self.fused = supports(self.model)  # asked once: it walks every module
        usable = self.fused and FusedProjections.usable(self.model)
        self.proj = FusedProjections(self.model) if usable else None
        if self.fused and not forward_ok(self.model, self.proj):  # checked once on a device the tests skip
            self.fused, self.proj = False, None
        self.eos_ids = stop_ids(tokenizer, self.model)
        self.pad_id = tokenizer.pad_token_id
        self.step_count = 0

    @classmethod
    def from_spec(cls, spec: RunSpec, task: Any, wrap_rewards=None) -> GRPOEngine:
        """Load the spec's model and build its rewards (`wrap_rewards(fns) -> fns`: the worker's fault injection)."""
        from ..rewards import build_rewards

        model, tok = load_model(spec.model, spec.dtype, spec.device)
        fns = build_rewards(task.rewards_for(spec))
        if wrap_rewards is not None:
            fns = wrap_rewards(fns)
        return cls(spec, model, tok, fns, task.system_prompt_for(spec), tuple(task.columns))

    def _trainable(self, model):
        spec = self.spec
        if not spec.use_lora:
            return model.train().requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(**spec.lora_kwargs())
        torch.manual_seed(spec.seed)  # LoRA A's initialisation
        return get_peft_model(model, cfg).train()  # adapters in fp32 over bf16 weights (peft's default)

    # --- the stages ------------------------------------------------------------------------------------------------
    def encode(self, rows: list[dict]) -> tuple[list[list[int]], list[list[dict]]]:
        """Prompt token ids (as Compare encodes them: `models.encode_prompt`) and the chat messages of `rows`."""
        from ..tasks import chat_messages

        msgs = [chat_messages(r, self.system_prompt) for r in rows]
        return [encode_prompt(self.tok, m, self.spec.max_prompt_length) for m in msgs], msgs

    def rollout(self, prompts: list[list[int]], min_new_tokens: int = 0) -> Samples:
        """G sampled completions per prompt (token id lists); completion i continues prompt i // G."""
        s = self.spec
        kw = dict(n=s.num_generations, max_new_tokens=s.max_completion_length, eos_ids=self.eos_ids,
                  pad_id=self.pad_id, temperature=s.temperature, top_p=s.top_p, generator=self.generator,
                  min_new_tokens=min_new_tokens)  # fmt: skip
        return self.sampler.sample(prompts, **kw)

    def score(self, rows: list[dict], msgs: list, texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        """Per-function rewards (N, F), NaN where a function returned None. Raises naming the failing function."""
        G = self.spec.num_generations
        names = dict.fromkeys([*self.columns, *(k for r in rows for k in r)])
        cols = {k: [r.get(k) for r in rows for _ in range(G)] for k in names if k != "prompt"}
        prompts = [m for m in msgs for _ in range(G)]
        completions = [
            [{"role": "assistant", "content": t}] for t in texts
        ]  # conversational, as TRL passes them
        out = torch.full((len(texts), len(self.fns)), math.nan)
        for j, (name, fn) in enumerate(zip(self.names, self.fns, strict=True)):
            try:
                vals = list(fn(prompts=prompts, completions=completions, completion_ids=ids, **cols))
            except Exception as e:
                raise RewardFunctionError(name, e) from e
            if len(vals) != len(texts):
                raise RewardFunctionError(
                    name, ValueError(f"returned {len(vals)} values for {len(texts)} completions")
                )
            for i, v in enumerate(vals):
                if v is not None:
                    if not math.isfinite(float(v)):
                        raise NonFiniteError(f"reward function {name} returned {v} for completion {i}")
                    out[i, j] = float(v)
        return out

    def _logps(self, model, batch: dict, entropy: bool = False):
        proj = self.proj if model is self.model else None
        return completion_logps(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                self.spec.num_generations, self.spec.temperature, entropy, proj,
                                self.fused)  # fmt: skip

    @torch.no_grad()
    def _ref_logps(self, batch: dict) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logps(self.ref_model, batch)[0]
        with self.model.disable_adapter():  # the reference is the base model: the adapter switched off
            return self._logps(self.model, batch)[0]

    def train_on(self, batch: dict) -> dict[str, float]:
        """μ optimizer passes over one scored batch; returns the metrics averaged over the passes."""
        s = self.spec
        old = ref = None
        if s.num_iterations > 1:
            with torch.no_grad():
                old = self._logps(self.model, batch)[0]
        if s.beta > 0:
            ref = self._ref_logps(batch)
        sums: dict[str, float] = {}
        for i in range(s.num_iterations):
            lr = self.scheduler.get_last_lr()[0]
            logps, ent = self._logps(self.model, batch, entropy=True)
            if i == 0 and "sampling_logps" in batch:  # the weights that sampled, scored by the trainer
                now = logps.detach() if old is None else old
                gap = sampling_gap(batch["sampling_logps"], now, batch["mask"])
            loss, m = policy_loss(logps, old, ref, batch["advantages"], batch["mask"], loss_type=s.loss_type,
                                  beta=s.beta, epsilon=s.epsilon, epsilon_high=s.epsilon_high,
                                  max_completion_length=s.max_completion_length)  # fmt: skip
            if not torch.isfinite(loss):
                raise NonFiniteError(f"loss is {loss.item()} at step {self.step_count + 1}")
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(
                self.params, s.max_grad_norm if s.max_grad_norm > 0 else math.inf
            )
            if not torch.isfinite(norm):
                raise NonFiniteError(f"gradient norm is {norm.item()} at step {self.step_count + 1}")
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            mask = batch["mask"].to(ent.dtype)
            m |= {"loss": loss.detach(), "grad_norm": norm, "learning_rate": torch.tensor(lr),
                  "entropy": (ent * mask).sum() / mask.sum().clamp(min=1.0)}  # fmt: skip
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) / s.num_iterations
        self.sampler.refresh(adapter=True, everything=not s.use_lora)
        return sums | (gap if "sampling_logps" in batch else {})

    # --- one step ----------------------------------------------------------------------------------------------
    def step(self, rows: list[dict], min_new_tokens: int = 0) -> StepResult:
        """Rollout, rewards, advantages and μ updates on `rows` (prompts_per_step task rows)."""
        from ..rewards import prompt_text

        s, G = self.spec, self.spec.num_generations
        t0 = time.perf_counter()
        prompts, msgs = self.encode(rows)
        samples = self.rollout(prompts, min_new_tokens)
        t1 = time.perf_counter()
        lengths = samples.mask.sum(1)  # (B,)
        ids = [row[:n].tolist() for row, n in zip(samples.ids, lengths.tolist(), strict=True)]
        texts = self.tok.batch_decode(ids, skip_special_tokens=True)
        per_func = self.score(rows, msgs, texts, ids)  # (B, F)
        total = weighted_rewards(per_func, self.weights)  # (B,) numpy
        adv, zero_std = group_advantages(total, G, s.scale_rewards)
        t2 = time.perf_counter()
        mask = samples.mask
        if s.mask_truncated_completions:
            mask = mask * (~samples.truncated)[:, None].long()
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id, self.device)  # (P, L), for the forward
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": samples.ids,
                 "mask": mask, "advantages": torch.from_numpy(adv).to(self.device),
                 "sampling_logps": samples.logps}  # fmt: skip
        train = self.train_on(batch)
        t3 = time.perf_counter()
        self.step_count += 1
        m: dict[str, float] = {"reward": float(nanmean(total)), "reward_std": float(nanstd(total))}
        for j, name in enumerate(self.names):
            m[f"rewards/{name}/mean"] = float(nanmean(per_func[:, j]))
            m[f"rewards/{name}/std"] = float(nanstd(per_func[:, j]))
        lf = lengths.float()
        m |= {"frac_reward_zero_std": float(zero_std.mean()), "completions/mean_length": float(lf.mean()),
              "completions/min_length": float(lf.min()), "completions/max_length": float(lf.max()),
              "completions/clipped_ratio": float(samples.truncated.float().mean()), **train,
              "step_time": t3 - t0, "time/generation": t1 - t0, "time/rewards": t2 - t1,
              "time/training": t3 - t2}  # fmt: skip
        scores = [[None if math.isnan(v) else v for v in row] for row in per_func.tolist()]
        totals, advs, lens = np.nan_to_num(total).tolist(), adv.tolist(), lengths.tolist()
        cut = samples.truncated.tolist()
        episodes = [
            Episode(
                step=self.step_count,
                group=i // G,
                prompt=prompt_text(msgs[i // G]),
                completion=texts[i],
                rewards=dict(zip(self.names, scores[i], strict=True)),
                reward=totals[i],
                advantage=advs[i],
                length=lens[i],
                truncated=cut[i],
            )  # fmt: skip
            for i in range(len(texts))
        ]
        return StepResult(step=self.step_count, episodes=episodes, metrics=m)

    def _load_weights(self, path: Path) -> None:
        """Load what save_adapter wrote: the LoRA adapter (peft), or the full model's safetensors."""
        if self.spec.use_lora:
            from peft import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_peft_weights(str(path), device=str(self.device)))
            return
        from safetensors.torch import load_file

        weights = {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
        unexpected = self.model.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected or not weights:
            raise ValueError(f"checkpoint {path} does not hold this model's weights ({unexpected[:3]})")

    # --- saving --------------------------------------------------------------------------------------------------
    def save_adapter(self, path: Path) -> None:
        """The LoRA adapter (or the full model) and the tokenizer, loadable with peft / transformers."""
        self.model.save_pretrained(str(path))
        self.tok.save_pretrained(str(path))

    def save_checkpoint(self, path: Path) -> None:
        """The adapter (the weights a resume loads back) plus optimizer, schedule, sampling RNG and step count."""
        self.save_adapter(path)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "generator": self.generator.get_state(), "step": self.step_count}  # fmt: skip
        torch.save(state, Path(path) / _STATE)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(Path(path) / _STATE, map_location="cpu", weights_only=True)  # no pickled code
        self._load_weights(Path(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.sampler.refresh(adapter=True, everything=True)
