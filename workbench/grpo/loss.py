"""The clipped policy loss, with TRL 1.16's formulas for every loss type (the advantages it takes come from
`advantages.group_advantages`).

Pure tensor functions: no model, no optimizer. `tests/test_grpo_loss.py` checks them against hand-computed values and
against TRL's own `GRPOTrainer._compute_loss` on identical batches.

    loss, metrics = policy_loss(logps, old_logps, ref_logps, adv, mask, loss_type="dapo", beta=0.0, ...)
"""

from __future__ import annotations

import torch


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    epsilon: float,
    epsilon_high: float,
    max_completion_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one batch and its metrics (detached), exactly as TRL 1.16 (token-level ratios, bias-corrected
    KL).

    logps (B, T) under the current policy, old_logps (B, T) under the policy that sampled (None = the same, μ = 1),
    ref_logps (B, T) under the reference (needed when beta > 0), advantages (B,), mask (B, T) of scored tokens.
    loss_type: grpo (mean per sequence, then over sequences), bnpo and dapo (sum over all scored tokens of the
    batch; equal here, where one step is one batch on one process), dr_grpo (sum / (B × max_completion_length)).
    """
    mask = mask.to(logps.dtype)
    adv = advantages[:, None]  # (B, 1)
    old = logps.detach() if old_logps is None else old_logps
    coef_1 = torch.exp(logps - old)  # (B, T) probability ratio π/π_old
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)  # (B, T)
    metrics: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        d = ref_logps - logps
        # (B, T) k3 estimator of KL(π || π_ref), importance-corrected by the ratio (TRL 1.16's default,
        # use_bias_correction_kl=True: the tokens were sampled from π_old, not π)
        per_token_kl = (torch.exp(d) - d - 1) * coef_1
        per_token = per_token + beta * per_token_kl
        metrics["kl"] = _masked_mean(per_token_kl.detach(), mask)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:
        raise ValueError(f"loss_type={loss_type!r}: use grpo, dr_grpo, dapo or bnpo")
    with torch.no_grad():
        low = (coef_1 < 1 - epsilon) & (adv < 0)
        high = (coef_1 > 1 + epsilon_high) & (adv > 0)
        metrics["clip_ratio/low_mean"] = _masked_mean(low.float(), mask)
        metrics["clip_ratio/high_mean"] = _masked_mean(high.float(), mask)
        metrics["clip_ratio/region_mean"] = _masked_mean((low | high).float(), mask)
    return loss, metrics
