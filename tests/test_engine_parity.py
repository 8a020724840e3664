"""The engine computes the function it claims to, on the paths real runs take, for every model family and setting
the run spec accepts: tiny models built from configs (Llama; Llama with attention and MLP biases; Qwen2 with q/k/v
biases; Mistral; GPT-2, which must fall back to HF generate and the HF forward) × {LoRA all-linear, LoRA including
lm_head, full fine-tuning} × {fp32, bf16}. Before and after three optimizer steps of the engine itself:

- the sampler's next-token logits, and the log-probs it reports for its samples, equal the HF model's;
- the training forward's log-probs and entropies (fused where real runs fuse) equal the HF model's;
- the loss, its gradients and the logged metrics equal TRL 1.16's `GRPOTrainer._compute_loss` on the same batch.

Plus μ = 2 through `train_on` against TRL's old log-probs and loss over two passes. The other paths (the decode
step CUDA graphs replay, fallbacks, the sampler–trainer gap metric, refresh) are in `test_engine_paths.py`, which
reuses these models and helpers. No downloads (the TRL trainer whose loss we call is built on tiny-random).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_engine_parity.py -q
    WORKBENCH_TEST_DEVICE=cuda .venv/bin/python -m pytest tests/test_engine_parity.py -q   # the same on a GPU
"""

from __future__ import annotations

import copy
import os
import types

import pytest
import torch

from workbench.config import RunSpec
from workbench.grpo import GRPOEngine
from workbench.grpo import sampler as sampler_mod
from workbench.grpo.engine import left_pad
from workbench.grpo.loss import policy_loss
from workbench.grpo.sampler import FusedLlamaSampler, GenerateSampler

V, PAD, EOS, G, T, TEMP = 96, 0, 2, 4, 6, 0.8
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.15, bos_token_id=1,
              eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
# the models and batches live here (TRL's trainer, whose loss is called, stays on the CPU)
DEV = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(
    DEV.startswith("cuda") and not torch.cuda.is_available(),
    reason=f"WORKBENCH_TEST_DEVICE={DEV}: no CUDA GPU visible",
)
LLAMA_STYLE = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _config(arch: str):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if arch == "llama":  # tied embeddings, as SmolLM2
        return LlamaConfig(**COMMON, tie_word_embeddings=True)
    if arch == "llama_bias":
        return LlamaConfig(**COMMON, attention_bias=True, mlp_bias=True, tie_word_embeddings=False)
    if arch == "qwen2":  # biases on q, k and v only
        return Qwen2Config(**COMMON, tie_word_embeddings=False)
    if arch == "mistral":  # no sliding window within reach: the fused paths apply
        return MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False)
    if arch == "mistral_window":  # a window within reach: they must not
        return MistralConfig(**COMMON, sliding_window=16, tie_word_embeddings=False)
    if arch == "llama_dropout":
        return LlamaConfig(**COMMON, attention_dropout=0.1)
    # No dropout, as the Llama-style configs: the engine trains in train mode (as TRL does), so dropout would make
    # the training forward differ from HF's eval forward by chance (the gap metric does show it in real runs).
    return GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.15,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=EOS,
                      pad_token_id=PAD)  # fmt: skip


def _targets(arch: str, mode: str) -> str:  # peft leaves lm_head out of all-linear
    if mode != "lora_head":
        return "all-linear"
    return ("c_attn,c_proj,c_fc" if arch == "gpt2" else LLAMA_STYLE) + ",lm_head"


class _Tok:  # what the engine asks of a tokenizer when it is fed token ids directly
    eos_token_id, pad_token_id = EOS, PAD
    save_pretrained = staticmethod(lambda path: None)


