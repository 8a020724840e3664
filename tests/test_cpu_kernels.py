"""The native CPU kernels (`workbench/grpo/cpu_kernels.py` and `cpu_autograd.py` over `cpu_decode.c`, `cpu_train.c`
and `cpu_attn.c`): the matrix product equals F.linear on awkward shapes; a whole sample() through the native decode
step gives the HF model's own logits on shapes the parity suite's models do not have (head sizes that are and are
not multiples of 16, odd widths, GQA and MHA, biases); the native draw is torch's draw; it is the path a bf16 run
takes where it can run; where it cannot be built, the sampler falls back to its torch path (logged) and still
samples, and that path keeps to HF and TRL; and the training forward's native parts (SiLU·up, RMSNorm, rotary,
attention, token log-probs with the entropy, a fused projection group with its LoRA terms) equal torch's, forward
and backward. The parity suite (`test_engine_parity.py`) covers them too: its bf16 cases run on them.

Skipped, saying why, on a machine where they cannot run (no AVX512-BF16, no C compiler).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_engine_parity import (
    _batch,
    check,
    make_engine,
    trl_trainer,  # noqa: F401  (the fixture `trl`: a TRL trainer per module)
)

from workbench.grpo import cpu_autograd, cpu_kernels
from workbench.grpo import sampler as sampler_mod
from workbench.grpo.sampler import FusedLlamaSampler

LIB = cpu_kernels.load()
native = pytest.mark.skipif(LIB is None, reason=f"native CPU decode off here: {cpu_kernels._why}")
PAD, EOS = 0, 2


@native
@pytest.mark.parametrize(
    "M,N,K", [(1, 1, 2), (8, 48, 64), (5, 17, 33), (9, 100, 7), (20, 49, 576), (3, 96, 1), (17, 100, 1536)]
)  # the last weight is over 256 KB: streamed tile by tile (the others go row block by row block)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_f_linear(M, N, K, bias):
    gen = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=gen).bfloat16()
    w = (torch.randn(N, K, generator=gen) / K**0.5).bfloat16()
    b = torch.randn(N, generator=gen).bfloat16() if bias else None
    got = cpu_kernels.linear(x, cpu_kernels.pack(w), N, K, b)
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    ref = F.linear(x, w, b)
    assert got.shape == (M, N) and got.dtype == torch.bfloat16
    # both round one fp32 sum to bf16 (8 significant bits): each within 2 bf16 steps of the exact value
    assert (got.double() - exact).abs().max() <= 2**-7 * (exact.abs().max() + 1)
    assert (got.double() - ref.double()).abs().max() <= 2**-7 * (exact.abs().max() + 1)


def _config(name: str):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(num_hidden_layers=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=1,
                  eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    # head size 16 (the vector attention path), 4 query heads over 2, MLP width 75
    if name == "d16-gqa-odd-mlp":
        return LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=75, num_attention_heads=4,
                           num_key_value_heads=2, attention_bias=True, mlp_bias=True, **common)  # fmt: skip
    if name == "d32-mha-qwen2":  # head size 32, one KV head per query head, q/k/v biases
        return Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=96, num_attention_heads=2,
                           num_key_value_heads=2, tie_word_embeddings=False, **common)  # fmt: skip
    # width 50 (no multiple of 16), head size 10, 5 query heads over 1, odd vocabulary and MLP width
    return LlamaConfig(vocab_size=97, hidden_size=50, intermediate_size=33, num_attention_heads=5,
                       num_key_value_heads=1, tie_word_embeddings=True, **common)  # fmt: skip


def _model(name: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(name))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.3)
    return model.bfloat16().eval()


def _hf_logits(model, prompts, out, n):
    """The HF model's logits (B, T, V) at each sampled position, prompts left-padded, positions counting real
    tokens."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), PAD)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :], mask[i, L - len(p) :] = torch.tensor(p), 1
    ids = torch.cat([ids.repeat_interleave(n, 0), out], 1)
    mask = torch.cat([mask.repeat_interleave(n, 0), torch.ones_like(out)], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, L - 1 : -1].float()


