"""The native CPU kernels: the fused sampler's whole decode step and the small-batch bf16 matrix product under it
(`cpu_decode.c`), and the training forward's elementwise parts and attention (`cpu_train.c`, `cpu_attn.c`, wrapped
for autograd in `cpu_autograd.py`), for bf16 models on x86 CPUs with AVX512-BF16. Compiled with the system's C compiler at first
use (about a second), cached under the workbench home, loaded with ctypes; anywhere it cannot be (no compiler,
another CPU, fp32 weights, a GPU, `WORKBENCH_CPU_KERNELS=0`) the torch paths run, with one log line saying why.

Why by hand: a decode step multiplies 8 rows by every weight matrix, so it should run at the speed the weights stream
from memory. Measured on our 2-vCPU machine (SmolLM2-135M, 8 rows): oneDNN's prepacked bf16 kernel streams them at
~20 GB/s (14 ms a token) where a plain read runs at ~40 GB/s, and the ~700 small torch ops around the matmuls
(norms, rotary, cache writes, attention, residuals) add another ~8 ms a token of dispatch, however they are fused
in Python. No library we use does this small-batch product well on a CPU, and torch.compile costs tens of seconds
per shape. Natively: ~35 GB/s and ~9.5 ms a token in all (27 before). The C step keeps HF's bf16 rounding op by op,
so the parity suite holds it to the HF forward as it holds the torch path.

    if load() is not None:                          # else the reason is logged once; the torch paths run
        packed = pack(w)                            # (N, K) bf16 -> panels, once per refresh
        y = linear(x, packed, N, K, bias)           # x (..., K) bf16 -> (..., N) bf16
        step = NativeDecode(sampler, cos, sin, key_ok, cache_k, cache_v)
        logits = step(tok, pos, slot)               # (B, V) fp32, valid until the next call
        tok, logp = sample(logits, temperature, generator)   # sampler._pick's draw, without top-p
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..paths import workbench_home
from .llama import base_linear, base_of, projection_groups

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / "cpu_decode.c", HERE / "cpu_train.c", HERE / "cpu_attn.c"]  # all include cpu_simd.h
ISA = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"]
FLAGS = ["-O3", *ISA, "-fopenmp", "-shared", "-fPIC"]
NEEDS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")  # /proc/cpuinfo flags
# wb_linear's output modes: bf16; fp32 of the bf16 value; rounded, then added to a bf16 block; added, rounded once
OUT_BF16, OUT_F32, OUT_ADD_BF16, OUT_ACC_BF16 = 0, 1, 2, 3
P, I32, F32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "wb_packed_elems": ([I32, I32], ctypes.c_long),
    "wb_pack_rows": ([P, I32, I32, P, P, I32, F32, I32, P, I32], I32),
    "wb_merge_packed": ([P, I32, P, P, I32, F32, I32, I32, P, I32], I32),
    "wb_linear": ([P, I32, I32, P, I32, I32, P, P, I32, I32, I32], None),
    "wb_decode": ([P, P, F32, P, P, P, P, P, P, P, P, I32, P, P, I32], I32),
    "wb_sample": ([P, I32, I32, F32, P, P, P, I32], I32),
    "wb_silu_mul": ([P, P, P, ctypes.c_long, I32], None),
    "wb_silu_mul_backward": ([P, P, P, P, P, ctypes.c_long, I32], None),
    "wb_silu_mul_rows": ([P, ctypes.c_long, I32, P, I32], None),
    "wb_silu_mul_rows_bwd": ([P, ctypes.c_long, I32, P, P, I32], None),
    "wb_token_logp": ([P, ctypes.c_long, I32, P, F32, P, P, P, I32], None),
    "wb_token_logp_bwd": ([P, ctypes.c_long, I32, P, F32, P, P, P, I32], None),
    "wb_rms_norm_fwd": ([P, P, P, P, ctypes.c_long, I32, F32, I32], None),
    "wb_rms_norm_bwd": ([P, P, P, P, P, ctypes.c_long, I32, I32], None),
    "wb_rope": ([P, P, P, P, ctypes.c_long, I32, I32, I32, I32], None),
    "wb_attn_fwd": ([P, P, P, P, I32, I32, I32, I32, I32, I32, F32, P, P, I32], I32),
    "wb_attn_bwd": ([P, P, P, P, P, I32, I32, I32, I32, I32, I32, F32, P, P, P, I32], I32),
    "wb_pack_t": ([P, I32, I32, I32, I32, P, I32], None),
}
_lib: ctypes.CDLL | None = None
_why: str | None = None


def _unavailable() -> str | None:
    if os.environ.get("WORKBENCH_CPU_KERNELS", "1") == "0":
        return "WORKBENCH_CPU_KERNELS=0"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"{platform.system()} on {platform.machine()} (built for Linux on x86-64)"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(ln for ln in lines if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "no CPU flags to read"
    missing = [f for f in NEEDS if f not in flags]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc) on this machine"
    return None


def _build() -> Path:
    """The compiled library, from the cache when the source and flags are unchanged (compiled atomically: several
    processes may build at once)."""
    cc = os.environ.get("CC", "cc")
    text = b"".join(f.read_bytes() for f in [*SOURCES, HERE / "cpu_simd.h"])
    key = hashlib.sha256(text + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    out = workbench_home() / "kernels" / f"cpu_decode-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], check=True, capture_output=True, timeout=120
        )
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    # builds of earlier sources go (a process that has one loaded keeps it)
    for stale in out.parent.glob("cpu_decode-*.so"):
        if stale != out:
            stale.unlink(missing_ok=True)
    return out


def load() -> ctypes.CDLL | None:
    """The native library, or None (the reason logged once) where it cannot run here."""
    global _lib, _why
    if _lib is not None or _why is not None:
        return _lib
    _why = _unavailable()
    if _why is None:
        try:
            lib = ctypes.CDLL(str(_build()))
            for name, (args, res) in SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            _lib = lib
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            err = getattr(e, "stderr", b"") or b""
            _why = f"it did not build or load ({e} {err.decode(errors='replace')[-300:]})".strip()
    if _why is not None:
        log.info(
            "native CPU decode off (%s): the sampler and the training forward run their torch paths", _why
        )
    return _lib


def usable(model) -> bool:
    """True when the native path can run this Llama-style model (`llama.supports`): every tensor the decode step reads
    is bf16 on a CPU (a model that keeps its norms in fp32 does not qualify), its head sizes are ones the step handles,
    and the library is there."""
    base = base_of(model)
    cfg = base.config
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    if d % 2 or d > 512 or H % K or H // K > 64 or (H // K) * d > 4096:
        return False
    tensors = [base.model.embed_tokens.weight, base.model.norm.weight, base_linear(base.lm_head).weight]
    for layer in base.model.layers:
        tensors += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        for mods in projection_groups(layer):
            tensors += [
                t for m in mods for t in (base_linear(m).weight, base_linear(m).bias) if t is not None
            ]
    if base_linear(base.lm_head).bias is not None:
        tensors.append(base_linear(base.lm_head).bias)
    if any(t.device.type != "cpu" or t.dtype != torch.bfloat16 or not t.is_contiguous() for t in tensors):
        return False
    return load() is not None


def pack(w: torch.Tensor) -> torch.Tensor:
    """(N, K) bf16 weight -> its panels for `linear`/`wb_decode`."""
    return pack_rows(empty_packed(*w.shape), 0, w)


def empty_packed(N: int, K: int) -> torch.Tensor:
    """Panels for an (N, K) matrix, zero (the padding past N and K stays zero)."""
    return torch.zeros(_lib.wb_packed_elems(N, K), dtype=torch.bfloat16)


HUGE_PAGE = 2 << 20


def empty_packed_many(shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """`empty_packed` for each (N, K), back to back in one allocation that asks for 2 MB pages (Linux's transparent
    huge pages, where they are granted on request). Why: a decode step streams every matrix once, ~270 MB on the
    bundled model, and with 4 KB pages that is a TLB miss every 4 KB; in one block, in the order the step reads them,
    a rollout took 1.5 % less (A/B)."""
    sizes = [(_lib.wb_packed_elems(N, K) + 31) // 32 * 32 for N, K in shapes]  # each view 64-byte aligned
    raw = torch.empty(sum(sizes) + HUGE_PAGE // 2, dtype=torch.bfloat16)
    skip = (-raw.data_ptr() % HUGE_PAGE) // 2  # elements up to the first 2 MB boundary
    block = raw[skip : skip + sum(sizes)]
    _advise_huge(block)
    block.zero_()  # after the advice: pages are allocated when first written
    return list(block.split(sizes))


def _advise_huge(t: torch.Tensor) -> None:
    """madvise(MADV_HUGEPAGE) over `t`'s whole 2 MB pages; nothing where there is no such call (only a hint)."""
    length = t.numel() * t.element_size() // HUGE_PAGE * HUGE_PAGE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if length and platform.system() == "Linux":
            libc.madvise(ctypes.c_void_p(t.data_ptr()), ctypes.c_size_t(length), 14)  # 14: MADV_HUGEPAGE
    except (OSError, AttributeError):
        pass


