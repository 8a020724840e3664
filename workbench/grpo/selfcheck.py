"""A first-use check of the hand-written paths on a device the parity suite has not run on (a GPU, say).

The fused sampler and the shared-prompt training forward are written device-agnostic (every tensor on the model's
device; oneDNN prepacking only on a CPU), and `tests/test_engine_parity.py` holds them to the HF forward and TRL's
loss on the CPU. On any other device the tests this project runs have not proven them, so before they are used
there, each is compared once with the model's own HF forward on a tiny batch (2 prompts × 2 greedy completions ×
4 tokens): a path that raises, returns non-finite values or is far from the HF forward falls back (the sampler to
`model.generate`, the forward to the HF forward), with a log line saying why. It is a guard against a path that
does not work on that device, not a parity test: the tolerances below let precision's own rounding through.

    sampler = checked_sampler(model, FusedLlamaSampler(model))    # or GenerateSampler(model), logged
    fused = fused and forward_ok(model, proj)                       # False (logged) where the check failed
"""

from __future__ import annotations

import logging

import torch

from .forward import completion_logps, hf_logps
from .samples import GenerateSampler

log = logging.getLogger(__name__)

VERIFIED_DEVICES = ("cpu",)  # where the parity suite runs on every test run: no first-use check
N, T = 2, 4  # completions per prompt and tokens per completion of the check's batch


def unverified(model) -> bool:
    """True when the model sits on a device type the parity suite does not cover."""
    return next(model.parameters()).device.type not in VERIFIED_DEVICES


def _tolerances(dtype: torch.dtype, scale: float) -> tuple[float, float]:
    """(mean |Δ log-prob|, relative gradient error) allowed against the HF forward in the model's own precision;
    `scale` is the mean |log-prob| of the batch (errors grow with it), at least 1.

    fp32: on the CPU the two agree to ≤ 1.5e-5 on the bundled model (mean), so 1e-3 per nat leaves room for other
    reduction orders. bf16/fp16 keep 8/11 significant bits and two implementations round at different places:
    measured on the bundled model in bf16 (CPU), log-probs 0.04–0.05 apart on a mean of 2 nats and gradients 11 %
    of their norm, so 0.1 per nat and 50 % leave 4–5× room, while a path that is broken (a missing kernel, a
    wrong result) errs by whole nats or raises.
    """
    return (1e-3 * scale, 1e-2) if dtype == torch.float32 else (0.1 * scale, 0.5)


def _batch(model) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Two prompts of 5 and 3 random token ids (the second left-padded), as lists and as a padded block."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    top = min(base.get_output_embeddings().weight.shape[0], 1000)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, top, (n,), generator=gen).tolist() for n in (5, 3)]
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, 5 - len(p) :], mask[r, 5 - len(p) :] = torch.tensor(p), 1
    dev = next(model.parameters()).device
    return prompts, ids.to(dev), mask.to(dev)


def _greedy(sampler, prompts, ban: bool):
    """Greedy completions of exactly T tokens. ban: token 0 plays EOS and is banned until the end (what
    `model.generate` needs); else no token is an EOS (-1), so the sampler's log-probs are the unbanned ones the HF
    forward computes."""
    eos = [0] if ban else [-1]
    return sampler.sample(prompts, n=N, max_new_tokens=T, eos_ids=eos, pad_id=0, greedy=True,
                          min_new_tokens=T if ban else 0)  # fmt: skip