@native
@pytest.mark.parametrize("name", ["d16-gqa-odd-mlp", "d32-mha-qwen2", "width50-d10"])
def test_native_sampling_gives_the_hf_models_logits(name, monkeypatch):
    model = _model(name)
    sampler = FusedLlamaSampler(model)
    assert sampler.weights.native  # bf16 on a CPU that can: the native path is the one taken
    calls, seen = [], []
    step = cpu_kernels.NativeDecode.__call__
    monkeypatch.setattr(
        cpu_kernels.NativeDecode, "__call__", lambda self, *a: calls.append(1) or step(self, *a)
    )
    pick = sampler_mod._pick
    monkeypatch.setattr(
        sampler_mod, "_pick", lambda logits, *a: seen.append(logits.clone()) or pick(logits, *a)
    )
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (k,), generator=gen).tolist() for k in (7, 4, 1)]
    T, n = 9, 3
    s = sampler.sample(
        prompts, n=n, max_new_tokens=T, eos_ids=[EOS], pad_id=PAD, generator=gen, min_new_tokens=T
    )
    assert len(calls) == T - 1  # every token after the first came from the native step
    ours = torch.stack(seen, 1)  # (B, T, V)
    lp = ours.log_softmax(-1).gather(2, s.ids[..., None])[..., 0]
    assert (lp - s.logps).abs().max() < 1e-5  # the log-probs it reports are those of its own logits
    ours[..., EOS] = 0.0  # min_new_tokens: the sampler set these to -inf before picking
    hf = _hf_logits(model, prompts, s.ids, n)
    exact = _hf_logits(model.float(), prompts, s.ids, n)  # the same weights in fp32: bf16's own error
    hf[..., EOS] = exact[..., EOS] = 0.0
    yardstick = (hf - exact).abs().max().item()
    err = (ours - hf).abs().max().item()
    # the parity suite's bound: within 4× what bf16 itself costs HF (a dropped bias or a wrong head is ≥ 10×)
    assert err <= 4 * yardstick, (err, yardstick)


@native
def test_only_an_all_bf16_model_with_sizes_it_handles_runs_natively():
    assert cpu_kernels.usable(_model("d16-gqa-odd-mlp"))
    assert not cpu_kernels.usable(_model("d16-gqa-odd-mlp").float())
    mixed = _model("d16-gqa-odd-mlp")
    mixed.model.norm.float()  # a model that keeps a norm in fp32: the step would read it as bf16
    assert not cpu_kernels.usable(mixed)
    from transformers import AutoModelForCausalLM, LlamaConfig

    big = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=1024, num_hidden_layers=1)  # fmt: skip
    assert not cpu_kernels.usable(AutoModelForCausalLM.from_config(big).bfloat16())  # heads over 512 wide