def make_engine(arch: str, mode: str, dtype: str, **changes) -> GRPOEngine:
    """The engine over a tiny random `arch`, its biases and LoRA B's given values so that dropping them shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") and "ln" not in n and "norm" not in n:
                p.normal_(0, 0.3)
    model.to(device=DEV, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).eval()
    fields = dict(model="tiny-random", task="concise", train_size=8, eval_size=2, num_generations=G,
                  prompts_per_step=2, max_completion_length=T, temperature=TEMP, learning_rate=1e-2, beta=0.04,
                  epsilon=0.2, epsilon_high=0.28, use_lora=mode != "full", lora_r=4, lora_alpha=8,
                  lora_target_modules=_targets(arch, mode),
                  dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype], device=DEV, max_steps=10)  # fmt: skip
    spec = RunSpec(**(fields | changes))
    engine = GRPOEngine(spec, model, _Tok(), [])
    if spec.use_lora:
        with torch.no_grad():
            for n, p in engine.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        engine.sampler.refresh(adapter=True)
    return engine


def _prompts(arch: str, gen: torch.Generator, lens: tuple[int, ...] | None = None) -> list[list[int]]:
    # Lengths 5 and 3: the second prompt is left-padded. TRL 1.16 scores a padded prompt at positions shifted by its
    # padding, which a model with absolute positions (GPT-2) reads differently from what generate sampled (we count
    # real tokens only: see the test at the end); so for GPT-2 the TRL comparison uses prompts of one length.
    lens = lens or ((5, 5) if arch == "gpt2" else (5, 3))
    return [torch.randint(3, V, (n,), generator=gen).tolist() for n in lens]


def _batch(engine: GRPOEngine, arch: str, gen: torch.Generator, lens: tuple[int, ...] | None = None) -> dict:
    """A rollout of the engine's sampler as the engine's step hands it to `train_on`, with random advantages."""
    prompts = _prompts(arch, gen, lens)
    s = engine.rollout(prompts)
    prompt_ids, prompt_mask = left_pad(prompts, PAD, DEV)
    adv = torch.randn(s.ids.shape[0], generator=gen).to(DEV)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": s.ids, "mask": s.mask,
            "advantages": adv, "sampling_logps": s.logps}  # fmt: skip


def _hf(engine, prompt_ids, prompt_mask, completion_ids):
    """The HF model's own logits (B, L+T, V) over prompt + completion, positions counting real tokens."""
    ids = torch.cat([prompt_ids.repeat_interleave(G, 0), completion_ids], 1)
    att = torch.cat([prompt_mask.repeat_interleave(G, 0), torch.ones_like(completion_ids)], 1)
    with torch.no_grad():
        model = engine if isinstance(engine, torch.nn.Module) else engine.model
        return model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(1) - 1).clamp(min=0)).logits