def pack_rows(out: torch.Tensor, row: int, w: torch.Tensor, lora=None) -> torch.Tensor:
    """Rows row.. of the packed matrix `out` from w (n, K), plus scale·B·A for lora=(A, B, scale): the adapter merged
    as torch.addmm(w, B, A, alpha=scale) merges it in bf16, and packed, in one pass."""
    N, K = w.shape
    w = w.contiguous()
    A, B, scale = lora if lora is not None else (None, None, 0.0)
    if A is not None:
        A, B = A.to(torch.bfloat16).contiguous(), B.to(torch.bfloat16).contiguous()
    rc = _lib.wb_pack_rows(w.data_ptr(), N, K, _ptr(A), _ptr(B), 0 if A is None else A.shape[0], float(scale), row,
                           out.data_ptr(), torch.get_num_threads())  # fmt: skip
    if rc:
        raise MemoryError("packing a weight for the native decode step: out of memory")
    return out


def merge_packed(out: torch.Tensor, base: torch.Tensor, row: int, K: int, lora) -> torch.Tensor:
    """Rows row.. of the packed matrix `out`: the same rows of `base` (pack_rows of the weight alone) plus
    scale·B·A for lora=(A (r, K), B (n, r), scale), bit for bit what pack_rows(out, row, w, lora) writes, in one read
    and one write of the packed weights (no re-laying out)."""
    A, B, scale = lora
    # (K, r): a line's two columns of A adjacent, A's bf16 values (as pack_rows rounds them) held in fp32, zero rows
    # up to a multiple of 8 (the kernel takes 4 lines, 8 columns, at a time)
    K8 = (A.shape[1] + 7) // 8 * 8
    at = torch.zeros(K8, A.shape[0])
    at[: A.shape[1]] = A.detach().to(torch.bfloat16).t()
    B = B.detach().to(torch.bfloat16).contiguous()
    rc = _lib.wb_merge_packed(base.data_ptr(), K, at.data_ptr(), B.data_ptr(), A.shape[0], float(scale), row,
                              B.shape[0], out.data_ptr(), torch.get_num_threads())  # fmt: skip
    if rc:
        raise MemoryError("merging an adapter into the native decode step's weights: out of memory")
    return out