def test_without_a_compiler_the_sampler_falls_back_and_says_why(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_why", None)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))  # no cached build to find
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level("INFO", logger=cpu_kernels.log.name):
        assert cpu_kernels.load() is None
    assert "native CPU decode off" in caplog.text
    sampler = FusedLlamaSampler(_model("width50-d10"))
    assert not sampler.weights.native
    s = sampler.sample([[5, 6, 7]], n=2, max_new_tokens=4, eos_ids=[EOS], pad_id=PAD, min_new_tokens=4)
    assert s.ids.shape == (2, 4) and torch.isfinite(s.logps).all()


def test_a_failing_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_why", None)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
    assert cpu_kernels.load() is None
    assert cpu_kernels._why is not None
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left in the cache


@pytest.mark.parametrize("arch", ["llama_bias", "qwen2"])
def test_where_native_is_off_the_torch_path_equals_hf_and_trl(arch, trl, monkeypatch):
    # The parity suite's bf16 cases run natively where the native path runs (as here); other CPUs take the torch
    # path (oneDNN), held to the same checks here, before and after training.
    monkeypatch.setattr(cpu_kernels, "usable", lambda model: False)
    engine = make_engine(arch, "lora", "bf16")
    assert not engine.sampler.weights.native
    gen = torch.Generator().manual_seed(1)
    check(engine, arch, "lora", trl, gen, monkeypatch)
    for _ in range(2):
        engine.train_on(_batch(engine, arch, gen))
    check(engine, arch, "lora", trl, gen, monkeypatch)


@native
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_native_draw_is_the_torch_draw(temperature, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 1003, generator=gen) * 3
    logits[:, 7] = -float("inf")  # a banned token (min_new_tokens bans EOS so)
    # the softmax's distribution: 4000 native draws from one row
    row = logits[:1].expand(4000, -1).contiguous()
    toks, _ = sampler_mod._pick(row, temperature, 1.0, False, torch.Generator().manual_seed(1))
    p = (logits[0] / temperature).softmax(-1)
    top = p.argsort(descending=True)[:5]
    freq = torch.stack([(toks == t).float().mean() for t in top])
    assert (freq - p[top]).abs().max() < 4 * (p[top] * (1 - p[top]) / 4000).sqrt().max() + 1e-3
    ours = sampler_mod._pick(logits, temperature, 1.0, False, torch.Generator().manual_seed(9))
    monkeypatch.setattr(cpu_kernels, "load", lambda: None)
    theirs = sampler_mod._pick(logits, temperature, 1.0, False, torch.Generator().manual_seed(9))
    assert torch.equal(ours[0], theirs[0])  # the same uniform numbers pick the same tokens
    assert (ours[1] - theirs[1]).abs().max() < 1e-5
    assert not (ours[0] == 7).any()


@native
@pytest.mark.parametrize("n", [1, 15, 16, 1000, 336 * 1536])
def test_native_silu_mul_and_its_gradients_equal_torchs(n):
    gen = torch.Generator().manual_seed(n)
    g, u, dy = (torch.randn(n, generator=gen).mul(3).bfloat16() for _ in range(3))
    g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
    y1 = cpu_autograd.silu_mul(g1, u1)
    assert y1.grad_fn is not None and "SiluMul" in type(y1.grad_fn).__name__  # the native path was taken
    y1.backward(dy)
    g2, u2 = g.clone().requires_grad_(), u.clone().requires_grad_()
    y2 = F.silu(g2) * u2
    y2.backward(dy)
    for ours, theirs in ((y1, y2), (g1.grad, g2.grad), (u1.grad, u2.grad)):
        # one bf16 rounding apart at most (2^-8 relative), where the two round an fp32 value differently
        assert ((ours.float() - theirs.float()).abs() <= 2**-7 * theirs.float().abs() + 1e-6).all()


@native
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_native_token_logps_entropy_and_gradient_equal_torchs(temperature):
    gen = torch.Generator().manual_seed(4)
    z = (torch.randn(37, 1003, generator=gen) * 4).bfloat16()
    ids = torch.randint(1003, (37,), generator=gen)
    ids[:3] = torch.tensor([0, 1002, 992])  # both ends of the vocabulary, and a tail block's first entry
    g = torch.randn(37, generator=gen)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    lp1, ent1 = cpu_autograd.token_logps(z1, ids, temperature)
    assert "TokenLogp" in type(lp1.grad_fn).__name__  # the native path was taken
    lp1.backward(g)
    logp = (z2.float() / temperature).log_softmax(-1)
    lp2, ent2 = logp.gather(-1, ids[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
    lp2.backward(g)
    assert torch.allclose(lp1, lp2, rtol=1e-5, atol=1e-5) and torch.allclose(
        ent1, ent2.detach(), rtol=1e-4, atol=1e-4
    )
    assert _close(z1.grad, z2.grad)


def _close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 2**-7) -> bool:
    """Within bf16 rounding of each other, relative to the tensor's scale."""
    return bool((ours.float() - theirs.float()).abs().max() <= rel * theirs.float().abs().max() + 1e-6)


@native
@pytest.mark.parametrize("shape", [(336, 576), (5, 50), (2, 3, 64)])
def test_native_rms_norm_and_its_input_gradient_equal_torchs(shape):
    gen = torch.Generator().manual_seed(1)
    x, dy = (torch.randn(*shape, generator=gen).bfloat16() for _ in range(2))
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).bfloat16()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = cpu_autograd.rms_norm(x1, w, 1e-5)
    assert "RMSNorm" in type(y1.grad_fn).__name__  # the native path was taken
    y1.backward(dy)
    y2 = F.rms_norm(x2, shape[-1:], w, 1e-5)
    y2.backward(dy)
    assert _close(y1, y2) and _close(x1.grad, x2.grad, rel=2**-6)


@native
@pytest.mark.parametrize("heads,d", [(12, 64), (3, 10)])
def test_native_rope_and_its_gradient_equal_torchs(heads, d):
    from workbench.grpo.llama import apply_rope

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, heads, d, generator=gen).bfloat16()
    ang = torch.randn(7, 1, d, generator=gen)
    cos, sin = ang.cos().bfloat16(), ang.sin().bfloat16()
    dy = torch.randn(7, heads, d, generator=gen).bfloat16()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = cpu_autograd.rope(x1, cos, sin)
    assert "Rope" in type(y1.grad_fn).__name__
    y1.backward(dy)
    y2 = apply_rope(x2, cos, sin)
    y2.backward(dy)
    assert _close(y1, y2) and _close(x1.grad, x2.grad)


@native
def test_native_draw_at_the_ends_of_the_vocabulary():
    logits = torch.full((4, 1003), -30.0)
    logits[0, 0] = logits[1, 1002] = logits[2, 15] = logits[3, 16] = 30.0  # all the mass on one token
    tok, logp = sampler_mod._pick(logits, 1.0, 1.0, False, torch.Generator().manual_seed(0))
    assert tok.tolist() == [0, 1002, 15, 16] and logp.abs().max() < 1e-4


