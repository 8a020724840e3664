"""The Llama-style plumbing that the prepacked sampler (`sampler`), the fused training projections (`fused`) and the
shared-prompt forward (`forward`) all read a model with: which models qualify, where the weights and the LoRA terms
sit under peft's wrappers, rotary embeddings, and oneDNN's prepacked CPU matmul.

    if supports(model):
        for layer in base_of(model).model.layers:
            for modules in projection_groups(layer):      # [q, k, v], [o], [gate, up], [down]
                weights = [base_linear(m).weight for m in modules]
                deltas = [lora_terms(m) for m in modules]  # [(A, B, scale), ...] per active adapter
"""

from __future__ import annotations

import torch

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")

# The projections a layer runs as one fused matmul each: (parent module, its projections in output order).
PROJECTION_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
                     ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))  # fmt: skip


def base_of(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported(model) -> str | None:
    """Why the hand-written paths would not compute this model's function exactly; None when they do.

    They cover Llama-style decoders (SiLU MLP, RMSNorm, rotary embeddings, biases on any projection) with LoRA on
    the projections and the output layer. Anything else (another architecture, a sliding window within reach,
    attention dropout, an adapter on the embeddings) goes through the model's own modules instead.
    """
    base = base_of(model)
    cfg = base.config
    if type(base).__name__ not in SUPPORTED:
        return f"{type(base).__name__} is not one of {', '.join(SUPPORTED)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act={cfg.hidden_act!r} (the fused MLP computes SiLU)"
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    if window is not None and window < cfg.max_position_embeddings:
        return f"sliding_window={window} is within max_position_embeddings={cfg.max_position_embeddings}"
    if getattr(cfg, "attention_dropout", 0.0):
        return f"attention_dropout={cfg.attention_dropout} (the fused attention has no dropout)"
    handled = {id(m) for layer in base.model.layers for mods in projection_groups(layer) for m in mods}
    handled.add(id(base.lm_head))
    for name, mod in base.named_modules():
        if hasattr(mod, "lora_A") and (id(mod) not in handled or getattr(mod, "lora_variant", None)):
            return f"a LoRA adapter on {name}: only plain LoRA on the projections and lm_head is fused"
    return None


def supports(model) -> bool:
    """True for a Llama-style decoder that the hand-written paths cover (see `unsupported`)."""
    return unsupported(model) is None


def projection_groups(layer) -> list[list[torch.nn.Module]]:
    """The projection modules of one decoder layer (peft wrappers included), grouped as PROJECTION_GROUPS."""
    return [[getattr(getattr(layer, parent), n) for n in names] for parent, names in PROJECTION_GROUPS]


def base_linear(module) -> torch.nn.Linear:
    """The plain Linear under a peft LoRA wrapper (or the module itself)."""
    return module.base_layer if hasattr(module, "base_layer") else module


def lora_terms(module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, scale) of each active LoRA adapter on `module`; empty for a plain Linear or disabled adapters."""
    if not hasattr(module, "lora_A") or getattr(module, "disable_adapters", False) or module.merged:
        return []
    out = []
    for name in module.active_adapters:
        if name in module.lora_A:
            out.append((module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name])))
    return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of queries or keys (…, d) with broadcastable cos/sin rows (…, d)."""
    return x * cos + rotate_half(x) * sin


def prepack(w: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    """`w` (out, in) in oneDNN's blocked layout for inputs of about `batch_size` rows; None where oneDNN is not there
    (CUDA, a build without it). Why: MKL's plain GEMM re-lays the weight out on every call; the prepacked kernel
    (what torch.compile's CPU backend uses after freezing) reads it as stored."""
    if w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w, batch_size)
    except (RuntimeError, AttributeError):
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x Wᵀ (+ b) with W from `prepack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
