"""Frozen projections of a LoRA-wrapped Llama-style model, fused and prepacked, for the training forward.

Why by hand: with LoRA the base weights never change, yet peft runs each of the 7 projections of a layer as its
own matmul, casts every activation to fp32 for the adapter, and MKL re-lays each weight out on every call. Here
q|k|v and gate|up are one matmul each over a concatenated frozen weight, kept in oneDNN's blocked layout (and its
transpose, for the input gradient) so it is read as stored; the LoRA deltas run in the activations' dtype (the fp32
adapter weights are cast, as autocast would). The result is the same function of the same parameters: the tests
compare log-probs and gradients with the model's own forward.

On a CPU where the native kernels run, a group with one adapter on each projection is one autograd node
(`cpu_autograd.lora_group`: the LoRA products natively, the same gradients); elsewhere the torch ops below.

Used only when every base weight and bias is frozen (LoRA), no LoRA dropout and no LoRA variant (DoRA...):
otherwise the forward calls the modules themselves. A LoRA on lm_head is applied in `head` as on the projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_autograd
from .llama import base_linear, base_of, lora_terms, packed_linear, prepack, projection_groups


class _Frozen(torch.autograd.Function):
    """y = x W^T with W frozen: forward and input gradient both from prepacked copies (W and W^T)."""

    @staticmethod
    def forward(ctx, x, w, packed, packed_t):
        ctx.w, ctx.packed_t = w, packed_t
        return F.linear(x, w) if packed is None else packed_linear(x, packed)

    @staticmethod
    def backward(ctx, dy):
        dx = dy @ ctx.w if ctx.packed_t is None else packed_linear(dy, ctx.packed_t)
        return dx, None, None, None


class FusedProjections:
    """The frozen, fused weights of every layer; `proj(layer, group, x)` returns the group's outputs with LoRA."""

    def __init__(self, model):
        self.layers = []
        for layer in base_of(model).model.layers:
            entry = []
            for mods in projection_groups(layer):
                lins = [base_linear(m) for m in mods]
                w = torch.cat([li.weight.detach() for li in lins]).contiguous()  # (sum out, in)
                bias = torch.cat([li.bias.detach() for li in lins]) if lins[0].bias is not None else None
                p = prepack(w, 64)
                pt = prepack(w.t().contiguous(), 64) if p is not None else None
                if pt is None:
                    p = None  # no oneDNN (CUDA): plain matmuls over the fused copy
                entry.append({"mods": mods, "w": None if p is not None else w, "p": p, "pt": pt, "bias": bias,
                              "sizes": [li.out_features for li in lins]})  # fmt: skip
            self.layers.append(entry)
        self.head_module = base_of(model).lm_head  # the peft wrapper when lm_head carries an adapter
        lin = base_linear(self.head_module)
        self.head_p = self.head_pt = None
        if not lin.weight.requires_grad:  # frozen base weight (tied or not): pack it and its transpose
            w = lin.weight.detach()
            self.head_p, self.head_pt = prepack(w, 64), prepack(w.t().contiguous(), 64)
            if self.head_pt is None:
                self.head_p = None

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (…, V) of hidden states (…, h) through the output layer: its base weight (prepacked when frozen)
        plus its LoRA delta when lm_head is among the adapter's targets, as peft's forward computes them."""
        lin = base_linear(self.head_module)
        if self.head_p is None:
            y = F.linear(h, lin.weight, lin.bias)
        else:
            flat = h.reshape(-1, h.shape[-1])
            y = _Frozen.apply(flat, None, self.head_p, self.head_pt).view(*h.shape[:-1], -1)
            y = y if lin.bias is None else y + lin.bias
        for A, B, scale in lora_terms(self.head_module):  # none while the adapter is disabled (the reference)
            y = y + F.linear(F.linear(h, A.to(h.dtype)), (B * scale).to(h.dtype))
        return y

    @staticmethod
    def usable(model) -> bool:
        """True for LoRA over a frozen base with no dropout and no variant: what this fusion reproduces exactly."""
        if not hasattr(model, "peft_config"):
            return False
        for layer in base_of(model).model.layers:
            for mods in projection_groups(layer):
                for m in mods:
                    lin = base_linear(m)
                    if lin.weight.requires_grad or getattr(m, "lora_variant", None):
                        return False
                    # a trained bias: the fused copy of it would go stale
                    if lin.bias is not None and lin.bias.requires_grad:
                        return False
                    if any(getattr(d, "p", 0.0) > 0 for d in getattr(m, "lora_dropout", {}).values()):
                        return False
        return True

    def __call__(self, layer: int, group: int, x: torch.Tensor) -> list[torch.Tensor]:
        g = self.layers[layer][group]
        terms = [lora_terms(m) for m in g["mods"]]  # none while the adapter is disabled (the reference)
        single = all(len(t) == 1 for t in terms)  # one adapter on each projection of the group
        if single and g["p"] is not None:  # the whole group as one native autograd node, where it can run
            y = cpu_autograd.lora_group(x, g["p"], g["pt"], g["bias"], [t[0] for t in terms])
            if y is not None:
                return list(y.split(g["sizes"], dim=-1))
        y = _Frozen.apply(x, g["w"], g["p"], g["pt"])
        if g["bias"] is not None:
            y = y + g["bias"]
        parts = list(y.split(g["sizes"], dim=-1))
        if single:  # the A's of the group as one matmul
            xa = F.linear(x, torch.cat([t[0][0] for t in terms]).to(x.dtype))  # (N, r·parts)
            for i, (xa_i, t) in enumerate(
                zip(xa.split([t[0][0].shape[0] for t in terms], -1), terms, strict=True)
            ):
                _, B, scale = t[0]
                # part + xa_i (s·B)ᵀ in one addmm: the scale lands on the small B, not on the activation
                parts[i] = torch.addmm(parts[i], xa_i, (B * scale).to(x.dtype).t())
            return parts
        for i, ts in enumerate(terms):
            for A, B, scale in ts:
                parts[i] = torch.addmm(parts[i], F.linear(x, A.to(x.dtype)), (B * scale).to(x.dtype).t())
        return parts
