"""The training forward's elementwise parts and attention through the native CPU kernels (`cpu_train.c`,
`cpu_attn.c`), as autograd functions: the SiLU-gated MLP input, RMSNorm with a frozen weight, rotary embeddings,
GQA attention, and the log-probs of tokens from bf16 logits (with the softmax's entropy, without gradient). Each takes bf16 CPU tensors where the library
runs (`cpu_kernels.load`) and otherwise falls back to the torch ops it replaces, which compute the same function.

Why by hand: on a CPU each of these is several bf16 torch ops each way, every one a round trip through fp32 over
the whole activation; at the bundled model's training batch (336 rows) they cost ~0.45 ms (SiLU·up), ~0.7 ms
(RMSNorm) and ~0.4 ms (rotary) a call with their backward, about 120 calls a step, and attention (bmm, masking,
softmax) ~2.3 ms a layer. Natively one pass each way: the training phase 909 → 767 ms a step, then 807 → 772 ms
with attention, measured A/B (steps alternating in one process).

    y = silu_mul(gate, up)          # F.silu(gate) * up
    h = rms_norm(x, weight, eps)    # F.rms_norm(x, x.shape[-1:], weight, eps)
    qk = rope(qk, cos, sin)         # llama.apply_rope(qk, cos, sin), qk (N, heads, d), cos/sin (N, 1, d)
    o = attention(q, k, v, mask)    # softmax(q kᵀ / √d, masked) v, q (N, H, Tq, d), k/v (N, K, S, d)
    lp, ent = token_logps(z, ids, t)  # log_softmax(z.float() / t) at ids, and the entropy (no gradient)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_kernels import load
from .llama import apply_rope


def _bf16_cpu(*ts: torch.Tensor, contiguous: bool = True) -> bool:
    """Contiguous bf16 CPU tensors, and the library here: what the native elementwise kernels take."""
    ok = all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in ts)
    return ok and (not contiguous or all(t.is_contiguous() for t in ts)) and load() is not None


class _SiluMul(torch.autograd.Function):
    """silu(g) * u over contiguous bf16 CPU tensors in one native pass each way (torch runs 2 ops forward, 3 back,
    each a bf16 round trip through fp32: ~0.45 ms forward and ~0.45 ms back per layer at 336 × 1536)."""

    @staticmethod
    def forward(ctx, g, u):
        ctx.save_for_backward(g, u)
        y = torch.empty_like(g)
        load().wb_silu_mul(g.data_ptr(), u.data_ptr(), y.data_ptr(), g.numel(), torch.get_num_threads())
        return y

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        dy = dy.contiguous()
        dg, du = torch.empty_like(g), torch.empty_like(u)
        load().wb_silu_mul_backward(g.data_ptr(), u.data_ptr(), dy.data_ptr(), dg.data_ptr(), du.data_ptr(),
                                    g.numel(), torch.get_num_threads())  # fmt: skip
        return dg, du


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """F.silu(g) * u: natively for contiguous bf16 CPU tensors of one shape where the library runs, else torch."""
    if g.shape == u.shape and _bf16_cpu(g, u):
        return _SiluMul.apply(g, u)
    return F.silu(g) * u


class _RMSNorm(torch.autograd.Function):
    """HF's RMSNorm over the last dimension with a frozen weight, one native pass each way (F.rms_norm runs ~6 ops
    forward and ~10 back in bf16 on a CPU: ~1.5 ms a call at 336 × 576, 61 calls a step)."""

    @staticmethod
    def forward(ctx, x, w, eps):
        R, D = x.numel() // x.shape[-1], x.shape[-1]
        y, rstd = torch.empty_like(x), torch.empty(R)
        load().wb_rms_norm_fwd(x.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr(), R, D, eps,
                               torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        dy, dx = dy.contiguous(), torch.empty_like(x)
        load().wb_rms_norm_bwd(x.data_ptr(), w.data_ptr(), rstd.data_ptr(), dy.data_ptr(), dx.data_ptr(),
                               rstd.numel(), x.shape[-1], torch.get_num_threads())  # fmt: skip
        return dx, None, None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """F.rms_norm(x, x.shape[-1:], w, eps): natively for a frozen weight and contiguous bf16 CPU tensors."""
    if not w.requires_grad and _bf16_cpu(x, w):
        return _RMSNorm.apply(x, w, float(eps))
    return F.rms_norm(x, x.shape[-1:], w, eps)


class _Rope(torch.autograd.Function):
    """`llama.apply_rope` of x (N, heads, d) with cos/sin (N, 1, d), one native pass each way (torch: ~6 ops and
    their backward, ~0.55 ms a layer at 336 × 12 × 64)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope(x, cos, sin, False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rope(dy.contiguous(), cos, sin, True), None, None


def _rope(x, cos, sin, backward: bool) -> torch.Tensor:
    y = torch.empty_like(x)
    N, heads, d = x.shape
    load().wb_rope(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), y.data_ptr(), N, heads, d, int(backward),
                   torch.get_num_threads())  # fmt: skip
    return y


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`llama.apply_rope(x, cos, sin)` for x (N, heads, d), cos/sin (N, 1, d): natively where it can run."""
    shaped = x.dim() == 3 and cos.shape == sin.shape == (x.shape[0], 1, x.shape[2]) and x.shape[2] <= 512
    if shaped and not cos.requires_grad and not sin.requires_grad and _bf16_cpu(x, cos, sin):
        return _Rope.apply(x, cos, sin)
    return apply_rope(x, cos, sin)


class _Attention(torch.autograd.Function):
    """`attention` natively (`cpu_attn.c`): q (N, H, Tq, d), k and v (N, K, S, d), mask (N, Tq, S), all contiguous;
    the fp32 softmax is kept for the backward, as torch's softmax keeps its output."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        N, H, Tq, d = q.shape
        K, S = k.shape[1], k.shape[2]
        out, p = torch.empty_like(q), torch.empty(N, K, H // K * Tq, S)
        rc = load().wb_attn_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), mask.data_ptr(), N, H, K, Tq, S, d,
                                d**-0.5, out.data_ptr(), p.data_ptr(), torch.get_num_threads())  # fmt: skip
        if rc:
            raise MemoryError(f"native attention over {N} × {H} × {Tq} × {S}: out of memory")
        ctx.save_for_backward(q, k, v, p)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, p = ctx.saved_tensors
        (N, H, Tq, d), (K, S) = q.shape, k.shape[1:3]
        dout, dq, dk, dv = dout.contiguous(), torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        rc = load().wb_attn_bwd(dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), p.data_ptr(), N, H, K, Tq,
                                S, d, d**-0.5, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                torch.get_num_threads())  # fmt: skip
        if rc:
            raise MemoryError(f"native attention backward over {N} × {H} × {Tq} × {S}: out of memory")
        return dq, dk, dv, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention (N, H, Tq, d) of q over keys and values (N, K, S, d) (GQA: query head h reads KV head h // (H/K)),
    mask (N, 1, Tq, S) True where a query may attend; softmax in fp32, as HF's eager path.

    Natively for bf16 CPU tensors with an even head size (torch's bf16 bmm, masking and softmax cost ~2.3 ms a layer
    with their backward at 8 × 9 × 32 × 72, most of it per-op overhead on tiny matrices); else torch, not SDPA: for
    these short sequences its CPU flash kernel's backward costs ~2 ms a call.
    """
    N, H, Tq, d = q.shape
    K, S = k.shape[1], k.shape[2]
    if d % 2 == 0 and H % K == 0 and mask.shape == (N, 1, Tq, S) and _bf16_cpu(q, k, v, contiguous=False):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return _Attention.apply(q, k, v, mask.reshape(N, Tq, S).contiguous())
    return torch_attention(q, k, v, mask)


def torch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`attention` in torch ops (bf16 products, fp32 softmax)."""
    N, H, Tq, d = q.shape
    K, S = k.shape[1], k.shape[2]
    qg = q.reshape(N, K, (H // K) * Tq, d)  # the H // K query heads of each KV head, stacked (GQA)
    scores = (qg @ k.transpose(-1, -2)).float() * d**-0.5  # (N, K, r·Tq, S)
    scores = scores.view(N, K, H // K, Tq, S).masked_fill(~mask[:, :, None], float("-inf"))
    p = scores.softmax(dim=-1).to(v.dtype).view(N, K, (H // K) * Tq, S)
    return (p @ v).view(N, H, Tq, d)


class _TokenLogp(torch.autograd.Function):
    """`token_logps` natively (`cpu_train.c`): one pass over the bf16 logits each way, no fp32 copy of them."""

    @staticmethod
    def forward(ctx, z, ids, temperature):
        R, V = z.shape
        logp, lse, ent = torch.empty(R), torch.empty(R), torch.empty(R)
        load().wb_token_logp(z.data_ptr(), R, V, ids.data_ptr(), temperature, logp.data_ptr(), lse.data_ptr(),
                             ent.data_ptr(), torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(z, ids, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g, _):
        z, ids, lse = ctx.saved_tensors
        g, dz = g.float().contiguous(), torch.empty_like(z)
        R, V = z.shape
        load().wb_token_logp_bwd(z.data_ptr(), R, V, ids.data_ptr(), ctx.temperature, lse.data_ptr(), g.data_ptr(),
                                 dz.data_ptr(), torch.get_num_threads())  # fmt: skip
        return dz, None, None


def token_logps(
    z: torch.Tensor, ids: torch.Tensor, temperature: float, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) (R,) under the softmax of logits z (R, V) at `temperature`, in fp32 as torch's
    (z.float() / temperature).log_softmax(-1) gives them, and that softmax's entropy (R,) without gradient (None
    unless `entropy`).

    Natively for bf16 CPU logits: one pass each way (torch makes an fp32 copy of the logits, its log-softmax, and
    three more passes for the entropy: (R, V) temporaries of ~16 MB a chunk); else torch.
    """
    native = z.dim() == 2 and _bf16_cpu(z) and ids.dtype == torch.int64 and ids.device.type == "cpu"
    if native and (
        ids.numel() == 0 or int(ids.min()) >= 0 and int(ids.max()) < z.shape[1]
    ):  # else torch raises
        logp, ent = _TokenLogp.apply(z, ids.contiguous(), float(temperature))
        return logp, ent if entropy else None
    z = z.float()
    logp = (z if temperature == 1.0 else z / temperature).log_softmax(dim=-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, ids[:, None])[:, 0], ent
