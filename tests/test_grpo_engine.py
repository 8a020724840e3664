"""The GRPO engine end to end: the shared-prompt forward equals HF's, a tiny model learns a reward, the bundled
SmolLM2 trains three steps with every metric finite, same seed → same completions, a checkpoint resumes exactly,
and reward failures stop the step with the function's name."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from workbench.config import RewardSpec, RunSpec
from workbench.grpo import GRPOEngine, NonFiniteError, RewardFunctionError
from workbench.grpo.forward import completion_logps, hf_logps
from workbench.grpo.fused import FusedProjections
from workbench.grpo.sampler import FusedLlamaSampler, GenerateSampler, make_sampler
from workbench.models import load_model
from workbench.tasks import load_task, prompt_batches

ROWS = [{"prompt": f"Say something about the number {i}."} for i in range(16)]


def tiny_engine(fns, **changes) -> GRPOEngine:
    base = dict(
        model="tiny-random",
        task="concise",
        train_size=16,
        eval_size=2,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=8,
        learning_rate=1e-2,
        dtype="float32",
        device="cpu",
    )
    spec = RunSpec(**(base | changes))
    model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    return GRPOEngine(spec, model, tok, fns, "")


def low_ids(prompts, completions, completion_ids, **kw):
    """Fraction of completion tokens in the lower half of the vocabulary: ~0.5 for a random model."""
    return [sum(t < 24576 for t in ids) / max(len(ids), 1) for ids in completion_ids]


@pytest.mark.parametrize("fused,T", [(False, 5), (True, 5), (True, 2), (True, 1)])
def test_shared_prompt_forward_equals_the_hf_forward_with_gradients(fused, T):
    """Also at one and two completion tokens: the shared-prompt path does not feed the last one, which predicts
    nothing, so one token is an edge."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model("tiny-random", dtype="float32", device="cpu")[0],
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))  # fmt: skip
    proj = FusedProjections(model) if fused else None
    assert FusedProjections.usable(model)
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(5, 3000, (2, 7), generator=g)
    prompt_mask = torch.ones(2, 7, dtype=torch.long)
    prompt_mask[0, :3] = 0  # left padding
    completion_ids = torch.randint(5, 3000, (6, T), generator=g)
    ours, ent = completion_logps(
        model, prompt_ids, prompt_mask, completion_ids, 3, 0.7, entropy=True, proj=proj
    )
    ref, ent_ref = hf_logps(model, prompt_ids, prompt_mask, completion_ids, 3, 0.7, entropy=True)
    assert (ours - ref).abs().max() < 1e-5 and (ent - ent_ref).abs().max() < 1e-4
    params = [p for p in model.parameters() if p.requires_grad]
    g1, g2 = torch.autograd.grad(ours.sum(), params), torch.autograd.grad(ref.sum(), params)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2, strict=True)) < 1e-4
    with model.disable_adapter():  # the reference model: the same code path with the adapter off
        off = completion_logps(model, prompt_ids, prompt_mask, completion_ids, 3, 0.7, proj=proj)[0]
        assert (
            off - hf_logps(model, prompt_ids, prompt_mask, completion_ids, 3, 0.7, False)[0]
        ).abs().max() < 1e-5
    assert (off - ours).abs().max() > 1e-3  # and the adapter does change the answer


def test_both_samplers_give_the_same_greedy_completions():
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    fused = make_sampler(model)
    assert isinstance(fused, FusedLlamaSampler)  # a Llama: the fused path; any other architecture: generate
    prompts = [tok("The number 7")["input_ids"], tok("Hello there, how are you today?")["input_ids"]]
    kw = dict(n=2, max_new_tokens=8, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, greedy=True)
    a, b = fused.sample(prompts, **kw), GenerateSampler(model).sample(prompts, **kw)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask) and torch.equal(a.truncated, b.truncated)
    with torch.no_grad():  # after an update, refresh() brings the fused copy up to date
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    fused.refresh()
    before = a.ids
    a, b = fused.sample(prompts, **kw), GenerateSampler(model).sample(prompts, **kw)
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, before)


def test_same_seed_same_first_step_completions():
    a = tiny_engine([("low_ids", low_ids, 1.0)], seed=3).step(ROWS[:2])
    b = tiny_engine([("low_ids", low_ids, 1.0)], seed=3).step(ROWS[:2])
    c = tiny_engine([("low_ids", low_ids, 1.0)], seed=4).step(ROWS[:2])
    texts = [[e.completion for e in r.episodes] for r in (a, b, c)]
    assert texts[0] == texts[1] and texts[0] != texts[2]


