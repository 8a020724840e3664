"""TRL engine: the spec → GRPOConfig mapping, training on TRL with streamed steps, and export.

Training tests use the tiny random model on the CPU (about a second a step); the test that runs the exported script
in a subprocess (~10 s, mostly imports) is marked slow.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.config import RewardSpec, RunSpec
from workbench.trl_engine import build_trainer, train_with_trl
from workbench.trl_export import export_trl, grpo_config_kwargs

# Character length varies a lot between random-token completions, so advantages are non-zero and LoRA moves.
REWARDS = [RewardSpec("length", 1.0, {"target": 20, "unit": "chars"})]


def tiny_spec(**changes) -> RunSpec:
    base = dict(
        model="tiny-random",
        task="concise",
        train_size=8,
        eval_size=2,
        max_steps=2,
        prompts_per_step=2,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-2,
        dtype="float32",
        device="cpu",
        engine="trl",
        rewards=REWARDS,
    )
    return RunSpec(**{**base, **changes})


def grpo_config(spec: RunSpec, tmp_path: Path):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **grpo_config_kwargs(spec, [1.0]))


# --- mapping -----------------------------------------------------------------------------------------------------

# RunSpec field → (a non-default value, the GRPOConfig attribute it must set, the value expected there).
MAPPED = {
    "num_generations": (6, "num_generations", 6),
    "prompts_per_step": (3, "per_device_train_batch_size", 12),  # 3 prompts × G=4 completions
    "max_completion_length": (17, "max_completion_length", 17),
    "temperature": (0.7, "temperature", 0.7),
    "top_p": (0.9, "top_p", 0.9),
    "learning_rate": (3e-5, "learning_rate", 3e-5),
    "lr_scheduler": ("cosine", "lr_scheduler_type", "cosine"),
    "warmup_steps": (3, "warmup_steps", 3),
    "max_steps": (7, "max_steps", 7),
    "max_grad_norm": (0.5, "max_grad_norm", 0.5),
    "weight_decay": (0.1, "weight_decay", 0.1),
    "loss_type": ("grpo", "loss_type", "grpo"),
    "beta": (0.04, "beta", 0.04),
    "epsilon": (0.1, "epsilon", 0.1),
    "epsilon_high": (0.28, "epsilon_high", 0.28),
    "num_iterations": (2, "num_iterations", 2),
    "scale_rewards": ("batch", "scale_rewards", "batch"),
    "mask_truncated_completions": (True, "mask_truncated_completions", True),
    "seed": (5, "seed", 5),
}
# Fields that reach TRL another way (model object, dataset, LoRA config, precision) or belong to the workbench.
ELSEWHERE = {
    "model", "task", "train_size", "eval_size", "system_prompt", "rewards", "max_prompt_length", "use_lora",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "dtype", "device", "engine", "save_every",
    "eval_every", "eval_prompts", "keep_best_by",  # the held-out checks are the worker's (heldout.py), not TRL's
    "compare_mode",  # how Compare decodes, after training
}  # fmt: skip


def test_every_spec_field_is_mapped_or_handled_elsewhere():
    from workbench.config import spec_fields

    names = {f.name for f in spec_fields()}
    assert names == set(MAPPED) | ELSEWHERE, (
        "a RunSpec field was added: map it in grpo_config_kwargs or list it"
    )


@pytest.mark.parametrize("field", sorted(MAPPED))
def test_spec_field_reaches_grpo_config(field, tmp_path):
    value, attr, expected = MAPPED[field]
    cfg = grpo_config(RunSpec(**{field: value}), tmp_path)
    got = getattr(cfg, attr)
    assert got == expected, f"{field}={value!r} should set GRPOConfig.{attr}={expected!r}, got {got!r}"


def test_one_step_is_prompts_times_generations_and_mu_passes(tmp_path):
    spec = RunSpec(prompts_per_step=3, num_generations=4, num_iterations=2, max_steps=5, warmup_steps=1)
    cfg = grpo_config(spec, tmp_path)
    # One rollout of 3 × 4 completions per workbench step, reused for μ=2 optimizer steps.
    assert cfg.generation_batch_size == 12 and cfg.steps_per_generation == 1
    assert cfg.max_steps == 10 and cfg.warmup_steps == 2
    # Our "constant" holds the rate after warm-up; transformers' plain "constant" would skip the warm-up.
    assert cfg.lr_scheduler_type == "constant_with_warmup"


def test_lora_settings():
    assert RunSpec(use_lora=False).lora_kwargs() is None
    kw = RunSpec(lora_r=8, lora_alpha=16, lora_target_modules="q_proj, v_proj").lora_kwargs()
    assert kw["r"] == 8 and kw["lora_alpha"] == 16 and kw["target_modules"] == ["q_proj", "v_proj"]
    assert RunSpec().lora_kwargs()["target_modules"] == "all-linear"


# --- training on TRL ---------------------------------------------------------------------------------------------


def _finite(d: dict) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in d.values())


def test_train_with_trl_streams_steps_and_saves_adapter(tmp_path):
    from safetensors.torch import load_file

    from workbench.tasks import load_task

    spec = tiny_spec()
    task = load_task(spec)
    results, times = [], []
    t0 = time.perf_counter()

    def on_step(r):
        results.append(r)
        times.append(time.perf_counter() - t0)

    final = train_with_trl(
        spec, task, on_step=on_step, should_stop=lambda: False, output_dir=tmp_path / "trl"
    )
    print(
        f"\nTRL tiny model: steps at {[round(t, 1) for t in times]} s; step_time {results[-1].metrics['step_time']:.2f} s"
    )
    assert [r.step for r in results] == [1, 2]
    for r in results:
        m = r.metrics
        assert _finite(m)
        for key in ("reward", "reward_std", "rewards/length/mean", "completions/mean_length", "loss", "entropy",
                    "learning_rate", "step_time", "time/generation", "time/training"):  # fmt: skip
            assert key in m, f"missing metric {key}"
        assert m["step_time"] > 0 and m["completions/max_length"] <= 8
        assert len(r.episodes) == 2 * 4 and {e.group for e in r.episodes} == {0, 1}
        for e in r.episodes:
            assert e.step == r.step and isinstance(e.completion, str) and e.prompt
            assert 1 <= e.length <= 8 and math.isfinite(e.advantage)
            assert set(e.rewards) == {"length"} and e.reward == pytest.approx(e.rewards["length"])
        # Advantages are relative within a group: they sum to ~0 in each.
        for g in (0, 1):
            assert abs(sum(e.advantage for e in r.episodes if e.group == g)) < 1e-3
        assert m["reward"] == pytest.approx(sum(e.reward for e in r.episodes) / 8, abs=1e-5)
    assert (final / "adapter_config.json").exists()
    weights = load_file(str(final / "adapter_model.safetensors"))
    # LoRA B starts at zero: a non-zero B proves the steps trained the adapter that was saved.
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)


def test_stop_ends_after_the_current_step_and_still_saves(tmp_path):
    from workbench.tasks import load_task

    spec = tiny_spec(max_steps=4)
    results = []
    final = train_with_trl(
        spec, load_task(spec), on_step=results.append, should_stop=lambda: bool(results), output_dir=tmp_path
    )
    assert [r.step for r in results] == [1]
    assert (final / "adapter_model.safetensors").exists()


def test_mu_passes_make_one_step_and_episodes_match_trl(tmp_path):
    """num_iterations=2: two TRL optimizer steps make one workbench step; our advantages are TRL's."""
    from workbench.tasks import load_task

    spec = tiny_spec(max_steps=1, num_iterations=2)
    results = []
    trainer = build_trainer(spec, load_task(spec), results.append, lambda: False, tmp_path)
    trainer.train()
    assert trainer.state.global_step == 2 and [r.step for r in results] == [1]
    eps = results[0].episodes
    assert [e.advantage for e in eps] == pytest.approx(list(trainer._logs["advantages"]), abs=1e-5)
    assert [e.rewards["length"] for e in eps] == pytest.approx(list(trainer._logs["rewards"]["length"]))
    assert [e.prompt for e in eps] == [m[-1]["content"] for m in trainer._logs["prompt"]]


