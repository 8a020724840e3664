"""Benchmark: our GRPO engine against TRL's GRPOTrainer on identical work, side by side in one run.

    make bench                                   # = .venv/bin/python benchmarks/bench_engine.py
    .venv/bin/python benchmarks/bench_engine.py --steps 5 --warmup 1

The work, the same in both: the bundled SmolLM2-135M-Instruct, LoRA r=16 all-linear, 2 prompts × G=4
completions per step from the same batches in the same order, every completion forced to exactly 32 new tokens
(min_new_tokens = max_new_tokens; checked below), beta 0, μ 1, the same learning rate. Each engine runs in its
own precision (bf16 where the CPU has AVX512-BF16/AMX, else fp32: dtype "auto"; TRL then trains with
`bf16=True`) and in its own subprocess, so peak memory is per engine and no warm cache is shared. `--warmup`
steps are run and dropped, then `--steps` steps are timed.

How to read it:
- step time: wall time of one whole step (rollout, rewards, update); the median over the timed steps decides.
  For TRL it is the time between two streamed steps (so it includes TRL's per-step overheads); TRL's own
  callback-measured step time is shown next to it.
- engine split: medians of generation / rewards / training phases of the engine's step.
- training GFLOP/s: estimated FLOPs of the engine's training phase (see `train_flops`) over its measured time,
  and as a fraction of the bf16 / fp32 matmul peak measured in this run (2048² matmuls, before and after the
  engines; a note is printed when the two differ, i.e. something else used the CPU).
- peak RSS: the subprocess's maximum resident memory (model load included).
- last line: `speedup_vs_trl=<TRL median step / engine median step>`; the bar is 3.0. Exit code 0 either way,
  1 only when the work was not identical (a completion not 32 tokens long) or a child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

NEW_TOKENS = 32
BAR = 3.0


def make_spec(steps: int):
    from workbench.config import RunSpec

    return RunSpec(model="smollm2-135m-instruct", task="concise", num_generations=4, prompts_per_step=2,
                   max_completion_length=NEW_TOKENS, beta=0.0, num_iterations=1, learning_rate=2e-4,
                   lora_r=16, lora_alpha=32, lora_target_modules="all-linear", max_steps=steps, dtype="auto",
                   seed=0)  # fmt: skip


def matmul_peak(dtype, n: int = 2048, reps: int = 8) -> float:
    """Best-of-`reps` GFLOP/s of an n×n @ n×n matmul on the CPU in `dtype`."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def train_flops(model, P: int, L: int, B: int, T: int) -> float:
    """FLOPs of one training forward+backward of the engine (μ = 1, beta 0: no old/ref passes).

    The engine runs each prompt once per group: P·L prompt tokens (padded, as computed) + B·T completion
    tokens.
    - frozen linear weights N (2-D, non-embedding): forward 2·N and input-gradient 2·N per token, no weight
      gradient → 4·N·tokens;
    - LoRA A/B (N_lora): forward 2, input grad 2, weight grad 2 → 6·N_lora·tokens;
    - attention scores and mixing (QKᵀ, AV), full masked matrices as SDPA computes them: forward
      4·q·k·(H·d) per layer, backward twice that;
    - lm_head (tied to the frozen embedding) at completion positions only: 2·h·V forward + 2·h·V input grad.
    Norms, RoPE, softmax, the loss and the optimizer are left out (small), so this slightly under-counts.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    n_lin = n_lora = 0
    for name, p in base.named_parameters():
        if "lora_" in name:
            n_lora += p.numel()
        elif p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
            n_lin += p.numel()
    tokens = P * L + B * T
    hd = cfg.num_attention_heads * (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    attn_fwd = cfg.num_hidden_layers * 4 * hd * (P * L * L + B * T * (L + T))
    head = B * T * 4 * cfg.hidden_size * cfg.vocab_size
    return tokens * (4 * n_lin + 6 * n_lora) + 3 * attn_fwd + head


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def run_builtin(total: int) -> dict:
    import itertools

    import torch

    from workbench.grpo import GRPOEngine
    from workbench.tasks import load_task, prompt_batches

    spec = make_spec(total)
    task = load_task(spec)
    engine = GRPOEngine.from_spec(spec, task)
    out: dict = {"wall": [], "step_time": [], "generation": [], "rewards": [], "training": [], "lengths": [],
                 "flops": []}  # fmt: skip
    for rows in itertools.islice(prompt_batches(task.train, spec.prompts_per_step, spec.seed), total):
        prompts = engine.encode(rows)[0]
        P, L = len(prompts), max(map(len, prompts))  # the padded prompt block the training forward computes
        t0 = time.perf_counter()
        res = engine.step(rows, min_new_tokens=NEW_TOKENS)
        out["wall"].append(time.perf_counter() - t0)
        for key in ("step_time", "generation", "rewards", "training"):
            out[key].append(res.metrics[key if key == "step_time" else f"time/{key}"])
        out["lengths"].append([e.length for e in res.episodes])
        out["flops"].append(train_flops(engine.model, P, L, len(res.episodes), NEW_TOKENS))
    base = engine.model.get_base_model()
    lora = next(p for n, p in engine.model.named_parameters() if "lora_" in n)
    out["precision"] = f"weights {base.dtype}, LoRA {lora.dtype}, sampler {type(engine.sampler).__name__}"
    out["rss_mb"], out["threads"] = _rss_mb(), torch.get_num_threads()
    return out


def run_trl(total: int) -> dict:
    import torch

    from workbench.tasks import load_task
    from workbench.trl_engine import build_trainer

    spec = make_spec(total).replace(engine="trl")
    task = load_task(spec)
    out: dict = {"wall": [], "step_time": [], "generation": [], "rewards": [], "training": [], "lengths": []}
    stamps = []

    def on_step(res) -> None:
        stamps.append(time.perf_counter())
        out["wall"].append(stamps[-1] - stamps[-2])
        out["step_time"].append(res.metrics["step_time"])
        for key in ("generation", "rewards", "training"):
            out[key].append(res.metrics[f"time/{key}"])
        out["lengths"].append([e.length for e in res.episodes])

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(spec, task, on_step, lambda: False, tmp)
        # TRL copies GRPOConfig.generation_kwargs into a GenerationConfig at __init__ and also passes the dict
        # to unwrap_model_for_generation (it overrides the model's generation config): set both.
        trainer.generation_config.min_new_tokens = NEW_TOKENS
        trainer.generation_kwargs["min_new_tokens"] = NEW_TOKENS
        lora = next(p for n, p in trainer.model.named_parameters() if "lora_" in n)
        base = trainer.model.get_base_model()
        out["precision"] = f"GRPOConfig bf16={trainer.args.bf16}, weights {base.dtype}, LoRA {lora.dtype}"
        stamps.append(time.perf_counter())
        trainer.train()
    out["rss_mb"], out["threads"] = _rss_mb(), torch.get_num_threads()
    return out


# --- the parent: run both children, print the table ---------------------------------------------------------


def child(engine: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--engine",
        engine,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    print(f"running {engine} ({args.warmup} warm-up + {args.steps} timed steps) ...", flush=True)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # no weight-loading bars in the report
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(f"  [{engine}] {line}")
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        sys.exit(f"{engine} benchmark failed (exit {proc.returncode})")
    data = json.loads(lines[-1])
    return {k: v[args.warmup :] if isinstance(v, list) else v for k, v in data.items()}  # drop warm-up


def fmt_steps(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per engine (at least 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per engine, not timed")
    ap.add_argument(
        "--engine", choices=("builtin", "trl"), help="internal: run one engine, print one JSON line"
    )
    args = ap.parse_args()
    if args.steps < 3 or args.warmup < 1:
        ap.error("need --steps >= 3 and --warmup >= 1")
    total = args.warmup + args.steps
    if args.engine:
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation notices
        print(json.dumps((run_builtin if args.engine == "builtin" else run_trl)(total)), flush=True)
        return 0

    import torch

    from workbench.models import cpu_has_fast_bf16

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fast bf16 CPU: {cpu_has_fast_bf16()}"
    )
    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"matmul peak (2048², best of 8): bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s")
    ours, trl = child("builtin", args), child("trl", args)
    again = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    if any(not 0.85 < again[k] / peak[k] < 1.15 for k in peak):  # the higher of the two counts below
        print(f"note: the matmul peak moved during the run (now bf16 {again['bf16']:.0f}, "
              f"fp32 {again['fp32']:.0f} GFLOP/s): another process probably used the CPU; rerun")  # fmt: skip
    peak = {k: max(peak[k], again[k]) for k in peak}

    ok = True
    for name, r in (("engine", ours), ("TRL", trl)):
        lens = [n for step in r["lengths"] for n in step]
        good = len(lens) == 8 * args.steps and all(n == NEW_TOKENS for n in lens)
        ok &= good
        print(f"{name}: {len(lens)} timed completions, lengths {sorted(set(lens))} -> "
              f"{'all exactly' if good else 'NOT all'} {NEW_TOKENS} tokens; {r['precision']}")  # fmt: skip
    med = {"engine": statistics.median(ours["wall"]), "TRL": statistics.median(trl["wall"])}
    print(f"\n{'':24}{'engine':>12}{'TRL':>12}")
    print(f"{'median step (s)':24}{med['engine']:>12.2f}{med['TRL']:>12.2f}")
    print(f"{'  own step_time (s)':24}{statistics.median(ours['step_time']):>12.2f}"
          f"{statistics.median(trl['step_time']):>12.2f}")  # fmt: skip
    for key in ("generation", "rewards", "training"):
        print(f"{'  ' + key + ' (s)':24}{statistics.median(ours[key]):>12.3f}"
              f"{statistics.median(trl[key]):>12.3f}")  # fmt: skip
    print(f"{'peak RSS (MB)':24}{ours['rss_mb']:>12.0f}{trl['rss_mb']:>12.0f}")
    print(f"{'torch threads':24}{ours['threads']:>12}{trl['threads']:>12}")
    print(f"timed steps (s)  engine: {fmt_steps(ours['wall'])}   TRL: {fmt_steps(trl['wall'])}")
    print("  (TRL's split: 'generation' includes its log-prob passes before the first reward call)")

    gflops = sum(ours["flops"]) / sum(ours["training"]) / 1e9
    frac = f"{gflops / peak['bf16']:.0%} of bf16 peak, {gflops / peak['fp32']:.0%} of fp32 peak"
    per_step = statistics.mean(ours["flops"]) / 1e9
    print(f"engine training phase: {per_step:.1f} GFLOP/step, {gflops:.0f} GFLOP/s = {frac}")
    ratio = med["TRL"] / med["engine"]
    print(f"bar {BAR:.1f}x: {'met' if ratio >= BAR else 'NOT met'} ({ratio:.2f}x)")
    if not ok:
        print("INVALID: completions were not all exactly 32 tokens, so the work was not identical")
    print(f"speedup_vs_trl={ratio:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