@pytest.mark.slow
def test_a_tiny_model_learns_to_prefer_a_token_pattern():
    # The pattern: tokens whose (tied) embedding has a positive first coordinate, half the vocabulary. A random
    # model samples them half the time; the policy can learn them by moving its last hidden state along one axis.
    preferred: list[bool] = []  # filled from the engine's model below, before the first step

    def pattern(prompts, completions, completion_ids, **kw):
        return [sum(preferred[t] for t in ids) / max(len(ids), 1) for ids in completion_ids]

    engine = tiny_engine([("pattern", pattern, 1.0)], use_lora=False, num_generations=8, prompts_per_step=4,
                         max_completion_length=16, temperature=0.5, max_steps=20)  # fmt: skip
    preferred += (engine.model.get_input_embeddings().weight[:, 0] > 0).tolist()
    rewards = [
        engine.step(rows).metrics["reward"] for rows in itertools.islice(prompt_batches(ROWS, 4, 0), 20)
    ]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert first < 0.6 and last > first + 0.2, rewards  # from chance (~0.5) to clearly preferred


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpoint_resume_continues_exactly(tmp_path, use_lora):
    fns = [("low_ids", low_ids, 1.0)]
    straight = tiny_engine(fns, max_steps=3, use_lora=use_lora)
    batches = list(itertools.islice(prompt_batches(ROWS, 2, 0), 3))
    for rows in batches[:2]:
        straight.step(rows)
    straight.save_checkpoint(tmp_path)
    assert (tmp_path / ("adapter_config.json" if use_lora else "config.json")).exists()
    expected = straight.step(batches[2])
    resumed = tiny_engine(fns, max_steps=3, use_lora=use_lora)
    resumed.load_checkpoint(tmp_path)
    got = resumed.step(batches[2])
    assert resumed.step_count == 3 and [e.completion for e in got.episodes] == [
        e.completion for e in expected.episodes
    ]
    assert got.metrics["loss"] == pytest.approx(expected.metrics["loss"], abs=1e-6)


def test_none_rewards_are_left_out_and_failures_name_the_function():
    def only_first(prompts, completions, **kw):
        return [1.0 if i == 0 else None for i in range(len(completions))]

    r = tiny_engine([("only_first", only_first, 1.0)]).step(ROWS[:2])
    assert [e.rewards["only_first"] for e in r.episodes[:2]] == [1.0, None]
    assert r.metrics["reward"] == 1.0 and all(
        e.advantage == 0.0 for e in r.episodes
    )  # nothing to compare with

    def broken(prompts, completions, **kw):
        raise KeyError("answer")

    with pytest.raises(RewardFunctionError, match="broken: KeyError"):
        tiny_engine([("broken", broken, 1.0)]).step(ROWS[:2])
    with pytest.raises(NonFiniteError, match="nan_fn returned nan"):
        tiny_engine([("nan_fn", lambda prompts, completions, **kw: [math.nan] * len(completions), 1.0)]).step(
            ROWS[:2]
        )


def test_a_batch_without_references_gets_none_not_a_missing_column_error():
    # The concise task answers 273 of its 400 prompts: a step of two open-ended prompts must still train, with the
    # correctness reward saying "does not apply" (None) rather than failing on a column the batch lacks.
    from workbench.rewards import build_rewards

    spec = RunSpec(model="tiny-random", task="concise", train_size=16, eval_size=2, num_generations=4,
                   prompts_per_step=2, max_completion_length=8, dtype="float32", device="cpu")  # fmt: skip
    task = load_task(spec)
    assert "answer" in task.columns
    fns = build_rewards([RewardSpec("contains_answer"), RewardSpec("length")])
    model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    engine = GRPOEngine(spec, model, tok, fns, columns=tuple(task.columns))
    r = engine.step(ROWS[:2])  # no row carries an answer
    assert all(e.rewards["contains_answer"] is None for e in r.episodes)
    assert all(e.rewards["length"] is not None for e in r.episodes)


def test_truncated_completions_can_be_masked_out():
    r = tiny_engine(
        [("low_ids", low_ids, 1.0)], mask_truncated_completions=True, max_completion_length=4
    ).step(ROWS[:2])
    assert all(e.truncated for e in r.episodes)  # a random model never says EOS within 4 tokens
    assert r.metrics["completions/clipped_ratio"] == 1.0 and r.metrics["grad_norm"] == 0.0  # nothing trained


@pytest.mark.slow
def test_bundled_smollm2_three_steps_change_the_lora_weights_and_every_metric_is_finite():
    spec = RunSpec(task="concise", max_steps=3, max_completion_length=16, beta=0.04, num_iterations=2,
                   rewards=[RewardSpec("length", 1.0, {"target": 40, "unit": "chars"})])  # fmt: skip
    task = load_task(spec)
    engine = GRPOEngine.from_spec(spec, task)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters() if "lora_B" in n}
    results = [engine.step(rows) for rows in itertools.islice(prompt_batches(task.train, 2, 0), 3)]
    after = dict(engine.model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every LoRA B moved off zero
    expected = {"reward", "reward_std", "rewards/length/mean", "rewards/length/std", "frac_reward_zero_std",
                "completions/mean_length", "completions/min_length", "completions/max_length",
                "completions/clipped_ratio", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "loss", "grad_norm", "learning_rate", "step_time", "time/generation",
                "time/rewards", "time/training"}  # fmt: skip
    for r in results:
        assert expected <= set(r.metrics) and all(math.isfinite(r.metrics[k]) for k in expected)
        assert len(r.episodes) == 8 and all(e.completion for e in r.episodes)
    assert results[-1].metrics["kl"] > 0  # the policy has moved away from the base model
