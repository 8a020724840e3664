"""What a sampler returns (`Samples`), and the plain sampler over `model.generate` (`GenerateSampler`): what every
architecture can use, and what the fused sampler (sampler.py) is checked against (selfcheck.py). Both samplers
have the same `refresh()` and `sample()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Samples:
    """Completions of one rollout: `ids[i]` and `mask[i]` for sequence i (prompt i // n), right-padded."""

    ids: torch.Tensor  # (B, T) token ids, pad after the end
    mask: torch.Tensor  # (B, T) 1 up to and including the first EOS
    truncated: torch.Tensor  # (B,) True when no EOS was produced within max_new_tokens
    # (B, T) log-prob of each sampled token at the sampling temperature (before the top-p cut), 0 after the end:
    # the engine compares it with the trainer's log-probs (the sampler–trainer gap)
    logps: torch.Tensor


def finish(out: torch.Tensor, eos: torch.Tensor, logps: torch.Tensor) -> Samples:
    """Cut after the first EOS (kept, as TRL keeps it) and drop all-pad columns at the end."""
    is_eos = torch.isin(out, eos)
    has = is_eos.any(dim=1)
    first = torch.where(has, is_eos.int().argmax(dim=1), torch.full_like(has, out.shape[1], dtype=torch.long))
    idx = torch.arange(out.shape[1], device=out.device)[None]
    mask = (idx <= first[:, None]).long()
    T = int(mask.sum(dim=1).max())
    return Samples(ids=out[:, :T].clone(), mask=mask[:, :T].clone(), truncated=~has,
                   logps=(logps[:, :T] * mask[:, :T]).clone())  # fmt: skip


class GenerateSampler:
    """The sampler contract on `model.generate`, for architectures FusedLlamaSampler does not cover."""

    def __init__(self, model):
        self.model = model

    def refresh(self, adapter: bool = True, everything: bool = False) -> None:
        """Nothing to copy: generate reads the live weights."""

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        eos_ids: list[int],
        pad_id: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        min_new_tokens: int = 0,
    ) -> Samples:
        """n completions of each prompt, as FusedLlamaSampler.sample."""
        model = self.model
        dev = next(model.parameters()).device
        if generator is not None:  # generate has no generator argument: seed the global RNG from ours
            torch.manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            )
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :], att[i, L - len(p) :] = torch.tensor(p), 1
        ids, att = ids.repeat_interleave(n, 0).to(dev), att.repeat_interleave(n, 0).to(dev)
        kwargs = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_p": top_p}
        )
        from transformers import LogitsProcessorList

        record = _LogpRecorder(temperature, L)
        was_training = model.training
        model.eval()
        full = model.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            top_k=None,
            logits_processor=LogitsProcessorList([record]),
            **kwargs,
        )
        model.train(was_training)
        out, logps = full[:, L:], record.logps(full)
        if out.shape[1] == 0:
            out = torch.full((ids.shape[0], 1), pad_id, dtype=torch.long, device=dev)
            logps = torch.zeros(out.shape, device=dev)
        return finish(out, torch.tensor(eos_ids, device=dev), logps)


class _LogpRecorder:
    """A logits processor that keeps the log-prob of each token generate picks, at `temperature`, one (B, V) step
    at a time: it sees step t's logits (after min_new_tokens' EOS ban, before temperature and top-p) and, on the
    next call, the token that was picked from them. Why not `output_logits=True`: that keeps every step's (B, V)."""

    def __init__(self, temperature: float, prompt_len: int):
        self.temperature, self.prompt_len = temperature, prompt_len
        self.last: torch.Tensor | None = None  # (B, V) log-probs of the step whose token is not yet known
        self.picked: list[torch.Tensor] = []  # (B,) per step

    def _take(self, ids: torch.Tensor) -> None:
        if self.last is not None and ids.shape[1] > self.prompt_len + len(self.picked):
            self.picked.append(self.last.gather(1, ids[:, -1:])[:, 0])
            self.last = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids)
        self.last = (scores.float() / self.temperature).log_softmax(dim=-1)
        return scores

    def logps(self, full: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the generated tokens `full[:, prompt_len:]`."""
        self._take(full)
        if not self.picked:
            return torch.zeros(full.shape[0], 0, device=full.device)
        return torch.stack(self.picked, dim=1)
