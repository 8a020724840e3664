"""The engine's sampling and training paths beyond the parity matrix (`test_engine_parity.py`, whose tiny models,
helpers and TRL trainer these reuse): the fixed-shape decode step that CUDA graphs replay, a resumed full fine-tune,
the settings the fused paths skip (they fall back and say so), the sampler–trainer gap metric, the TRL engine's
refusal of an adapter on lm_head, the fallback's positions for padded prompts, and what a refresh repacks.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_engine_paths.py -q
    WORKBENCH_TEST_DEVICE=cuda .venv/bin/python -m pytest tests/test_engine_paths.py -q   # the same on a GPU
"""

from __future__ import annotations

import pytest
import torch
from test_engine_parity import (
    DEV,
    EOS,
    PAD,
    TEMP,
    G,
    T,
    _batch,
    _prompts,
    _train_three_steps,
    check,
    make_engine,
    pytestmark,  # noqa: F401  (no GPU where one was asked for: skip, as there)
    trl_trainer,  # noqa: F401  (the fixture `trl`: a TRL trainer per module)
)

from workbench.config import RunSpec
from workbench.grpo import GRPOEngine
from workbench.grpo.engine import sampling_gap
from workbench.grpo.sampler import FusedLlamaSampler, GenerateSampler


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama_bias", "qwen2"])
def test_the_fixed_shape_decode_step_equals_hf_and_trl(arch, dtype, trl, monkeypatch):
    # On a GPU the decode step replays as a CUDA graph over fixed shapes (`graphed.DecodeStep`: the slot in a device
    # tensor, attention over the whole cache). Run eagerly here, that same step must hold to HF like the sliced one.
    monkeypatch.setattr(FusedLlamaSampler, "static_decode", True)
    engine = make_engine(arch, "lora_head", dtype)
    gen = torch.Generator().manual_seed(6)
    check(engine, arch, "lora_head", trl, gen, monkeypatch)
    _train_three_steps(engine, arch, gen)
    check(engine, arch, "lora_head", trl, gen, monkeypatch)
    if dtype == "fp32":  # the same tokens as the sliced step from the same random numbers
        prompts = _prompts(arch, torch.Generator().manual_seed(7))
        kw = dict(n=G, max_new_tokens=T, eos_ids=[EOS], pad_id=PAD, temperature=TEMP, min_new_tokens=T)
        fixed = engine.sampler.sample(prompts, generator=torch.Generator(DEV).manual_seed(0), **kw)
        monkeypatch.setattr(FusedLlamaSampler, "static_decode", False)
        sliced = engine.sampler.sample(prompts, generator=torch.Generator(DEV).manual_seed(0), **kw)
        assert torch.equal(fixed.ids, sliced.ids)
        assert (fixed.logps - sliced.logps).abs().max() < 1e-5


def test_a_resumed_full_fine_tune_samples_with_its_trained_biases(tmp_path, trl, monkeypatch):
    # Qwen2 trains its q/k/v biases under full fine-tuning; a fresh engine that loads the checkpoint must sample with
    # the loaded biases, not the ones it was built with.
    gen = torch.Generator().manual_seed(3)
    trained = make_engine("qwen2", "full", "fp32")
    _train_three_steps(trained, "qwen2", gen)
    trained.save_checkpoint(tmp_path)
    resumed = make_engine("qwen2", "full", "fp32")
    resumed.load_checkpoint(tmp_path)
    bias = "model.layers.0.self_attn.q_proj.bias"
    loaded, saved = (dict(e.model.named_parameters())[bias] for e in (resumed, trained))
    assert torch.equal(loaded, saved)
    check(resumed, "qwen2", "full", trl, gen, monkeypatch)


@pytest.mark.parametrize(
    "arch,changes,why",
    [
        ("mistral_window", {}, "sliding_window=16"),
        ("llama_dropout", {}, "attention_dropout=0.1"),
        ("llama", {"lora_target_modules": "embed_tokens,q_proj"}, "LoRA adapter on model.embed_tokens"),
    ],
)
def test_what_the_fused_paths_skip_falls_back_and_says_so(arch, changes, why, trl, monkeypatch, caplog):
    # Each of these is a setting the run spec accepts and the hand-written paths would get wrong (a window they do
    # not apply, dropout they do not draw, an adapter on the embeddings they do not merge): the engine must sample
    # with generate and train through the HF forward, log why, and still match HF and TRL.
    with caplog.at_level("WARNING", logger="workbench.grpo.sampler"):
        engine = make_engine(arch, "lora", "fp32", **changes)
    assert isinstance(engine.sampler, GenerateSampler) and engine.proj is None
    assert why in caplog.text and "model.generate" in caplog.text
    if arch != "llama_dropout":  # dropout draws differ by design between any two forwards in train mode
        check(engine, arch, "lora", trl, torch.Generator().manual_seed(4), monkeypatch)


