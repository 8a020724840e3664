"""The engine on a device other than the CPU: it runs there (fused sampler, its decode step replayed as a CUDA graph,
and the fused training forward), or falls back to `model.generate` and the HF forward with a log line when its
hand-written paths fail their first-use check.

The CUDA test runs only where a GPU is visible (skipped otherwise); the fallback is proven on the CPU by treating
it as unverified (`selfcheck.VERIFIED_DEVICES = ()`) and breaking each fused path on purpose.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_engine_device.py -q
"""

from __future__ import annotations

import pytest
import torch

from workbench.config import RunSpec
from workbench.grpo import GRPOEngine, graphed, selfcheck
from workbench.grpo import forward as forward_mod
from workbench.grpo import sampler as sampler_mod
from workbench.grpo.sampler import FusedLlamaSampler, GenerateSampler

V = 96


def _model(dtype=torch.float32, device="cpu"):
    """A tiny Llama with biases everywhere, so a path that drops one would fail the check."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.15, attention_bias=True,
                      mlp_bias=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.3)
    return model.to(device=device, dtype=dtype).eval()


class _Tok:  # what the engine asks of a tokenizer when it is fed token ids directly
    eos_token_id, pad_token_id = 2, 0

    @staticmethod
    def batch_decode(ids, skip_special_tokens=True):
        return [" ".join(map(str, x)) for x in ids]


def _length(
    completions, **kw
) -> list[float]:  # a reward that varies within a group: advantages are not all 0
    return [float(len(c[0]["content"])) for c in completions]


def _engine(dtype: str, device: str, use_lora: bool = True) -> GRPOEngine:
    spec = RunSpec(model="tiny-random", task="concise", train_size=8, eval_size=2, num_generations=4,
                   prompts_per_step=2, max_completion_length=6, learning_rate=1e-2, use_lora=use_lora, lora_r=4,
                   lora_alpha=8, dtype=dtype, device=device, seed=0)  # fmt: skip
    model = _model({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype], device)
    return GRPOEngine(spec, model, _Tok(), [("length", _length, 1.0)])


def _step(engine: GRPOEngine) -> dict:
    before = [p.detach().clone() for p in engine.params]
    m = engine.step([{"prompt": "a"}, {"prompt": "b"}]).metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, engine.params, strict=True))  # it trained
    return m


@pytest.fixture(autouse=True)
def _token_prompts(monkeypatch):
    # the engine encodes chat messages with its tokenizer; these tests feed token ids, so encoding returns fixed ids
    monkeypatch.setattr(GRPOEngine, "encode", lambda self, rows: ([[5, 6, 7, 8, 9], [10, 11, 12]], [[], []]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("use_lora", [True, False])
def test_the_engine_trains_on_cuda_with_its_fused_paths(dtype, use_lora, monkeypatch):
    engine = _engine(dtype, "cuda", use_lora)
    # the first-use check passed: fused sampler and forward are kept
    assert isinstance(engine.sampler, FusedLlamaSampler) and engine.fused
    made = []

    class Recorded(graphed.DecodeStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(sampler_mod, "DecodeStep", Recorded)
    kw = dict(n=4, max_new_tokens=8, eos_ids=[2], pad_id=0, temperature=1.0, min_new_tokens=8)
    graphed_run = engine.sampler.sample(
        [[5, 6, 7], [8, 9]], generator=torch.Generator("cuda").manual_seed(0), **kw
    )
    assert made[-1]._graph is not None and made[-1].calls == 7  # the decode step replayed as a CUDA graph
    engine.sampler.graphs = False  # the same draws through the eager, sliced step
    eager = engine.sampler.sample([[5, 6, 7], [8, 9]], generator=torch.Generator("cuda").manual_seed(0), **kw)
    engine.sampler.graphs = True
    if dtype == "float32":
        assert torch.equal(graphed_run.ids, eager.ids)
    assert (graphed_run.logps - eager.logps).abs().max() < (1e-4 if dtype == "float32" else 0.1)
    s = engine.rollout([[5, 6, 7]])
    assert s.ids.device.type == "cuda" and s.logps.device.type == "cuda"
    for _ in range(2):
        m = _step(engine)
    assert all(p.device.type == "cuda" for p in engine.params)
    assert m["sampling/sampling_logp_difference/mean"] < (1e-3 if dtype == "float32" else 0.1)
    assert selfcheck.sampler_error(engine.model, engine.sampler) is None  # still agrees after the updates
    assert selfcheck.forward_error(engine.model, engine.proj) is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("use_lora", [True, False])
def test_the_first_use_check_passes_where_the_paths_are_right(dtype, use_lora):
    # On the CPU the parity suite proves these paths; the check must agree (its tolerances are not too tight).
    engine = _engine(dtype, "cpu", use_lora)
    assert selfcheck.sampler_error(engine.model, engine.sampler) is None
    assert selfcheck.forward_error(engine.model, engine.proj) is None
    assert not any(p.grad is not None for p in engine.params)  # the check leaves no gradient behind


def test_a_device_without_a_working_fused_path_falls_back_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(selfcheck, "VERIFIED_DEVICES", ())  # the CPU stands in for an unverified GPU

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    wrong = forward_mod._shared_prompt_logps

    def off_by_half(*args, **kwargs):  # a path that runs but computes another function
        lp, ent = wrong(*args, **kwargs)
        return lp + 0.5, ent

    monkeypatch.setattr(FusedLlamaSampler, "_prefill", no_kernel)
    monkeypatch.setattr(forward_mod, "_shared_prompt_logps", off_by_half)
    with caplog.at_level("WARNING", logger="workbench.grpo.selfcheck"):
        engine = _engine("float32", "cpu")
    assert isinstance(engine.sampler, GenerateSampler)
    assert not engine.fused and engine.proj is None
    assert "fused sampler off on cpu: it raised RuntimeError: no kernel for this device" in caplog.text
    assert "fused training forward off on cpu: its log-probs are 0.5 from the HF forward's" in caplog.text
    m = _step(engine)  # and the run goes on through model.generate and the HF forward
    assert m["sampling/sampling_logp_difference/max"] < 1e-4


def test_a_device_where_the_fused_paths_work_keeps_them(monkeypatch, caplog):
    monkeypatch.setattr(selfcheck, "VERIFIED_DEVICES", ())
    with caplog.at_level("WARNING", logger="workbench.grpo.selfcheck"):
        engine = _engine("bfloat16", "cpu")
    assert isinstance(engine.sampler, FusedLlamaSampler) and engine.fused and engine.proj is not None
    assert "off on" not in caplog.text
    _step(engine)
