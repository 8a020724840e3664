"""The machine's limits that the engine benchmark (`bench_engine.py`) reports beside its measured step times.

    from bench_machine import matmul_peak, copy_bandwidth, Probe, train_flops, streamed_bytes

- `matmul_peak(dtype)`: the best GFLOP/s of a square matmul, the ceiling for the training phase.
- `copy_bandwidth()`: GB/s of a large tensor copy, the ceiling for weight streaming.
- `Probe(device)()`: both again in ~0.2 s, for the limits beside each step.
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


def _best(fn, reps: int, device: str) -> float:
    """The shortest of `reps` timed calls of fn(), in seconds."""
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype, n: int = 2048, reps: int = 8, device: str = "cpu") -> float:
    """Best-of-`reps` GFLOP/s of an n×n @ n×n matmul in `dtype`."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up (oneDNN primitive creation, cuBLAS handle)
    return 2 * n**3 / _best(lambda: torch.matmul(a, b), reps, device) / 1e9


def copy_bandwidth(mbytes: int = 512, reps: int = 5, device: str = "cpu") -> float:
    """Best-of-`reps` GB/s of `dst.copy_(src)` over `mbytes` MB, counted as bytes read + bytes written.

    Why a copy: a decode step streams every weight matrix from memory once, as a copy streams its source; 512 MB
    is far beyond any cache, so this is DRAM bandwidth as torch's threads see it (the same threads as the engine).
    """
    import torch

    src = torch.ones(mbytes << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    return 2 * src.numel() / _best(lambda: dst.copy_(src), reps, device) / 1e9


class Probe:
    """Both limits again, quickly, between two steps (the bench's children idle): the bf16 matmul peak (2048², best
    of 3) and the copy bandwidth (512 MB, best of 2), on buffers kept for the run (~0.2 s a call).

    Why: other tenants of the machine come and go within a run (the copy bandwidth has moved 34 → 66 GB/s between
    two runs minutes apart), so a step is read against the limits measured beside it, not an hour's best.
    """

    def __init__(self, device: str = "cpu", n: int = 2048, mbytes: int = 512):
        import torch

        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device).bfloat16()
        self.b = torch.randn(n, n, device=device).bfloat16()
        self.src = torch.ones(mbytes << 20, dtype=torch.uint8, device=device)
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)
        torch.matmul(self.a, self.b)

    def __call__(self) -> dict[str, float]:
        """{"bf16": GFLOP/s, "bandwidth": GB/s} now."""
        import torch

        mm = _best(lambda: torch.matmul(self.a, self.b), 3, self.device)
        cp = _best(lambda: self.dst.copy_(self.src), 2, self.device)
        return {"bf16": 2 * self.n**3 / mm / 1e9, "bandwidth": 2 * self.src.numel() / cp / 1e9}


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