def _reference(model, ids, mask, completions) -> torch.Tensor:
    """The HF forward's log-probs (B, T) of `completions`, in eval mode (no dropout), without gradient."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return hf_logps(model, ids, mask, completions, N, 1.0, False)[0].float()
    finally:
        model.train(was)


def _mean_error(got: torch.Tensor, ref: torch.Tensor, dtype) -> str | None:
    scale = max(1.0, ref.abs().mean().item())
    err, tol = (got - ref).abs().mean().item(), _tolerances(dtype, scale)[0]
    if err <= tol:
        return None
    return f"its log-probs are {err:.3g} from the HF forward's on average (allowed {tol:.3g})"


def sampler_error(model, sampler) -> str | None:
    """Why the sampler's log-probs of its own greedy samples are off the HF forward's; None when they agree."""
    prompts, ids, mask = _batch(model)
    try:
        s = _greedy(sampler, prompts, ban=False)
        got, ref = s.logps.float(), _reference(model, ids, mask, s.ids)
    except Exception as e:  # any failure of the path: the fallback is the answer, the reason the log line
        return f"it raised {type(e).__name__}: {e}"
    if tuple(got.shape) != (2 * N, T) or not torch.isfinite(got).all():
        return f"it returned log-probs of shape {tuple(got.shape)}, or non-finite ones"
    return _mean_error(got, ref, next(model.parameters()).dtype)


def forward_error(model, proj) -> str | None:
    """Why the shared-prompt training forward's log-probs or gradients are off the HF forward's on greedy
    completions (`model.generate`'s); None when they agree. Runs in eval mode and leaves no gradient behind."""

    prompts, ids, mask = _batch(model)
    dtype = next(model.parameters()).dtype
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    try:
        completions = _greedy(GenerateSampler(model), prompts, ban=True).ids  # (B, T)
        model.eval()
        out = []
        for fused in (False, True):  # the HF forward (the reference), then the fused one
            lp = completion_logps(
                model, ids, mask, completions, N, 1.0, False, proj if fused else None, fused
            )[0]
            grads = torch.autograd.grad(lp.float().sum(), params, allow_unused=True) if params else ()
            out.append((lp.detach().float(), [g for g in grads if g is not None]))
    except Exception as e:
        return f"it raised {type(e).__name__}: {e}"
    finally:
        model.train(was)
    (ref, ref_g), (got, got_g) = out
    if not torch.isfinite(got).all() or not all(torch.isfinite(g).all() for g in got_g):
        return "its log-probs or gradients are not finite"
    why = _mean_error(got, ref, dtype)
    if why or len(got_g) != len(ref_g) or not ref_g:
        return why or (
            f"it gave {len(got_g)} gradients where the HF forward gave {len(ref_g)}" if ref_g else None
        )
    norm = sum(a.float().pow(2).sum() for a in ref_g).sqrt().item()
    diff = sum((a.float() - b.float()).pow(2).sum() for a, b in zip(ref_g, got_g, strict=True)).sqrt().item()
    tol = _tolerances(dtype, 1.0)[1]
    if norm > 0 and diff / norm > tol:
        return f"its gradients are {diff / norm:.3g} of their norm from the HF forward's (allowed {tol})"
    return None


def checked_sampler(model, sampler):
    """`sampler` where the model's device is verified or the check passes; else `model.generate`'s, logged."""
    if not unverified(model):
        return sampler
    why = sampler_error(model, sampler)
    if why is None:
        return sampler
    device = next(model.parameters()).device
    # on a GPU the graphed decode step alone may be at fault: try without it before giving up the fused sampler
    if getattr(sampler, "graphs", False) and device.type == "cuda":
        sampler.graphs = False
        if sampler_error(model, sampler) is None:
            log.warning("CUDA graphs off for the fused sampler on %s: %s. Decoding without them", device, why)
            return sampler
    log.warning(
        "fused sampler off on %s: %s. Sampling with model.generate instead (slower, same results)",
        device,
        why,
    )
    return GenerateSampler(model)


def forward_ok(model, proj) -> bool:
    """Whether the shared-prompt training forward may be used: always on a verified device, else when the check
    passes (logged when it does not)."""
    if not unverified(model):
        return True
    why = forward_error(model, proj)
    if why is not None:
        log.warning("fused training forward off on %s: %s. Training through the model's own forward instead "
                    "(slower, same results)", next(model.parameters()).device, why)  # fmt: skip
    return why is None
