"""Sampling for the rollout and for Compare: two samplers with the same `refresh()` and `sample()`, `make_sampler`
picks one.

- `FusedLlamaSampler`: a hand-written decode loop over merged, fused (and on a CPU packed) weights, with a static
  KV cache, for Llama-style decoders (`llama.supports`); on a GPU its decode step replays as a CUDA graph
  (`graphed.DecodeStep`); in bf16 on a CPU with AVX512-BF16 each step is one native call (`cpu_kernels`).
- `GenerateSampler`: the same contract over `model.generate` on the live (peft) model, for anything else.

Why not always `model.generate`: on a CPU a decode step at batch 8 is dispatch-bound, and HF generate over an unmerged
peft model runs ~20 small ops per linear layer (base matmul, LoRA A, LoRA B, scale, add, casts) plus its logits
processors. FusedLlamaSampler runs each layer as 4 matmuls over fused weights (q|k|v and gate|up concatenated, the
LoRA delta merged in, biases kept), the prompt is prefilled once and its KV cache expanded G times (all G completions
of a group share it), and the cache is preallocated. The weights are a separate copy (`merged.MergedWeights`),
refreshed after every optimizer step; training never reads them, so its log-probs always come from the trainable
model itself, and each sample carries its own log-probs so the engine can log how far the two are apart.

The fused sampler covers Llama-style decoders (Llama, Qwen2, Mistral without a sliding window in reach: see
`llama.unsupported`); anything else gets `GenerateSampler` (slower, same contract), with a log line saying why.

    sampler = make_sampler(model)
    samples = sampler.sample(prompt_id_lists, n=4, max_new_tokens=64, eos_ids=[2], pad_id=0, temperature=0.9)
    ... optimizer step ...
    sampler.refresh()       # the fused copy follows the updated weights (a no-op for GenerateSampler)
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import cpu_autograd, cpu_kernels
from .graphed import DecodeStep
from .llama import apply_rope, base_of, unsupported
from .merged import MergedWeights
from .samples import GenerateSampler, Samples, finish
from .selfcheck import checked_sampler

__all__ = ["FusedLlamaSampler", "GenerateSampler", "Sampler", "Samples", "make_sampler"]

log = logging.getLogger(__name__)


def make_sampler(model) -> Sampler:
    """The fused sampler where the architecture allows it, else `model.generate` (saying why, once per model)."""
    why = unsupported(model)
    if why is None:  # off the CPU, after a first-use check (logged when it fails)
        return checked_sampler(model, FusedLlamaSampler(model))
    log.warning("fused sampling and training forward off: %s. Sampling with model.generate and training through "
                "the model's own forward instead (slower, same results)", why)  # fmt: skip
    return GenerateSampler(model)


class FusedLlamaSampler:
    """Merged, fused weights of a Llama-style model (`merged.MergedWeights`) and a batched sampler over them."""

    graphs = True  # on CUDA, decode through a CUDA graph (`graphed.DecodeStep`); off after a failed capture
    # run the fixed-shape step that graphs capture on any device (tests set it on a CPU)
    static_decode = False

    def __init__(self, model):
        base = base_of(model)
        cfg = base.config
        self.model = model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.rotary = base.model.rotary_emb
        self.embed = base.model.embed_tokens.weight
        self.norm = base.model.norm.weight
        self.weights = MergedWeights(model)
        self.layers = self.weights.layers
        self._mm = self.weights.mm

    def refresh(self, adapter: bool = True, everything: bool = False) -> None:
        """Copy the model's current weights in (see `MergedWeights.refresh`)."""
        self.weights.refresh(adapter, everything)

    def _rope_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(length, device=self.embed.device)[None]
        cos, sin = self.rotary(self.embed[:1, None], pos)  # (1, L, d), in the weights' dtype
        return cos[0], sin[0]

    # --- the forward -------------------------------------------------------------------------------------------
    def _mlp_and_o(self, x, attn, lay):
        x = x + self._mm(attn, lay["o"], lay["o_b"])
        h = cpu_autograd.rms_norm(x, lay["ln2"].detach(), self.eps)
        g, u = self._mm(h, lay["gu"], lay["gu_b"]).chunk(2, dim=-1)
        return x + self._mm(cpu_autograd.silu_mul(g.contiguous(), u.contiguous()), lay["down"], lay["down_b"])

    def _prefill(self, ids, pos, key_ok, cos, sin, cache_k, cache_v, n):
        """Run the left-padded prompts (P, L); write their K/V, repeated n times, into the caches; last hidden."""
        P, L = ids.shape
        H, K, d = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(ids, self.embed)  # (P, L, h)
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
        mask = (causal[None] & key_ok[:, None, :]) | torch.eye(L, dtype=torch.bool, device=ids.device)[None]
        mask = mask[:, None]  # (P, 1, L, L); pad rows see themselves so no row is empty (NaN)
        c, s = cos[pos].view(P * L, 1, d), sin[pos].view(P * L, 1, d)  # one row per token
        for i, lay in enumerate(self.layers):
            # the elementwise parts natively where they run (`cpu_autograd`): torch's took ~30 of a 62 ms prefill
            h = cpu_autograd.rms_norm(x, lay["ln1"].detach(), self.eps)
            qkv = self._mm(h, lay["qkv"], lay["qkv_b"]).view(P * L, H + 2 * K, d)
            qk = cpu_autograd.rope(qkv[:, : H + K].contiguous(), c, s).view(P, L, H + K, d).transpose(1, 2)
            q, k = qk[:, :H], qk[:, H:]  # (P, heads, L, d)
            v = qkv.view(P, L, H + 2 * K, d)[:, :, H + K :].transpose(1, 2)
            cache_k[i][:, :, :L] = k.repeat_interleave(n, dim=0)
            cache_v[i][:, :, :L] = v.repeat_interleave(n, dim=0)
            if self.weights.native:  # the training forward's kernel (~3× less than SDPA's at 2 × 40 tokens)
                attn = cpu_autograd.attention(q, k, v, mask)
            else:
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != K)
            x = self._mlp_and_o(x, attn.transpose(1, 2).reshape(P, L, H * d), lay)
        return F.rms_norm(x[:, -1], x.shape[-1:], self.norm, self.eps)  # (P, h)

    def _decode(self, tok, cos_t, sin_t, slot, key_ok, cache_k, cache_v):
        """One token for every sequence: tok (B,), rope rows (B, 1, d), its cache slot (an int, or a (1,) tensor for
        the fixed-shape step); returns the last hidden (B, h)."""
        B = tok.shape[0]
        H, K, d = self.n_heads, self.n_kv, self.head_dim
        fixed = isinstance(slot, torch.Tensor)
        x = F.embedding(tok, self.embed)  # (B, h)
        mask = key_ok[:, None, None, :] if fixed else key_ok[:, None, None, : slot + 1]  # (B, 1, 1, S)
        for i, lay in enumerate(self.layers):
            h = F.rms_norm(x, x.shape[-1:], lay["ln1"], self.eps)
            qkv = self._mm(h, lay["qkv"], lay["qkv_b"]).view(B, H + 2 * K, d)
            qk = apply_rope(qkv[:, : H + K], cos_t, sin_t)  # q and k rotated in one go
            if fixed:  # a slot held in a device tensor, the whole cache attended (`graphed.DecodeStep`)
                cache_k[i].index_copy_(2, slot, qk[:, H:, None])
                cache_v[i].index_copy_(2, slot, qkv[:, H + K :, None])
                keys, values = cache_k[i], cache_v[i]
            else:
                cache_k[i][:, :, slot] = qk[:, H:]
                cache_v[i][:, :, slot] = qkv[:, H + K :]
                keys, values = cache_k[i][:, :, : slot + 1], cache_v[i][:, :, : slot + 1]
            # GQA for one query token: the n_rep query heads of a KV head act as n_rep "positions" of that head.
            q = qk[:, :H].reshape(B, K, H // K, d)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, K, H/K, d)
            x = self._mlp_and_o(x, attn.reshape(B, H * d), lay)
        return F.rms_norm(x, x.shape[-1:], self.norm, self.eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer over the last hidden (B, h): logits (B, V) in fp32."""
        return self._mm(hidden, self.weights.lm_head, self.weights.lm_head_bias).float()

    # --- sampling ----------------------------------------------------------------------------------------------
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
        """n completions of each prompt (token id lists); sequence i continues prompt i // n."""
        dev = self.embed.device
        P, B = len(prompts), len(prompts) * n
        L = max(len(p) for p in prompts)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        ids = torch.full((P, L), pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        ids = ids.to(dev)  # built on the host, copied once (not one small copy per prompt)
        pad = (L - lens)[:, None]  # (P, 1) left padding
        pos = (torch.arange(L, device=dev)[None] - pad).clamp(min=0)  # (P, L) real positions
        S = L + max_new_tokens
        cos, sin = self._rope_table(int(lens.max()) + max_new_tokens)
        graph = dev.type == "cuda" and self.graphs and max_new_tokens > 2
        fixed = graph or self.static_decode
        shape = (B, self.n_kv, S, self.head_dim)
        new = torch.zeros if fixed else torch.empty  # the fixed-shape step attends over unwritten slots too
        cache_k = [new(shape, dtype=self.embed.dtype, device=dev) for _ in self.layers]
        cache_v = [new(shape, dtype=self.embed.dtype, device=dev) for _ in self.layers]
        key_ok = torch.zeros(B, S, dtype=torch.bool, device=dev)
        key_ok[:, :L] = (torch.arange(L, device=dev)[None] >= pad).repeat_interleave(n, dim=0)
        eos = torch.tensor(eos_ids, device=dev)
        hidden = self._prefill(ids, pos, key_ok[::n, :L], cos, sin, cache_k, cache_v, n).repeat_interleave(
            n, 0
        )
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        logps = torch.zeros(B, max_new_tokens, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        next_pos = lens.repeat_interleave(n)  # (B,) position of the token about to be fed
        step = DecodeStep(self, cos, sin, next_pos, L, key_ok, cache_k, cache_v, fixed, graph)
        logits = self.logits(hidden)  # (B, V)
        for t in range(max_new_tokens):
            if t < min_new_tokens:
                logits[:, eos] = -float("inf")
            tok, logps[:, t] = _pick(logits, temperature, top_p, greedy, generator)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            out[:, t] = tok
            done = done | torch.isin(tok, eos)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            logits = step(tok)
        return finish(out, eos, logps)


def _pick(logits, temperature, top_p, greedy, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token (B,): argmax, or a sample at `temperature` from the top-p nucleus (as HF's warpers do); and
    its log-prob (B,) at `temperature` before the top-p cut, which is what the trainer scores it with."""
    native = not greedy and top_p >= 1.0 and logits.device.type == "cpu" and logits.dtype == torch.float32
    if native and cpu_kernels.load() is not None:  # one native pass: a rollout's draws 34 → 16 ms, then -7 ms
        return cpu_kernels.sample(logits, temperature, generator)
    logp = (logits / temperature).log_softmax(dim=-1)  # (B, V)
    if greedy:
        tok = logits.argmax(dim=-1)
        return tok, logp.gather(1, tok[:, None])[:, 0]
    logits = logp
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # keep at least the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    # Inverse-CDF sampling with one uniform number per row. Why not torch.multinomial: with a generator on a CPU it
    # draws an exponential variate for every vocabulary entry (~6 ms per call at 8 × 49k), a quarter of a rollout.
    cdf = logits.exp().double().cumsum(dim=-1)  # (B, V), unnormalised after a top-p cut
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=torch.float64)
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.shape[1] - 1)[:, 0]
    return tok, logp.gather(1, tok[:, None])[:, 0]


# same refresh() and sample(): the engine and Compare use either
Sampler = FusedLlamaSampler | GenerateSampler