def _logp(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = (logits.float() / TEMP).log_softmax(-1)
    return logp.gather(-1, ids[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


def _trl_ready(model, mode: str) -> None:
    """Give `model` the forward TRL's `_compute_loss` calls (`fused_lm_head=True`), once."""
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_trl_ready", False):
        return
    base._trl_ready = True
    if mode != "lora_head":
        add_fused_lm_head(base, temperature=TEMP, outputs=("log_probs", "entropy"))
        return
    # TRL 1.16's fused head multiplies by `lm_head.weight`, the base weight under peft's wrapper, so it ignores a
    # LoRA on lm_head (log-probs off by ~0.9 on a tiny Llama). For those cases TRL's loss runs over the model's own
    # forward, the rest of `_compute_loss` unchanged.
    original = base.forward

    def forward(self, *args, fused_lm_head=False, labels=None, **kw):
        if not fused_lm_head:
            return original(*args, **kw)
        lp, ent = _logp(original(*args, **kw).logits[:, :-1], labels[:, 1:].clamp(min=0))
        keep = labels[:, 1:] != -100
        return types.SimpleNamespace(log_probs=lp * keep, entropy=ent * keep)

    base.forward = types.MethodType(forward, base)


def _trl_inputs(trl, spec: RunSpec, batch: dict, old: torch.Tensor, ref: torch.Tensor) -> dict:
    """Set the TRL trainer's loss knobs to `spec`'s and return `batch` as TRL's `_compute_loss` takes it."""
    trl.loss_type, trl.beta, trl.max_completion_length = spec.loss_type, spec.beta, T
    trl.epsilon_low, trl.epsilon_high = spec.epsilon, spec.epsilon_high
    trl.current_gradient_accumulation_steps = 1
    trl._metrics["train"].clear()
    return {"prompt_ids": batch["prompt_ids"].repeat_interleave(G, 0), "completion_ids": batch["completion_ids"],
            "prompt_mask": batch["prompt_mask"].repeat_interleave(G, 0), "completion_mask": batch["mask"],
            "advantages": batch["advantages"], "old_per_token_logps": old, "ref_per_token_logps": ref,
            "num_items_in_batch": batch["mask"].sum()}  # fmt: skip


def check(engine: GRPOEngine, arch: str, mode: str, trl, gen: torch.Generator, monkeypatch) -> dict:
    """Sampler, training forward, loss and gradients against HF and TRL on a fresh rollout; the worst errors."""
    prompts = _prompts(arch, gen)
    seen: list[torch.Tensor] = []  # the fused sampler's logits at each step, as it samples from them
    pick = sampler_mod._pick

    def keep(logits, *args):
        seen.append(logits.clone())
        return pick(logits, *args)

    monkeypatch.setattr(sampler_mod, "_pick", keep)
    s = engine.rollout(prompts)
    monkeypatch.setattr(sampler_mod, "_pick", pick)
    prompt_ids, prompt_mask = left_pad(prompts, PAD, DEV)
    L, ok = prompt_ids.shape[1], s.mask.bool()
    hf = _hf(engine, prompt_ids, prompt_mask, s.ids)[:, L - 1 : -1]  # (B, T, V): position t predicts token t
    hf_lp, hf_ent = _logp(hf, s.ids)
    err = {"sampler_logps": (s.logps - hf_lp)[ok].abs().max().item()}
    if isinstance(engine.sampler, FusedLlamaSampler):
        ours = torch.stack(seen[: s.ids.shape[1]], 1)  # (B, T, V)
        err["sampler_logits"] = (ours - hf.float())[ok].abs().max().item()
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": s.ids, "mask": s.mask}
    lp, ent = engine._logps(engine.model, batch, entropy=True)
    err["train_logps"] = (lp.detach() - hf_lp)[ok].abs().max().item()
    err["train_entropy"] = (ent - hf_ent)[ok].abs().max().item()
    if hf.dtype == torch.bfloat16:  # bf16's own rounding: HF in bf16 against the same weights in fp32
        exact = copy.deepcopy(engine.model).float()
        for m in exact.modules():  # the TRL forward patched on the copy would call the original's: drop it
            vars(m).pop("forward", None)
        hf32 = _hf(exact, prompt_ids, prompt_mask, s.ids)[:, L - 1 : -1]
        err["hf_bf16_vs_fp32_logits"] = (hf.float() - hf32)[ok].abs().max().item()
        err["hf_bf16_vs_fp32_logps"] = (hf_lp - _logp(hf32, s.ids)[0])[ok].abs().max().item()
    # Loss and gradients against TRL, with KL and clipping active: old and ref log-probs moved off the policy's,
    # each ratio π/π_old (≈ e^-step) well inside or well outside the clip range [0.8, 1.28], so that bf16 rounding
    # (log-probs off by < 0.1) cannot flip a token across a boundary, which would switch its gradient on or off.
    adv = torch.randn(s.ids.shape[0], generator=gen).to(DEV)
    steps = torch.tensor([-0.6, -0.05, 0.05, 0.6])
    old = (hf_lp + steps[torch.randint(0, 4, hf_lp.shape, generator=gen)].to(DEV)) * s.mask
    ref = (hf_lp + 0.3 * torch.randn(hf_lp.shape, generator=gen).to(DEV)) * s.mask
    sp = engine.spec
    ours, m = policy_loss(lp, old, ref, adv, s.mask, loss_type=sp.loss_type, beta=sp.beta, epsilon=sp.epsilon,
                          epsilon_high=sp.epsilon_high, max_completion_length=T)  # fmt: skip
    m["entropy"] = (ent * s.mask).sum() / s.mask.sum()
    our_grads = torch.autograd.grad(ours, engine.params)
    _trl_ready(engine.model, mode)
    inputs = _trl_inputs(trl, sp, batch | {"advantages": adv}, old, ref)
    theirs = trl._compute_loss(engine.model, inputs)
    their_grads = torch.autograd.grad(theirs, engine.params)
    scale = max(g.abs().max().item() for g in their_grads)
    assert scale > 1e-4  # the gradient is not all zero
    err["loss"] = abs(ours.item() - theirs.item())
    pairs = zip(our_grads, their_grads, strict=True)
    worst = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    err["grads_rel"] = worst / scale
    for key in ("kl", "entropy", "clip_ratio/region_mean"):
        err[key] = abs(m[key].item() - trl._metrics["train"][key][-1])
    assert m["clip_ratio/region_mean"] > 0  # clipping is active in this batch
    for key, value in err.items():
        assert value <= _tolerance(key, err), (key, value, err)
    return err


def _tolerance(key: str, err: dict) -> float:
    """fp32: the two implementations agree to float rounding (measured ≤ 4e-6 on log-probs and logits, ≤ 2e-6 of
    the largest gradient), so 1e-4 leaves room yet catches a dropped bias (≥ 2 here), a stale one (0.3 after three
    steps) or an adapter one path ignores (~1).

    bf16 keeps 8 significant bits, and two bf16 implementations round at different places (a fused q|k|v matmul,
    a merged LoRA delta, attention softmax in fp32 or not). The yardstick is bf16's own error on this very model:
    HF in bf16 against the same weights in fp32 (`hf_bf16_vs_fp32_*`, 0.02–0.07 here). Our bf16 paths may differ
    from HF's bf16 by up to 4× that (measured ≤ 2.3×), which still flags a dropped bias or adapter (≥ 10×).
    Gradients: ≤ 15 % of the largest (measured ≤ 7 %; a missing term is ~100 %). Loss and the logged metrics are
    means over tokens, where rounding averages out: 0.01 (measured ≤ 0.0025).
    """
    if "hf_bf16_vs_fp32_logits" not in err:
        return 1e-4
    if key.startswith("hf_bf16"):
        return 1.0  # the yardstick itself
    if key in ("sampler_logits", "sampler_logps", "train_logps", "train_entropy"):
        return 4 * max(err["hf_bf16_vs_fp32_logits"], err["hf_bf16_vs_fp32_logps"])
    if key == "clip_ratio/region_mean":
        return 0.0  # no ratio sits near a clip boundary (see `check`): the same tokens are clipped
    return 0.15 if key == "grads_rel" else 0.01


ARCHS = ("llama", "llama_bias", "qwen2", "mistral", "gpt2")
MODES = ("lora", "lora_head", "full")


@pytest.fixture(scope="module", name="trl")
def trl_trainer(tmp_path_factory):
    """A real TRL GRPOTrainer (on tiny-random, built by the TRL engine): we call its `_compute_loss` on our models."""
    from workbench.config import RewardSpec
    from workbench.tasks import load_task
    from workbench.trl_engine import build_trainer

    spec = RunSpec(model="tiny-random", task="concise", train_size=8, eval_size=2, max_steps=2, num_generations=4,
                   max_completion_length=T, dtype="float32", device="cpu", engine="trl", temperature=TEMP,
                   rewards=[RewardSpec("length", 1.0, {"target": 20, "unit": "chars"})])  # fmt: skip
    out = tmp_path_factory.mktemp("trl")
    trainer = build_trainer(spec, load_task(spec), lambda r: None, lambda: False, out)
    trainer.model.train()
    return trainer


def _train_three_steps(engine: GRPOEngine, arch: str, gen: torch.Generator) -> None:
    before = [p.detach().clone() for p in engine.params]
    for _ in range(3):  # the engine's own update: loss, clip, AdamW step, sampler refresh
        engine.train_on(_batch(engine, arch, gen))
    moved = [not torch.equal(a, b) for a, b in zip(before, engine.params, strict=True)]
    assert all(moved)  # every trained tensor moved


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_sampler_forward_and_loss_equal_hf_and_trl(arch, mode, dtype, trl, monkeypatch):
    engine = make_engine(arch, mode, dtype)
    assert isinstance(engine.sampler, GenerateSampler if arch == "gpt2" else FusedLlamaSampler)
    gen = torch.Generator().manual_seed(1)
    check(engine, arch, mode, trl, gen, monkeypatch)
    _train_three_steps(engine, arch, gen)
    check(engine, arch, mode, trl, gen, monkeypatch)


def test_two_passes_per_rollout_equal_trls(trl):
    # μ = 2: the engine's train_on (old log-probs taken once, two clipped updates) against TRL doing the same with
    # its own pieces: `_get_per_token_logps_and_entropies` for the old and reference log-probs, `_compute_loss`,
    # then the Trainer's clip and AdamW step, twice. Same start, same batch: same metrics and same weights after.
    engine = make_engine("qwen2", "lora", "fp32", num_iterations=2)
    twin = copy.deepcopy(engine.model)
    _trl_ready(twin, "lora")
    gen = torch.Generator().manual_seed(2)
    batch = _batch(engine, "qwen2", gen)
    sp = engine.spec
    ids = torch.cat([batch["prompt_ids"].repeat_interleave(G, 0), batch["completion_ids"]], 1)
    att = torch.cat([batch["prompt_mask"].repeat_interleave(G, 0), batch["mask"]], 1)
    keep = batch["completion_ids"].shape[1]
    with torch.no_grad():
        old = trl._get_per_token_logps_and_entropies(twin, ids, att, keep)[0]
        with twin.disable_adapter():
            ref = trl._get_per_token_logps_and_entropies(twin, ids, att, keep)[0]
    inputs = _trl_inputs(trl, sp, batch, old, ref)
    params = [p for p in twin.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=sp.learning_rate, weight_decay=sp.weight_decay)
    losses = []
    for _ in range(2):
        loss = trl._compute_loss(twin, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, sp.max_grad_norm)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    theirs = {k: sum(v) / len(v) for k, v in trl._metrics["train"].items()} | {"loss": sum(losses) / 2}

    ours = engine.train_on(batch)
    assert trl._metrics["train"]["clip_ratio/region_mean"][1] > 0  # the second pass clips: the policy moved
    for key in ("loss", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):  # fmt: skip
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert ours["sampling/sampling_logp_difference/max"] < 1e-4
    mine = [p for p in engine.model.parameters() if p.requires_grad]
    worst = max((a - b).abs().max().item() for a, b in zip(mine, params, strict=True))
    moved = min((a - b).abs().max().item() for a, b in zip(start, params, strict=True))
    assert worst < 1e-5 and moved > 1e-3, (worst, moved)  # the same weights, and every tensor moved