# --- export ------------------------------------------------------------------------------------------------------


def _export(tmp_path: Path, **changes) -> Path:
    from workbench.tasks import load_task

    spec = tiny_spec(model="smollm2-135m-instruct", dtype="auto", **changes)
    return export_trl(spec, load_task(spec), tmp_path / "export")


def test_export_writes_a_readable_self_contained_folder(tmp_path):
    import yaml

    out = _export(tmp_path, num_generations=6, learning_rate=3e-5, system_prompt="Be brief.")
    assert {p.name for p in out.iterdir()} >= {
        "train.py", "train.jsonl", "eval.jsonl", "accelerate_config.yaml", "README.md", "run_spec.json"
    }  # fmt: skip
    src = (out / "train.py").read_text()
    ast.parse(src)
    literals = [
        "num_generations=6",
        "per_device_train_batch_size=12",  # 2 prompts x G=6
        "learning_rate=3e-05",
        'RewardSpec("length", 1.0, {"target": 20, "unit": "chars"})',
        "# use_vllm=True",
        'default="HuggingFaceTB/SmolLM2-135M-Instruct"',  # the bundled model's hub id
        "from workbench.rewards import build_rewards",
    ]
    for literal in literals:
        assert literal in src, f"train.py lacks {literal!r}"
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert len((out / "eval.jsonl").read_text().splitlines()) == 2
    acc = yaml.safe_load((out / "accelerate_config.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["mixed_precision"] == "bf16"
    readme = (out / "README.md").read_text()
    assert "accelerate launch --config_file accelerate_config.yaml train.py" in readme
    assert RunSpec.from_json((out / "run_spec.json").read_text()).num_generations == 6


@pytest.mark.slow
def test_exported_script_trains_two_steps_on_the_cpu(tmp_path, tiny):
    model, tok = tiny
    model_dir = tmp_path / "tiny-model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = _export(tmp_path, max_steps=30)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),  # load_dataset caches; keep it out of ~/.cache
    }
    cmd = [sys.executable, str(out / "train.py"), "--model", str(model_dir), "--max_steps", "2",
           "--output_dir", str(tmp_path / "run")]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    print(f"\nexported script, 2 steps on the tiny model: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()
    # TRL prints one dict per logged step: exactly the two steps asked for, overriding the spec's 30.
    assert proc.stdout.count("'rewards/length/mean'") == 2, proc.stdout[-2000:]


def test_trl_rows_give_every_row_every_column():
    # datasets.Dataset.from_list takes its columns from the first row: a first row without an answer would drop
    # the column for every row (the concise task answers 273 of its 400 prompts)
    from datasets import Dataset

    from workbench.trl_export import trl_rows

    rows = trl_rows(
        [{"prompt": "Suggest a name."}, {"prompt": "Capital of Chile?", "answer": ["Santiago"]}], ""
    )
    assert [r["answer"] for r in rows] == [None, ["Santiago"]]
    assert Dataset.from_list(rows)["answer"] == [None, ["Santiago"]]
