"""Group-relative advantages and the clipped policy loss, with TRL 1.16's formulas for every loss type.

Pure tensor functions: no model, no optimizer. `tests/test_grpo_loss.py` checks them against hand-computed values and
against TRL's own `GRPOTrainer._compute_loss` on identical batches.

    adv, zero_std = group_advantages(rewards, group_size=4, scale="group")      # rewards (N,), NaN = unscorable
    loss, metrics = policy_loss(logps, old_logps, ref_logps, adv, mask, loss_type="dapo", beta=0.0, ...)
"""

from __future__ import annotations

import torch


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN, as TRL's `trl.trainer.utils.nanstd` (not imported: importing TRL
    costs seconds the interactive engine should not pay)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    var = torch.nanmean((x - mean) ** 2, dim=dim) * count / (count - 1)
    return var.sqrt()


def weighted_rewards(per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Total reward (N,) from per-function rewards (N, F) with NaN where a function did not apply.

    A None (NaN) counts 0 in the sum (TRL's nansum); a completion no function applies to stays NaN (unscorable).
    """
    total = (per_func * weights[None]).nansum(dim=1)  # (N,)
    total[torch.isnan(per_func).all(dim=1)] = torch.nan
    return total


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages (N,), std-is-zero flags (N,)) for rewards (N,) in consecutive groups of `group_size`.

    advantage = (reward - group mean) / (std + 1e-4), std over the group ("group"), the whole batch ("batch"), or
    no division ("none"). NaN rewards are left out of means and stds and get advantage 0 (TRL 1.16).
    """
    grouped = rewards.view(-1, group_size)  # (N/G, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)  # (N,)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    elif scale in ("group", "none"):
        std = nanstd(grouped, dim=1).repeat_interleave(
            group_size
        )  # "none" uses it for the zero-std flag only
    else:
        raise ValueError(f"scale_rewards={scale!r}: use group, batch or none")
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std))


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
