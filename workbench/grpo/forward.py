"""Per-token log-probs of completions under the policy, the prompt computed once per group.

Why by hand: the G completions of a group share their prompt, and HF's forward recomputes that prompt G times
(forward and backward). Here, for Llama-style decoders, each layer runs its token-wise parts (norms, projections,
MLP) on one flat batch of [the P prompts once] + [the B = P × G completions], and attention lets each completion
attend to its prompt's keys and values repeated G times. Autograd sums the G gradients that flow back into the
shared prompt, so log-probs and gradients equal those of the full forward. The projections are the model's own
modules (peft LoRA wrappers included), so LoRA, dropout and full fine-tuning behave as in transformers. Logits are
computed only at completion positions, and each completion's last token, which predicts nothing, is not fed. Other
architectures use the HF forward with `logits_to_keep`.
"""

from __future__ import annotations

import inspect

import torch

from . import cpu_autograd
from .fused import FusedProjections
from .llama import base_of, supports

CHUNK_BYTES = 1 << 24  # fp32 logits per chunk: 16 MB


def _token_logps(
    hidden: torch.Tensor, ids: torch.Tensor, head, vocab: int, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) (B, T) from hidden states (B, T, h) at temperature, and the entropy (B, T) without gradient.

    In row chunks of at most 16 MB of fp32 logits. Why: a (B·T, V) fp32 block is 50 MB at 8 × 32 tokens and a
    vocabulary of 49k; above 32 MB glibc maps and unmaps every such buffer, so each step pays page faults and
    zeroing for the logits, their softmax and their gradient (measured: a third of the training phase in system
    time). Chunks stay on the reused heap, and the peak memory no longer grows with B·T·V.
    """
    B, T, h = hidden.shape
    flat, flat_ids = hidden.reshape(B * T, h), ids.reshape(B * T)
    rows = max(1, CHUNK_BYTES // (4 * vocab))
    outs, ents = [], []
    for i in range(0, B * T, rows):
        logp, ent = cpu_autograd.token_logps(
            head(flat[i : i + rows]), flat_ids[i : i + rows], temperature, entropy
        )
        outs.append(logp)
        ents.append(ent)
    out = torch.cat(outs).view(B, T)
    return out, (torch.cat(ents).view(B, T) if entropy else None)


def _vocab(base) -> int:
    return base.get_output_embeddings().weight.shape[0]


def completion_logps(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    group_size: int,
    temperature: float = 1.0,
    entropy: bool = False,
    proj: FusedProjections | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T), entropies (B, T) or None) of each completion token given its prompt and earlier tokens.

    prompt_ids, prompt_mask (P, L): left-padded prompts; completion_ids (B, T) with B = P × group_size, completion i
    continuing prompt i // group_size; tokens after a completion's end may be anything (they only see the past).
    fused: whether the shared-prompt path applies (`llama.supports(model)`, which walks the modules: a caller that
    asks every step passes its answer).
    """
    if supports(model) if fused is None else fused:
        return _shared_prompt_logps(
            model, prompt_ids, prompt_mask, completion_ids, group_size, temperature, entropy, proj
        )
    return hf_logps(model, prompt_ids, prompt_mask, completion_ids, group_size, temperature, entropy)


def hf_logps(model, prompt_ids, prompt_mask, completion_ids, group_size, temperature, entropy):
    """completion_logps through the model's own HF forward, the prompt repeated G times: the path for other
    architectures, and the reference the shared-prompt path is tested against.

    Positions count real tokens only, as `generate` counts them when it samples. Why: a left-padded prompt would
    otherwise be scored at positions shifted by its padding, which changes the function of a model with absolute
    position embeddings (GPT-2: log-probs off by up to ~0.3 on a tiny one) though not of a rotary one.
    """
    T = completion_ids.shape[1]
    ids = torch.cat([prompt_ids.repeat_interleave(group_size, 0), completion_ids], dim=1)  # (B, L+T)
    att = torch.cat([prompt_mask.repeat_interleave(group_size, 0), torch.ones_like(completion_ids)], dim=1)
    base = base_of(model)
    # the decoder only (`model` in Llama, `transformer` in GPT-2): the head runs on the T positions below
    decoder = base.base_model
    kw = {"position_ids": (att.cumsum(1) - 1).clamp(min=0)}  # (B, L+T)
    if "position_ids" not in inspect.signature(decoder.forward).parameters:
        kw = {}
    out = decoder(input_ids=ids, attention_mask=att, **kw)
    hidden = out.last_hidden_state[:, -T - 1 : -1]  # (B, T, h): position t predicts completion token t
    head = base.get_output_embeddings()
    return _token_logps(hidden, completion_ids, head, _vocab(base), temperature, entropy)