def _mask(N: int, Tq: int, S: int, gen: torch.Generator) -> torch.Tensor:
    """(N, 1, Tq, S): random, as left padding and causality leave it, every query row with a key to attend to."""
    m = torch.rand(N, 1, Tq, S, generator=gen) > 0.3
    m[..., torch.randint(S, (1,), generator=gen)] = True
    return m


@native
@pytest.mark.parametrize(
    "N,H,K,Tq,S,d",
    [
        (8, 9, 3, 32, 72, 64),
        (2, 9, 3, 40, 40, 64),
        (3, 4, 2, 7, 11, 10),
        (2, 6, 6, 5, 9, 34),
        (1, 8, 1, 3, 50, 16),
        (2, 4, 2, 1, 1, 8),
        (1, 2, 1, 70, 130, 128),
    ],
)
def test_native_attention_and_its_gradients_equal_torchs(N, H, K, Tq, S, d):
    """The bundled model's completion and prompt shapes, odd query and key counts, MHA, MQA, head sizes 8 to 128, one
    query over one key, and more keys than a tile's columns."""
    gen = torch.Generator().manual_seed(N * 100 + S)
    q = (
        torch.randn(N, Tq, H, d, generator=gen).bfloat16().transpose(1, 2)
    )  # a strided view, as the forward has
    k, v = (torch.randn(N, K, S, d, generator=gen).bfloat16() for _ in range(2))
    dout = torch.randn(N, H, Tq, d, generator=gen).bfloat16()
    mask = _mask(N, Tq, S, gen)
    grads = []
    for fn in (cpu_autograd.attention, cpu_autograd.torch_attention):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, mask)
        out.backward(dout)
        grads.append([out, *(t.grad for t in leaves)])
    assert "Attention" in type(grads[0][0].grad_fn).__name__  # the native path was taken
    for ours, theirs in zip(*grads, strict=True):
        assert _close(ours, theirs)


@native
def test_attention_falls_back_to_torch_where_the_kernel_does_not_run():
    gen = torch.Generator().manual_seed(3)
    mask = _mask(2, 4, 6, gen)
    for dtype, d in ((torch.float32, 8), (torch.bfloat16, 9)):  # fp32, an odd head size
        q = torch.randn(2, 4, 4, d, generator=gen).to(dtype).requires_grad_()
        k, v = (torch.randn(2, 2, 6, d, generator=gen).to(dtype) for _ in range(2))
        out = cpu_autograd.attention(q, k, v, mask)
        assert "Attention" not in type(out.grad_fn).__name__
        assert torch.equal(out, cpu_autograd.torch_attention(q, k, v, mask))


def _lora_group_torch(x, w, bias, terms):
    """What `fused.FusedProjections` computes with torch ops: the frozen product, then each part's LoRA term."""
    y = F.linear(x, w, bias)
    parts = list(y.split([B.shape[0] for _, B, _ in terms], dim=-1))
    xa = F.linear(x, torch.cat([A for A, _, _ in terms]).to(x.dtype))
    for i, (xa_i, (_, B, s)) in enumerate(
        zip(xa.split([A.shape[0] for A, _, _ in terms], -1), terms, strict=True)
    ):
        parts[i] = torch.addmm(parts[i], xa_i, (B * s).to(x.dtype).t())
    return torch.cat(parts, dim=-1)


