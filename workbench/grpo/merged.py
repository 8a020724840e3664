"""The sampler's own copy of a Llama-style model's weights: merged (base + LoRA delta), fused (q|k|v and gate|up
concatenated, each with its concatenated bias) and, on a CPU, packed for the native kernel (`cpu_kernels`) or oneDNN.

Why a copy: the decode loop (`sampler.FusedLlamaSampler`) multiplies 8 rows by every matrix per token, so it wants
one matmul per group over a merged weight rather than peft's base matmul + LoRA A + LoRA B per projection. A copy
goes stale the moment the model changes, so `refresh` rewrites every part of it that can change: each LoRA-wrapped
matrix (one addmm), every trainable or reloaded matrix, every bias (always: they are tiny, and full fine-tuning
trains them), and the output layer (merged when lm_head carries an adapter). Norms and embeddings are read live.

    w = MergedWeights(model)
    ... optimizer step ...
    w.refresh(adapter=True, everything=not use_lora)
    y = w.mm(x, w.layers[i]["qkv"], w.layers[i]["qkv_b"])
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import cpu_kernels
from .llama import base_linear, base_of, lora_terms, packed_linear, prepack, projection_groups

log = logging.getLogger(__name__)

GROUPS = ("qkv", "o", "gu", "down")  # the keys of each layer's fused matrices, in projection_groups order


class MergedWeights:
    """Per layer: {"ln1", "ln2"} (live norm weights) and, for each of GROUPS, the fused matrix and its bias (or
    None when no projection of the group has one)."""

    def __init__(self, model):
        base = base_of(model)
        self.lm_head_module = base.lm_head
        self.layers: list[dict[str, torch.Tensor | None]] = []
        # (buffer, row offset, module): rows of a contiguous matrix are contiguous, so each part is rewritten in
        # place with `out=`; the same for the bias vectors, where a projection without a bias keeps zeros.
        self._parts: list[tuple[torch.Tensor, int, torch.nn.Module]] = []
        self._bias_parts: list[tuple[torch.Tensor, int, torch.nn.Linear]] = []
        for layer in base.model.layers:
            entry = {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight}
            for key, mods in zip(GROUPS, projection_groups(layer), strict=True):
                lins = [base_linear(m) for m in mods]
                w0 = lins[0].weight
                rows = sum(li.out_features for li in lins)
                buf = torch.empty(rows, w0.shape[1], dtype=w0.dtype, device=w0.device)
                bias = (
                    torch.zeros(rows, dtype=w0.dtype, device=w0.device)
                    if any(li.bias is not None for li in lins)
                    else None
                )
                row = 0
                for m, li in zip(mods, lins, strict=True):
                    self._parts.append((buf, row, m))
                    if li.bias is not None:
                        self._bias_parts.append((bias, row, li))
                    row += li.out_features
                entry[key], entry[key + "_b"] = buf, bias
            self.layers.append(entry)
        self._lm_head_buf: torch.Tensor | None = None
        # id(weight) -> the same weight packed: the native kernel's panels (`native`) or oneDNN's blocked layout
        self.packed: dict[int, torch.Tensor] = {}
        self.native = cpu_kernels.usable(model)
        if self.native:  # one slot per matrix the step reads, in its order; the output layer's is the last
            mats = self._mats()
            self._slots = cpu_kernels.empty_packed_many([tuple(m.shape) for m in mats])
            self._slot_of = {id(m): i for i, m in enumerate(mats[:-1])}
        # id(fused matrix) -> its frozen base packed alone, for the parts with one LoRA adapter (see `_pack_part`)
        self._base: dict[int, torch.Tensor] = {}
        self._based: set[tuple[int, int]] = set()  # (id(fused matrix), row) whose base rows are packed
        self.refresh(adapter=True, everything=True)
        if self.native and not self._native_ok():
            log.warning("native CPU decode off: its product disagrees with F.linear here; using oneDNN")
            self.native, self.packed, self._base, self._based = False, {}, {}, set()
            self.refresh(adapter=True, everything=True)

    @torch.no_grad()
    def refresh(self, adapter: bool = True, everything: bool = False) -> None:
        """Copy the model's current weights in: base + LoRA delta (adapter=True) or the base alone.

        `everything` also recopies matrices without LoRA that are frozen (needed after a load); trainable ones are
        always recopied, and so are all biases.
        """
        if self.native:
            self._refresh_native(adapter, everything)
            return
        written: set[int] = set()  # ids of the matrices rewritten here: their packed copies are stale
        for buf, row, mod in self._parts:
            lin = base_linear(mod)
            dst = buf[row : row + lin.out_features]
            terms = lora_terms(mod) if adapter else []
            if terms:
                _merge(lin.weight, terms, out=dst)
                written.add(id(buf))
            elif everything or hasattr(mod, "lora_A") or lin.weight.requires_grad:
                dst.copy_(lin.weight)
                written.add(id(buf))
        self._copy_biases()
        head = self.lm_head_module
        terms = lora_terms(head) if adapter else []
        if terms:  # lm_head in the LoRA targets (not the case for 'all-linear'): keep a merged copy
            lin = base_linear(head)
            if self._lm_head_buf is None:
                self._lm_head_buf = torch.empty_like(lin.weight)
            written.add(id(_merge(lin.weight, terms, out=self._lm_head_buf)))
        else:
            self._lm_head_buf = None
            weight = base_linear(head).weight  # live: changed, unless frozen and nothing was loaded
            if everything or weight.requires_grad:
                written.add(id(weight))
        self._pack(written)

    def _copy_biases(self) -> None:
        for buf, row, lin in self._bias_parts:
            buf[row : row + lin.out_features].copy_(lin.bias)

    def _refresh_native(self, adapter: bool, everything: bool) -> None:
        """`refresh` where the native kernel runs: each part merged and packed in one pass (`cpu_kernels.pack_rows`;
        70 → 46 ms a step on the bundled model). The plain fused buffers are never written: they only key the
        packed copies (and, untouched, take no memory)."""
        for buf, row, mod in self._parts:
            lin = base_linear(mod)
            terms = lora_terms(mod) if adapter else []
            if terms or everything or hasattr(mod, "lora_A") or lin.weight.requires_grad:
                self._pack_part(buf, row, lin.weight, terms, everything)
        self._copy_biases()
        lin = base_linear(self.lm_head_module)
        terms = lora_terms(self.lm_head_module) if adapter else []
        if terms and self._lm_head_buf is None:  # the merged output layer's key
            self._lm_head_buf = torch.empty_like(lin.weight)
        elif not terms:
            self._lm_head_buf = None
        fresh = id(self.lm_head) not in self.packed
        if fresh or terms or everything or lin.weight.requires_grad:  # else frozen and kept (57 MB, ~20 ms)
            self._pack_part(self.lm_head, 0, lin.weight, terms)
        self.packed = {id(w): self.packed[id(w)] for w in self._mats()}  # a dropped merged head's copy goes

    def _pack_part(
        self, key: torch.Tensor, row: int, weight: torch.Tensor, terms: list, everything: bool = False
    ) -> None:
        """Rows row.. of `key`'s packed copy: `weight` plus its LoRA deltas.

        A frozen layer matrix with one adapter keeps its base packed alone (`_base`, once; again after a load), and
        each refresh adds the delta to that copy line by line (`cpu_kernels.merge_packed`: the same panels as
        packing the merged weight, without re-laying the weight out). On the bundled model a refresh took 37–41 →
        28–30 ms (A/B), for 212 MB more memory.
        """
        if id(key) not in self.packed:  # the output layer's key changes when its adapter comes or goes
            self.packed[id(key)] = self._slots[self._slot_of.get(id(key), -1)]
        if len(terms) > 1:  # several adapters: merged here, then packed
            weight, terms = _merge(weight, terms), []
        if len(terms) == 1 and not weight.requires_grad and id(key) in self._slot_of:
            base = self._base.get(id(key))
            if base is None:
                base = self._base[id(key)] = cpu_kernels.empty_packed(*key.shape)
            if everything or (id(key), row) not in self._based:
                cpu_kernels.pack_rows(base, row, weight)
                self._based.add((id(key), row))
            cpu_kernels.merge_packed(self.packed[id(key)], base, row, weight.shape[1], terms[0])
            return
        cpu_kernels.pack_rows(self.packed[id(key)], row, weight, terms[0] if terms else None)

    def _native_ok(self) -> bool:
        """The native panels of the first part give F.linear's product of its merged weight (a build that loads
        but computes wrong is caught here)."""
        buf, row, mod = self._parts[0]
        terms = lora_terms(mod)
        ref = _merge(base_linear(mod).weight, terms) if terms else base_linear(mod).weight
        x = torch.randn(3, ref.shape[1], dtype=ref.dtype)
        try:
            got = self.mm(x, buf)[:, row : row + ref.shape[0]]
        except (RuntimeError, OSError, MemoryError):
            return False
        return torch.allclose(got.float(), F.linear(x, ref).float(), rtol=1e-2, atol=1e-2)

    def _mats(self) -> list[torch.Tensor]:
        """Every matrix the sampler multiplies by: the fused ones of each layer, then the output layer."""
        return [lay[k] for lay in self.layers for k in GROUPS] + [self.lm_head]

    @property
    def lm_head(self) -> torch.Tensor:
        """The output layer's weight (V, h): the merged copy, or the model's own (live) weight."""
        return self._lm_head_buf if self._lm_head_buf is not None else base_linear(self.lm_head_module).weight

    @property
    def lm_head_bias(self) -> torch.Tensor | None:
        return base_linear(self.lm_head_module).bias

    def _pack(self, written: set[int]) -> None:
        """Reorder every matrix into oneDNN's blocked layout once per refresh; one that was not `written` since its
        last packing keeps that copy (the frozen output layer under LoRA: 57 MB, ~20 ms a step).

        Why: on a CPU a decode step multiplies 8 rows by every weight matrix, and MKL's plain bf16 GEMM re-lays the
        weight out on each call; the prepacked kernel reads it as stored. Same results (bit for bit where measured;
        checked below); skipped where oneDNN is not there (CUDA).
        """
        before, self.packed = self.packed, {}
        mats = self._mats()
        packed = {
            id(w): before[id(w)] if id(w) in before and id(w) not in written else prepack(w, 8) for w in mats
        }
        if any(p is None for p in packed.values()):
            return
        try:
            x = torch.randn(3, mats[0].shape[1], dtype=mats[0].dtype, device=mats[0].device)
            ok = torch.allclose(
                packed_linear(x, packed[id(mats[0])]), F.linear(x, mats[0]), rtol=1e-2, atol=1e-3
            )
        except (RuntimeError, AttributeError):
            return
        if ok:
            self.packed = packed

    def mm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """x wᵀ (+ b), through the packed copy of `w` where there is one."""
        p = self.packed.get(id(w))
        if p is None:
            return F.linear(x, w, b)
        if self.native:
            return cpu_kernels.linear(x, p, w.shape[0], w.shape[1], b)
        return packed_linear(x, p, b)


def _merge(weight: torch.Tensor, terms, out: torch.Tensor | None = None) -> torch.Tensor:
    """weight + Σ scale·B·A over the LoRA terms, in weight's dtype (as peft's merge computes it), into `out` if given."""
    A, B, s = terms[0]
    out = torch.addmm(weight, B.to(weight.dtype), A.to(weight.dtype), alpha=s, out=out)
    for A, B, s in terms[1:]:
        out.addmm_(B.to(weight.dtype), A.to(weight.dtype), alpha=s)
    return out