def _norm(norm, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm in one native pass each way where it can run (`cpu_autograd.rms_norm`), else
    F.rms_norm; HF's own runs ~7 ops. The same maths."""
    return cpu_autograd.rms_norm(x, norm.weight, norm.variance_epsilon)


def _shared_prompt_logps(
    model, prompt_ids, prompt_mask, completion_ids, group_size, temperature, entropy, proj
):
    base = base_of(model)
    inner, cfg = base.model, base.config
    P, L = prompt_ids.shape
    B, T = completion_ids.shape
    # the last completion token predicts nothing and nothing attends to it: it is not fed (unless it is the only one)
    fed = completion_ids[:, :-1] if T > 1 else completion_ids
    T1 = fed.shape[1]
    G, dev = group_size, prompt_ids.device
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    prompt_ok = prompt_mask.bool()  # (P, L)
    lens = prompt_ok.sum(1)  # (P,)
    pos_p = (prompt_ok.long().cumsum(1) - 1).clamp(min=0)  # (P, L) real positions, pads at 0
    pos_c = lens.repeat_interleave(G)[:, None] + torch.arange(T1, device=dev)[None]  # (B, T1)
    x = inner.embed_tokens(torch.cat([prompt_ids.reshape(-1), fed.reshape(-1)]))  # (P·L + B·T1, h)
    cos, sin = inner.rotary_emb(x[None], torch.cat([pos_p.reshape(-1), pos_c.reshape(-1)])[None])
    cos, sin = cos[0][:, None], sin[0][:, None]  # (N, 1, d): one row per flat token, broadcast over heads
    # Masks, True = may attend. Pad query rows see themselves so no softmax row is empty (NaN).
    eye = torch.eye(L, dtype=torch.bool, device=dev)
    mask_p = (
        torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None] & prompt_ok[:, None]
    ) | eye  # (P, L, L)
    causal_c = torch.ones(T1, T1, dtype=torch.bool, device=dev).tril()
    mask_c = torch.cat([prompt_ok.repeat_interleave(G, 0)[:, None].expand(B, T1, L),
                        causal_c[None].expand(B, T1, T1)], dim=2)  # (B, T1, L+T1)  # fmt: skip
    mask_p, mask_c = mask_p[:, None], mask_c[:, None]
    split = P * L
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        h = _norm(layer.input_layernorm, x)
        q, k, v = proj(i, 0, h) if proj else (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h))
        qk = torch.cat([q.view(-1, H, d), k.view(-1, K, d)], dim=1)  # (N, H+K, d): rotated in one go
        qk = cpu_autograd.rope(qk, cos, sin)
        q, k, v = qk[:, :H], qk[:, H:], v.view(-1, K, d)
        qp, kp, vp = (t[:split].view(P, L, -1, d).transpose(1, 2) for t in (q, k, v))  # (P, heads, L, d)
        qc, kc, vc = (t[split:].view(B, T1, -1, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, T1, d)
        out_p = cpu_autograd.attention(qp, kp, vp, mask_p)
        kc = torch.cat([kp.repeat_interleave(G, 0), kc], dim=2)  # (B, K, L+T1, d): the shared prompt, G times
        vc = torch.cat([vp.repeat_interleave(G, 0), vc], dim=2)
        out_c = cpu_autograd.attention(qc, kc, vc, mask_c)
        o = torch.cat(
            [out_p.transpose(1, 2).reshape(split, H * d), out_c.transpose(1, 2).reshape(B * T1, H * d)]
        )
        x = x + (proj(i, 1, o)[0] if proj else attn.o_proj(o))
        h = _norm(layer.post_attention_layernorm, x)
        if proj:
            gate, up = proj(i, 2, h)
            x = x + proj(i, 3, cpu_autograd.silu_mul(gate, up))[0]
        else:
            x = x + layer.mlp(h)
    x = _norm(inner.norm, x)
    last_p = x[:split].view(P, L, -1)[:, -1].repeat_interleave(G, 0)  # (B, h): predicts completion token 0
    hidden = torch.cat([last_p[:, None], x[split:].view(B, T1, -1)[:, : T - 1]], dim=1)  # (B, T, h)
    head = proj.head if proj else base.lm_head
    return _token_logps(hidden, completion_ids, head, _vocab(base), temperature, entropy)
