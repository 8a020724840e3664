"""The GRPO maths: advantages and every loss type by hand on small tensors, then parity with TRL 1.16's own
`GRPOTrainer._compute_loss` (loss and gradients) on identical batches of a tiny model, with beta > 0 and μ > 1."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.grpo.advantages import group_advantages, nanstd, weighted_rewards
from workbench.grpo.forward import completion_logps
from workbench.grpo.loss import policy_loss

nan = math.nan


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, zero = group_advantages(r, group_size=4, scale="group")
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: all equal → std 0, advantage 0
    s = math.sqrt(1 / 3)
    assert adv.tolist() == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 2 + [0.0] * 4)
    assert zero.tolist() == [False] * 4 + [True] * 4
    adv, _ = group_advantages(r, 4, "none")  # only the mean is taken off
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0])
    adv, _ = group_advantages(r, 4, "batch")  # one std over all 8 rewards
    mean_g1 = 0.5
    assert adv[0].item() == pytest.approx((1 - mean_g1) / (r.std().item() + 1e-4))


def test_unscorable_completions_are_left_out_and_get_no_advantage():
    # reward fn 1 applies to items 0 and 1 only; fn 2 to none of items 1..3 → item 3 is scored by nobody
    per_func = torch.tensor([[1.0, 0.5], [3.0, nan], [nan, 2.0], [nan, nan]])
    total = weighted_rewards(per_func, torch.tensor([1.0, 2.0]))
    assert total[:3].tolist() == [2.0, 3.0, 4.0] and math.isnan(total[3])  # None counts 0 in a sum
    adv, _ = group_advantages(total, 4, "none")
    assert adv.tolist() == pytest.approx(
        [-1.0, 0.0, 1.0, 0.0]
    )  # mean of the three scored, 0 for the unscored
    assert nanstd(total).item() == pytest.approx(1.0)


def test_scores_as_reward_functions_return_them():
    # fn i on completion j, None = does not apply (TRL's contract), as the TRL engine and Compare hold them.
    # item 0: 2*1 + 0.5*0.5; item 1: the second reward does not apply -> 2*0; item 2: nothing applies -> NaN
    tot = weighted_rewards(list(zip([1.0, 0.0, None], [0.5, None, None], strict=True)), [2.0, 0.5])
    assert tot[:2].tolist() == [2.25, 0.0] and math.isnan(tot[2])
    # one group of 4: rewards 1, 0, 1, 0 → mean 0.5, unbiased std sqrt(1/3); ±0.5 / (std + 1e-4)
    adv, _ = group_advantages([1.0, 0.0, 1.0, 0.0], 4, "group")
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, a, -a], rel=1e-6)
    # a completion no reward applies to is left out of its group's mean and gets advantage 0
    adv, _ = group_advantages(weighted_rewards([[None], [1.0], [3.0]], [1.0]), 3, "none")
    assert adv.tolist() == pytest.approx([0.0, -1.0, 1.0])


def _loss(loss_type, **kw):
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -0.5], [-1.0, -0.2, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    ref = kw.pop("ref", None)
    args = dict(loss_type=loss_type, beta=0.0, epsilon=0.2, epsilon_high=0.2, max_completion_length=4) | kw
    return policy_loss(logps, old, ref, adv, mask, **args)


def test_each_loss_type_by_hand():
    # ratios e^(logp-old): row 0 → 1, e^-1 (≈0.37), 1; row 1 → e^-0.5 (≈0.61), 1, masked.
    # Row 0 has A=+1: min(r·A, clip(r)·A) takes r for r<1 → tokens -1, -e^-1, -1.
    # Row 1 has A=-2: min(-2r, -2·clip(r)) = -2·max(r, clip(r)) → token 0: -2·0.8 = -1.6 (clipped), token 1: -2.
    tok = [[-1.0, -math.exp(-1), -1.0], [1.6, 2.0]]  # per-token loss = -min(...), masked token left out
    row_sums = [sum(tok[0]), sum(tok[1])]
    assert _loss("grpo")[0].item() == pytest.approx((row_sums[0] / 3 + row_sums[1] / 2) / 2)
    assert _loss("dapo")[0].item() == pytest.approx(sum(row_sums) / 5)
    assert _loss("bnpo")[0].item() == pytest.approx(sum(row_sums) / 5)
    assert _loss("dr_grpo")[0].item() == pytest.approx(sum(row_sums) / (2 * 4))
    m = _loss("dapo")[1]
    assert m["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)  # row 1 token 0: r < 0.8 with A < 0
    assert m["clip_ratio/high_mean"].item() == 0.0 and m["clip_ratio/region_mean"].item() == pytest.approx(
        0.2
    )


def test_kl_penalty_by_hand():
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]]) + 0.5  # ref - logp = 0.5 everywhere
    loss0 = _loss("bnpo")[0].item()
    loss, m = _loss("bnpo", beta=0.1, ref=ref)
    # k3 = e^0.5 - 0.5 - 1 per token, times the ratio π/π_old of that token (TRL's bias-corrected estimator)
    ratios = torch.tensor([[1.0, math.exp(-1), 1.0], [math.exp(-0.5), 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    k3 = (math.exp(0.5) - 0.5 - 1) * (ratios * mask).sum().item() / 5
    assert m["kl"].item() == pytest.approx(k3) and loss.item() == pytest.approx(loss0 + 0.1 * k3)


# --- parity with TRL ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A real TRL GRPOTrainer over the tiny model (LoRA), built from a run spec by the TRL engine."""
    from workbench.config import RewardSpec, RunSpec
    from workbench.tasks import load_task
    from workbench.trl_engine import build_trainer

    spec = RunSpec(model="tiny-random", task="concise", train_size=8, eval_size=2, max_steps=2, num_generations=4,
                   max_completion_length=6, dtype="float32", device="cpu", engine="trl", temperature=0.8,
                   rewards=[RewardSpec("length", 1.0, {"target": 20, "unit": "chars"})])  # fmt: skip
    trainer = build_trainer(
        spec, load_task(spec), lambda r: None, lambda: False, tmp_path_factory.mktemp("trl")
    )
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; give it values so the adapter matters
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_loss_and_gradients_equal_trls(trl_trainer, loss_type):
    tr, model, G = trl_trainer, trl_trainer.model, 4
    tr.loss_type, tr.beta, tr.epsilon_low, tr.epsilon_high = loss_type, 0.05, 0.2, 0.28
    tr.current_gradient_accumulation_steps = 1
    gen = torch.Generator().manual_seed(0)
    P, L, T = 2, 5, 6
    prompt_ids = torch.randint(10, 3000, (P, L), generator=gen)
    prompt_mask = torch.ones(P, L, dtype=torch.long)
    prompt_mask[1, :2] = 0  # a left-padded prompt
    prompt_ids[1, :2] = tr.processing_class.pad_token_id
    completion_ids = torch.randint(10, 3000, (P * G, T), generator=gen)
    mask = torch.ones(P * G, T, dtype=torch.long)
    mask[0, 4:] = mask[5, 2:] = 0  # completions that ended early
    adv = torch.randn(P * G, generator=gen)
    with torch.no_grad():
        logps = completion_logps(model, prompt_ids, prompt_mask, completion_ids, G, temperature=0.8)[0]
    old = logps + 0.3 * torch.randn(logps.shape, generator=gen)  # μ > 1: the policy moved since sampling
    ref = logps + 0.3 * torch.randn(logps.shape, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]

    inputs = {"prompt_ids": prompt_ids.repeat_interleave(G, 0), "prompt_mask": prompt_mask.repeat_interleave(G, 0),
              "completion_ids": completion_ids, "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}  # fmt: skip
    tr._metrics["train"].clear()
    theirs = tr._compute_loss(model, inputs)
    their_grads = torch.autograd.grad(theirs, params)

    new = completion_logps(model, prompt_ids, prompt_mask, completion_ids, G, temperature=0.8)[0]
    ours, m = policy_loss(new, old, ref, adv, mask, loss_type=loss_type, beta=0.05, epsilon=0.2,
                          epsilon_high=0.28, max_completion_length=6)  # fmt: skip
    our_grads = torch.autograd.grad(ours, params)

    assert m["clip_ratio/region_mean"] > 0  # clipping is active in this batch
    assert abs(ours.item() - theirs.item()) < 1e-5
    worst = max((a - b).abs().max().item() for a, b in zip(our_grads, their_grads, strict=True))
    assert worst < 1e-5 and max(g.abs().max().item() for g in our_grads) > 1e-3  # equal, and not all zero
    for key in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert m[key].item() == pytest.approx(tr._metrics["train"][key][-1], abs=1e-6), key
