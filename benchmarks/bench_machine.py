"""The machine's limits that the engine benchmark (`bench_engine.py`) reports beside its measured step times.

    from bench_machine import matmul_peak, copy_bandwidth, train_flops, streamed_bytes

- `matmul_peak(dtype)`: the best GFLOP/s of a square matmul, the ceiling for the training phase.
- `copy_bandwidth()`: GB/s of a large tensor copy, the ceiling for weight streaming.
- `streamed_bytes(sampler)`: the bytes one decode step reads (every matrix the sampler multiplies by), so the
  generation floor is new tokens × streamed_bytes / bandwidth.
- `train_flops(...)`: FLOPs of one training forward+backward of the engine.
Each takes a device: CPU figures are what this project measures; a CUDA device is timed with synchronisation.
"""

from __future__ import annotations

import time


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype, n: int = 2048, reps: int = 8, device: str = "cpu") -> float:
    """Best-of-`reps` GFLOP/s of an n×n @ n×n matmul in `dtype`."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up (oneDNN primitive creation, cuBLAS handle)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def copy_bandwidth(mbytes: int = 512, reps: int = 5, device: str = "cpu") -> float:
    """Best-of-`reps` GB/s of `dst.copy_(src)` over `mbytes` MB, counted as bytes read + bytes written.

    Why a copy: a decode step streams every weight matrix from memory once, as a copy streams its source; 512 MB
    is far beyond any cache, so this is DRAM bandwidth as torch's threads see it (the same threads as the engine).
    """
    import torch

    src = torch.ones(mbytes << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() / best / 1e9


def streamed_bytes(sampler) -> int:
    """Bytes of the matrices one decode step of the fused sampler reads: every layer's fused projections and the
    output layer (norm weights and the KV cache are left out: under 1 % at these lengths)."""
    from workbench.grpo.merged import GROUPS

    w = sampler.weights
    mats = [lay[k] for lay in w.layers for k in GROUPS] + [w.lm_head]
    return sum(m.numel() * m.element_size() for m in mats)


def model_bytes(model) -> int:
    """The same count from the model itself (for a sampler that is not the fused one): decoder matrices + head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = sum(p.numel() * p.element_size() for name, p in base.named_parameters()
            if p.ndim == 2 and "lora_" not in name and "embed_tokens" not in name and "lm_head" not in name)  # fmt: skip
    head = base.get_output_embeddings().weight
    return n + head.numel() * head.element_size()


def train_flops(model, P: int, L: int, B: int, T: int) -> float:
    """FLOPs of one training forward+backward of the engine (μ = 1, beta 0: no old/ref passes).

    The engine runs each prompt once per group: P·L prompt tokens (padded, as computed) + B·(T−1) completion
    tokens (the last one predicts nothing and is not fed); logits at the B·T completion positions.
    - frozen linear weights N (2-D, non-embedding): forward 2·N and input-gradient 2·N per token, no weight
      gradient → 4·N·tokens;
    - LoRA A/B (N_lora): forward 2, input grad 2, weight grad 2 → 6·N_lora·tokens;
    - attention scores and mixing (QKᵀ, AV), full masked matrices as computed: forward 4·q·k·(H·d) per layer,
      backward twice that;
    - lm_head (tied to the frozen embedding) at completion positions only: 2·h·V forward + 2·h·V input grad.
    Norms, RoPE, softmax, the loss and the optimizer are left out (small), so this slightly under-counts.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    n_lin = n_lora = 0
    for name, p in base.named_parameters():
        if "lora_" in name:
            n_lora += p.numel()
        elif p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
            n_lin += p.numel()
    fed = T - 1 if T > 1 else T
    tokens = P * L + B * fed
    hd = cfg.num_attention_heads * (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    attn_fwd = cfg.num_hidden_layers * 4 * hd * (P * L * L + B * fed * (L + fed))
    head = B * T * 4 * cfg.hidden_size * cfg.vocab_size
    return tokens * (4 * n_lin + 6 * n_lora) + 3 * attn_fwd + head