def _length(completions, **kw) -> list[float]:
    return [float(len(c[0]["content"])) for c in completions]


def test_the_sampler_trainer_gap_is_logged_and_shows_a_stale_copy():
    from workbench.models import load_model

    spec = RunSpec(model="tiny-random", task="concise", train_size=8, eval_size=2, num_generations=4,
                   prompts_per_step=2, max_completion_length=8, dtype="float32", device="cpu", seed=1)  # fmt: skip
    model, tok = load_model("tiny-random", dtype="float32", device="cpu")
    engine = GRPOEngine(spec, model, tok, [("length", _length, 1.0)])
    rows = [{"prompt": f"Count to {i}."} for i in range(2)]
    m = engine.step(rows).metrics
    # A fresh model: the sampler's copy and the trainer compute the same function, to float rounding.
    assert m["sampling/sampling_logp_difference/mean"] < 1e-5
    assert 0 <= m["sampling/sampling_logp_difference/max"] < 1e-4
    with torch.no_grad():  # the model changes behind the sampler's back (what a missed refresh would do)
        for n, p in engine.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    m = engine.step(rows).metrics
    assert m["sampling/sampling_logp_difference/max"] > 0.01  # the curve leaves zero


def test_the_trl_engine_refuses_an_adapter_on_lm_head_up_front():
    # TRL 1.16's fused LM head reads lm_head's base weight only: such an adapter would never train there.
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="remove lm_head from lora_target_modules or use engine='builtin'"):
        RunSpec(engine="trl", lora_target_modules="q_proj, lm_head")
    RunSpec(engine="builtin", lora_target_modules="q_proj,lm_head")  # the built-in engine trains it
    RunSpec(engine="trl", lora_target_modules="q_proj,lm_head", use_lora=False)  # no adapter at all


def test_the_fallback_scores_a_padded_prompt_where_generate_sampled_it():
    # GPT-2 has absolute positions, and generate counts real tokens only: the HF-forward fallback must score a
    # left-padded prompt at those positions too (scored at padded positions, as TRL 1.16 does, the log-probs of
    # this model move by up to ~0.3).
    engine = make_engine("gpt2", "lora", "fp32")
    batch = _batch(engine, "gpt2", torch.Generator().manual_seed(5), lens=(6, 2))
    gap = sampling_gap(batch["sampling_logps"], engine._logps(engine.model, batch)[0].detach(), batch["mask"])
    assert gap["sampling/sampling_logp_difference/max"] < 1e-5


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_refresh_repacks_what_changed_and_keeps_the_frozen_output_layer(mode):
    # On a CPU the sampler's matrices are packed (native panels, or oneDNN's layout) after every optimizer step; a
    # matrix that cannot have changed (the output layer, frozen under LoRA) keeps its packed copy, one that did is
    # packed again (native panels in place, so compared by value).
    engine = make_engine("llama", mode, "bf16")
    w = engine.sampler.weights
    if not w.packed:
        pytest.skip("no packing on this device")
    head, qkv = w.packed[id(w.lm_head)], w.packed[id(w.layers[0]["qkv"])]
    # by value where native (rewritten in place); by identity in oneDNN's layout, which has no `equal`
    values = {id(head): head.clone(), id(qkv): qkv.clone()} if w.native else {}

    def kept(matrix, before):
        now = w.packed[id(matrix)]
        return torch.equal(now, values[id(before)]) if w.native else now is before

    engine.train_on(_batch(engine, "llama", torch.Generator().manual_seed(8)))
    assert not kept(w.layers[0]["qkv"], qkv)
    assert kept(w.lm_head, head) == (mode == "lora")  # tied to the trained embeddings when full
    if mode == "lora":
        assert w.packed[id(w.lm_head)] is head  # kept, not packed again