def linear(x: torch.Tensor, packed: torch.Tensor, N: int, K: int, b: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) bf16 times the packed (N, K) weight, plus b: (..., N) bf16, rounded as F.linear rounds."""
    if x.dtype != torch.bfloat16:
        raise TypeError(f"the native product takes bf16 activations, not {x.dtype}")
    lead = x.shape[:-1]
    x = x.reshape(-1, K)
    if K % 2:  # rows are read in pairs of columns: a zero column makes K even
        x = F.pad(x, (0, 1))
    x = x.contiguous()
    out = torch.empty(x.shape[0], N, dtype=torch.bfloat16)
    bias = None if b is None else b.contiguous().data_ptr()
    _lib.wb_linear(x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), N, K, bias, out.data_ptr(), N,
                   OUT_BF16, torch.get_num_threads())  # fmt: skip
    return out.view(*lead, N)


def sample(logits: torch.Tensor, temperature: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampler._pick` without top-p on fp32 CPU logits (B, V), from the same uniform draws: (tokens, log-probs)."""
    B, V = logits.shape
    logits = logits.contiguous()
    u = torch.rand(B, 1, generator=generator, dtype=torch.float64)
    tok, logp = torch.empty(B, dtype=torch.long), torch.empty(B)
    rc = _lib.wb_sample(logits.data_ptr(), B, V, float(temperature), u.data_ptr(), tok.data_ptr(), logp.data_ptr(),
                        torch.get_num_threads())  # fmt: skip
    if rc:
        raise MemoryError(f"native sampling of {B} × {V} logits: out of memory")
    return tok, logp


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class NativeDecode:
    """`sampler._decode` + `sampler.logits` as one native call per token, over one `sample()` call's KV cache."""

    def __init__(self, sampler, cos, sin, key_ok, cache_k, cache_v):
        w = sampler.weights
        rows = []
        for lay, ck, cv in zip(sampler.layers, cache_k, cache_v, strict=True):
            rows.append([lay["ln1"].data_ptr(), w.packed[id(lay["qkv"])].data_ptr(), _ptr(lay["qkv_b"]),
                         w.packed[id(lay["o"])].data_ptr(), _ptr(lay["o_b"]), lay["ln2"].data_ptr(),
                         w.packed[id(lay["gu"])].data_ptr(), _ptr(lay["gu_b"]),
                         w.packed[id(lay["down"])].data_ptr(), _ptr(lay["down_b"]),
                         ck.data_ptr(), cv.data_ptr()])  # fmt: skip
        self.table = torch.tensor(rows, dtype=torch.int64)
        B, _, S, d = cache_k[0].shape
        inter = sampler.layers[0]["down"].shape[1]
        V = w.lm_head.shape[0]
        dims = [B, sampler.embed.shape[1], sampler.n_heads, sampler.n_kv, d, inter, V, S, len(sampler.layers)]
        self.dims = torch.tensor(dims, dtype=torch.int32)
        self.sampler, self.eps = sampler, float(sampler.eps)
        # what the call reads by address: held here, so that none is freed while the step exists
        self.cos, self.sin, self.key_ok, self.caches = (
            cos.contiguous(),
            sin.contiguous(),
            key_ok,
            (cache_k, cache_v),
        )
        self.logits = torch.empty(B, V, dtype=torch.float32)
        self.head = w.packed[id(w.lm_head)]

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, slot: int) -> torch.Tensor:
        s = self.sampler
        tok, pos = tok.contiguous(), pos.contiguous()
        rc = _lib.wb_decode(self.table.data_ptr(), self.dims.data_ptr(), self.eps, tok.data_ptr(),
                                s.embed.data_ptr(), s.norm.data_ptr(), self.head.data_ptr(),
                                _ptr(s.weights.lm_head_bias), self.cos.data_ptr(), self.sin.data_ptr(),
                                pos.data_ptr(), slot, self.key_ok.data_ptr(), self.logits.data_ptr(),
                                torch.get_num_threads())  # fmt: skip
        if rc:
            raise RuntimeError(f"native decode step failed (code {rc})")
        return self.logits