@native
@pytest.mark.parametrize(
    "N,K,outs,r,bias",
    [(336, 576, (576, 192, 192), 16, False), (37, 576, (1536, 1536), 16, True), (336, 1536, (576,), 16, False),
     (5, 64, (40,), 6, True), (1, 32, (16, 48), 2, False)],
)  # fmt: skip
def test_native_lora_group_and_its_gradients_equal_the_torch_ops(N, K, outs, r, bias):
    from workbench.grpo.llama import prepack

    gen = torch.Generator().manual_seed(N + K + r)
    w = (torch.randn(sum(outs), K, generator=gen) * 0.05).bfloat16()
    b = torch.randn(sum(outs), generator=gen).bfloat16() if bias else None
    x0 = torch.randn(N, K, generator=gen).bfloat16()
    dy = torch.randn(N, sum(outs), generator=gen).bfloat16()
    terms = [
        (torch.randn(r, K, generator=gen) * 0.1, torch.randn(o, r, generator=gen) * 0.1, 2.0) for o in outs
    ]
    grads = []
    for native_path in (False, True):
        x = x0.clone().requires_grad_()
        leaves = [(A.clone().requires_grad_(), B.clone().requires_grad_(), s) for A, B, s in terms]
        if native_path:
            y = cpu_autograd.lora_group(x, prepack(w, 64), prepack(w.t().contiguous(), 64), b, leaves)
            assert type(y.grad_fn).__name__ == "_LoraGroupBackward"
        else:
            y = _lora_group_torch(x, w, b, leaves)
        y.backward(dy)
        grads.append((y.detach(), x.grad, [t.grad for A, B, _ in leaves for t in (A, B)]))
    (y0, dx0, g0), (y1, dx1, g1) = grads
    # the output, rounded once as torch.addmm rounds it: only the fp32 sums' order differs, so a rare entry is one
    # bf16 step (2^-7 of it) away
    assert (y1 != y0).float().mean() < 1e-3
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(dx1.float(), dx0.float(), rtol=0, atol=0)  # every product rounded as torch's
    for a, e in zip(g1, g0, strict=True):
        assert a.dtype == e.dtype == torch.float32 and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@native
def test_lora_group_leaves_what_it_cannot_run_to_torch():
    from workbench.grpo.llama import prepack

    w = torch.randn(8, 16).bfloat16()
    p, pt = prepack(w, 64), prepack(w.t().contiguous(), 64)
    odd = [(torch.randn(3, 16), torch.randn(8, 3), 1.0)]  # an odd rank: the packed pairs would read past it
    assert cpu_autograd.lora_group(torch.randn(4, 16).bfloat16(), p, pt, None, odd) is None
    even = [(torch.randn(2, 16), torch.randn(8, 2), 1.0)]
    assert cpu_autograd.lora_group(torch.randn(4, 16), p, pt, None, even) is None  # fp32 activations
    bf16_adapter = [(torch.randn(2, 16).bfloat16(), torch.randn(8, 2).bfloat16(), 1.0)]
    assert cpu_autograd.lora_group(torch.randn(4, 16).bfloat16(), p, pt, None, bf16_adapter) is None
    strided = torch.randn(4, 32).bfloat16()[:, :16]  # rows not contiguous
    assert cpu_autograd.lora_group(strided, p, pt, None, even) is None
    assert cpu_autograd.lora_group(torch.randn(4, 16).bfloat16(), p, pt, None, even) is not None


@native
def test_silu_mul_over_the_two_halves_of_one_product_reads_them_in_place():
    gu = torch.randn(37, 200).bfloat16().requires_grad_()
    dy = torch.randn(37, 100).bfloat16()
    grads = []
    for native_path in (True, False):
        gate, up = gu.split([100, 100], dim=-1)
        y = cpu_autograd.silu_mul(gate, up) if native_path else F.silu(gate) * up
        assert native_path is (type(y.grad_fn).__name__ == "_SiluMulRowsBackward")
        y.backward(dy)
        grads.append((y.detach(), gu.grad))
        gu.grad = None
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)


@native
@pytest.mark.parametrize(
    "N,K,r,row,total",
    [(576, 576, 16, 0, 960), (192, 576, 16, 768, 960), (37, 66, 6, 5, 50), (10, 33, 4, 0, 10)],
)
def test_merging_a_delta_into_the_packed_base_equals_packing_the_merged_weight(N, K, r, row, total):
    """The sampler's refresh adds each LoRA delta to the base packed once (`merge_packed`): the same panels, bit for
    bit, as packing the merged weight, and the other rows of a fused matrix untouched."""
    gen = torch.Generator().manual_seed(N + K + row)
    w = torch.randn(N, K, generator=gen).bfloat16()
    lora = (torch.randn(r, K, generator=gen), torch.randn(N, r, generator=gen) * 0.1, 2.0)
    other = torch.randn(total, K, generator=gen).bfloat16()  # the fused matrix's other parts
    merged, added, base = (cpu_kernels.empty_packed(total, K) for _ in range(3))
    for out in (merged, added):
        cpu_kernels.pack_rows(out, 0, other)
    cpu_kernels.pack_rows(merged, row, w, lora)
    cpu_kernels.pack_rows(base, row, w)
    cpu_kernels.merge_packed(added, base, row, K, lora)
    assert torch.equal(added, merged)
    x = torch.randn(3, K, generator=gen).bfloat16()
    got = cpu_kernels.linear(x, added, total, K, None)[:, row : row + N]
    A, B, s = lora
    want = F.linear(x, torch.addmm(w, B.bfloat16(), A.bfloat16(), alpha=s))
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
