"""The training forward's elementwise parts, attention and LoRA terms through the native CPU kernels
(`cpu_train.c`, `cpu_attn.c`, `cpu_decode.c`'s product), as autograd functions: the SiLU-gated MLP input, RMSNorm
with a frozen weight, rotary embeddings, GQA attention, the log-probs of tokens from bf16 logits (with the softmax's
entropy, without gradient), and a fused group of frozen projections with their LoRA adapters. Each takes bf16 CPU
tensors where the library runs (`cpu_kernels.load`) and otherwise falls back to the torch ops it replaces, which
compute the same function.

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
    y = lora_group(x, packed, packed_t, bias, [(A, B, s), ...])  # x Wᵀ + b + the LoRA terms; None: use torch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_kernels import OUT_ACC_BF16, OUT_ADD_BF16, OUT_BF16, OUT_F32, load
from .llama import apply_rope, packed_linear


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


class _SiluMulRows(torch.autograd.Function):
    """silu(gate) * up where gate | up are the two halves of each row of one fused product gu (R, 2I): read in
    place, and the gradient written as one (R, 2I) block, the fused product's own (no split, no cat)."""

    @staticmethod
    def forward(ctx, gu):
        ctx.save_for_backward(gu)
        R, I2 = gu.shape
        y = torch.empty(R, I2 // 2, dtype=gu.dtype)
        load().wb_silu_mul_rows(gu.data_ptr(), R, I2 // 2, y.data_ptr(), torch.get_num_threads())
        return y

    @staticmethod
    def backward(ctx, dy):
        (gu,) = ctx.saved_tensors
        dy, dgu = dy.contiguous(), torch.empty_like(gu)
        load().wb_silu_mul_rows_bwd(gu.data_ptr(), gu.shape[0], gu.shape[1] // 2, dy.data_ptr(), dgu.data_ptr(),
                                    torch.get_num_threads())  # fmt: skip
        return dgu


def _halves(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor | None:
    """The (R, 2I) block whose rows g and u (R, I) split in two halves (`lora_group`'s output), or None."""
    base = g._base
    if base is None or u._base is not base or base.dim() != 2 or g.dim() != 2 or not base.is_contiguous():
        return None
    rows, half = g.shape
    at = g.data_ptr() == base.data_ptr() and u.data_ptr() == base.data_ptr() + half * base.element_size()
    halves = g.stride() == u.stride() == (2 * half, 1) and u.shape == (rows, half)
    return base if at and halves and base.shape == (rows, 2 * half) else None


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """F.silu(g) * u: natively for contiguous bf16 CPU tensors of one shape, or the two halves of one fused product,
    where the library runs; else torch."""
    gu = _halves(g, u) if g.shape == u.shape else None
    if gu is not None and _bf16_cpu(gu):
        return _SiluMulRows.apply(gu)
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


class _LoraGroup(torch.autograd.Function):
    """`lora_group` natively: the frozen product through oneDNN's prepacked weights, the LoRA terms through
    `wb_linear` over the adapters packed per call (they change every optimizer step), their weight gradients over x
    and dy packed transposed (`wb_pack_t`). Each product rounds as torch's
    bf16 product rounds it: the tests find the same gradients, bit for bit, as the torch ops."""

    @staticmethod
    def forward(ctx, x, frozen, scales, *ab):
        p, pt, bias = frozen
        m, lib, th = len(scales), load(), torch.get_num_threads()
        As, Bs = ab[:m], ab[m:]
        N, K = x.shape
        y = packed_linear(x, p, bias)  # (N, out): the frozen part with its bias, rounded once as F.linear
        # the group's A's (R, K) and s·B's (out_i, r_i) in bf16 as torch casts them, each also transposed: a small
        # matrix is packed from its transpose (`_packed_t`)
        a = torch.cat([A.detach() for A in As]).to(torch.bfloat16)
        at = a.t().contiguous()
        sbs = [(B.detach() * s).to(torch.bfloat16) for B, s in zip(Bs, scales, strict=True)]
        sbts = [sb.t().contiguous() for sb in sbs]
        R, out = a.shape[0], y.shape[1]
        xa = torch.empty(N, R, dtype=torch.bfloat16)
        pa = _packed_t(at, 0, R)  # held in a name: a packed block must outlive its call
        lib.wb_linear(x.data_ptr(), N, K, pa.data_ptr(), R, K, None, xa.data_ptr(), R, OUT_BF16, th)
        col = off = 0
        # y_i += xa_i (s B_i)ᵀ in place, rounded once as torch.addmm rounds it
        for sb, sbt in zip(sbs, sbts, strict=True):
            (n_i, r), psb = sb.shape, _packed_t(sbt, 0, sb.shape[0])
            lib.wb_linear(xa.data_ptr() + 2 * off, N, R, psb.data_ptr(), n_i, r, None, y.data_ptr() + 2 * col, out,
                          OUT_ACC_BF16, th)  # fmt: skip
            col, off = col + n_i, off + r
        ctx.save_for_backward(x, xa, a, *sbs)
        ctx.pt, ctx.scales = pt, scales
        return y

    @staticmethod
    def backward(ctx, dy):
        x, xa, a, *sbs = ctx.saved_tensors
        lib, th = load(), torch.get_num_threads()
        dy = dy.contiguous()
        (N, K), (R, out) = x.shape, (a.shape[0], dy.shape[1])
        dxa = torch.empty(N, R, dtype=torch.bfloat16)
        xat = _rows_t(xa)  # xaᵀ: the rows wb_linear multiplies by dy's packed columns
        n2 = xat.shape[1]  # the token count the weight gradients sum over, even (a zero token pads it)
        dBs = []
        col = off = 0
        for sb, s in zip(sbs, ctx.scales, strict=True):
            (n_i, r), psbt = sb.shape, _packed_t(sb, 0, sb.shape[1])
            # dxa_i = dy_i (s B_i)
            lib.wb_linear(dy.data_ptr() + 2 * col, N, out, psbt.data_ptr(), r, n_i, None, dxa.data_ptr() + 2 * off, R,
                          OUT_BF16, th)  # fmt: skip
            # dB_iᵀ = xa_iᵀ dy_i, rounded as torch's bf16 product (fp32 out), then scaled as its cast and mul give it
            pdy, dbt = _packed_t(dy, col, n_i), torch.empty(r, n_i)
            lib.wb_linear(xat.data_ptr() + 2 * off * n2, r, n2, pdy.data_ptr(), n_i, N, None, dbt.data_ptr(), n_i,
                          OUT_F32, th)  # fmt: skip
            dBs.append(dbt.t().contiguous().mul_(s))  # one copy, scaled in place
            col, off = col + n_i, off + r
        # dA = dxaᵀ x for the whole group, one product; each part's rows its A's gradient
        dxat, px, dA = _rows_t(dxa), _packed_t(x, 0, K), torch.empty(R, K)
        lib.wb_linear(dxat.data_ptr(), R, n2, px.data_ptr(), K, N, None, dA.data_ptr(), K, OUT_F32, th)
        dAs = list(dA.split([sb.shape[1] for sb in sbs]))
        dx = None
        if ctx.needs_input_grad[0]:  # dx = dy Wᵀ (frozen) + dxa A
            dx, pat = packed_linear(dy, ctx.pt), _packed_t(a, 0, K)
            lib.wb_linear(dxa.data_ptr(), N, R, pat.data_ptr(), K, R, None, dx.data_ptr(), K, OUT_ADD_BF16,
                          th)  # fmt: skip
        return dx, None, None, *dAs, *dBs


def _packed_t(m: torch.Tensor, c0: int, C: int) -> torch.Tensor:
    """Columns c0..c0+C of the (R, ·) bf16 matrix m, transposed and packed for `wb_linear` (`wb_pack_t`): the
    right-hand matrix m[:, c0:c0+C]ᵀ of a product, or, for a small m, m's own packing from mᵀ."""
    R = m.shape[0]
    out = torch.empty(load().wb_packed_elems(C, R), dtype=torch.bfloat16)
    load().wb_pack_t(m.data_ptr(), R, m.shape[1], c0, C, out.data_ptr(), torch.get_num_threads())
    return out


def _rows_t(m: torch.Tensor) -> torch.Tensor:
    """mᵀ (C, R) of m (R, C), with a zero column when R is odd: the left-hand rows of a product that sums over m's
    rows in pairs (`wb_linear` reads its inputs in pairs)."""
    R, C = m.shape
    out = torch.empty(C, R + R % 2, dtype=m.dtype)
    out[:, :R] = m.t()
    if R % 2:
        out[:, R] = 0
    return out


def lora_group(
    x: torch.Tensor, packed: torch.Tensor, packed_t: torch.Tensor, bias: torch.Tensor | None, terms: list
) -> torch.Tensor | None:
    """x Wᵀ + bias + Σ_i xa_i (s_i B_i)ᵀ placed in part i's columns, with xa = x [A_1; …; A_m]ᵀ: a fused group of
    projections (W prepacked by `llama.prepack`, and Wᵀ for the input gradient) with one LoRA adapter (A_i, B_i,
    s_i) on each part, in bf16 as `fused.FusedProjections` computes it with torch ops. None where the native kernels
    cannot run it (then the caller runs those ops): x must be a contiguous bf16 CPU matrix, the adapters fp32, and
    every width even.

    Why by hand: in torch these are 4–12 small bf16 products a group each way (x Aᵀ, xa Bᵀ per part, and their
    backward), each ~25–70 µs of oneDNN's fixed cost for a few MFLOP, plus the casts and autograd nodes around them:
    ~150 ms of a ~600 ms training forward and backward on the bundled model. Natively the training phase took
    ~30 ms (4 %) less a step (A/B, steps alternating in one process).
    """
    shapes = [(A.shape, B.shape) for A, B, _ in terms]
    even = all(d % 2 == 0 for sa, sb in shapes for d in (*sa, *sb))
    if x.dim() != 2 or not even or not _bf16_cpu(x) or packed is None or packed_t is None:
        return None
    if any(
        A.dtype != torch.float32 or B.dtype != torch.float32 or A.device.type != "cpu" for A, B, _ in terms
    ):
        return None  # fp32 adapters (peft's default): their gradients come back in fp32, as the torch ops give them
    scales = tuple(float(s) for _, _, s in terms)
    return _LoraGroup.apply(
        x, (packed, packed_t, bias), scales, *[A for A, _, _ in terms], *[B for _, B, _ in terms]
    )
