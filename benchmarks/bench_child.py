"""One side of the engine benchmark: our GRPO engine or TRL's GRPOTrainer, run one step at a time on command.

Started by `bench_engine.py` (never by hand), once per engine and benchmark point:

    python benchmarks/bench_child.py --engine builtin|trl --model NAME --generations 4 --tokens 32 --total 11

The protocol, so the parent can alternate the two engines step by step: the child loads its model and prints one
`@@{json}` line ("ready"); then, for each of --total steps, it waits for a line on stdin, runs one step and prints
one `@@{json}` line with that step's times. While it waits it uses no CPU, so the other engine runs alone. After
the last step it waits for EOF before it exits (so its teardown never overlaps the other's last step). Any other
output (warnings) is passed through by the parent. EOF on stdin ends the child early.

Both sides get the same allocator settings (`keep_freed_memory`: glibc keeps freed memory instead of returning it
to the OS) and the same torch thread count (`--threads`); the parent gives both the same environment.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench_machine import model_bytes, streamed_bytes, train_flops


def emit(obj: dict) -> None:
    print("@@" + json.dumps(obj), flush=True)


def wait_go() -> bool:
    """Block until the parent says go (True) or closes stdin (False)."""
    return bool(sys.stdin.readline())


def rss_mb() -> float:
    """Peak resident memory of this process in MB. Why VmHWM and not getrusage's ru_maxrss: Linux carries
    ru_maxrss across exec, so a child would report its parent's peak when that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def make_spec(model: str, generations: int, tokens: int, steps: int, device: str):
    from workbench.config import RunSpec

    return RunSpec(model=model, task="concise", num_generations=generations, prompts_per_step=2,
                   max_completion_length=tokens, beta=0.0, num_iterations=1, learning_rate=2e-4,
                   lora_r=16, lora_alpha=32, lora_target_modules="all-linear", max_steps=steps, dtype="auto",
                   device=device, seed=0)  # fmt: skip


def build_random_llama(path: str) -> str:
    """A Llama of SmolLM2-360M's shape with random weights (no download), saved in bf16 with the bundled model's
    tokenizer (same vocabulary) into `path`; returns `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models import DEFAULT_MODEL, load_tokenizer

    tok = load_tokenizer(DEFAULT_MODEL)
    cfg = LlamaConfig(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                      intermediate_size=2560, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
                      rope_theta=100000.0, max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_builtin(args) -> None:
    import torch

    from workbench.grpo import GRPOEngine
    from workbench.tasks import load_task, prompt_batches

    spec = make_spec(args.model, args.generations, args.tokens, args.total, args.device)
    task = load_task(spec)
    engine = GRPOEngine.from_spec(spec, task)
    base = engine.model.get_base_model()
    lora = next(p for n, p in engine.model.named_parameters() if "lora_" in n)
    fused = type(engine.sampler).__name__ == "FusedLlamaSampler"
    emit({"ready": True, "precision": f"weights {base.dtype}, LoRA {lora.dtype}, "
          f"sampler {type(engine.sampler).__name__}", "threads": torch.get_num_threads(),
          "params": sum(p.numel() for p in base.parameters()),
          "decode_bytes": streamed_bytes(engine.sampler) if fused else model_bytes(engine.model)})  # fmt: skip
    for rows in itertools.islice(prompt_batches(task.train, spec.prompts_per_step, spec.seed), args.total):
        if not wait_go():
            return
        prompts = engine.encode(rows)[0]
        P, L = len(prompts), max(map(len, prompts))  # the padded prompt block the training forward computes
        t0 = time.perf_counter()
        res = engine.step(rows, min_new_tokens=args.tokens)
        wall = time.perf_counter() - t0
        m = res.metrics
        emit({"wall": wall, "step_time": m["step_time"], "generation": m["time/generation"],
              "rewards": m["time/rewards"], "training": m["time/training"],
              "lengths": [e.length for e in res.episodes], "rss_mb": rss_mb(),
              "flops": train_flops(engine.model, P, L, len(res.episodes), args.tokens)})  # fmt: skip
    wait_go()  # exit only when the parent is done: our teardown must not overlap the other engine's last step


def run_trl(args) -> None:
    import torch

    from workbench.grpo.engine import keep_freed_memory
    from workbench.tasks import load_task
    from workbench.trl_engine import build_trainer

    keep_freed_memory()  # the allocator settings the engine sets for itself, offered to TRL too
    spec = make_spec(args.model, args.generations, args.tokens, args.total, args.device).replace(engine="trl")
    task = load_task(spec)
    began = [0.0]

    def on_step(res) -> None:
        # the step ended at TRL's on_log (its per-step overheads included); the wait for the parent is not timed
        wall = time.perf_counter() - began[0]
        m = res.metrics
        emit({"wall": wall, "step_time": m["step_time"], "generation": m["time/generation"],
              "rewards": m["time/rewards"], "training": m["time/training"],
              "lengths": [e.length for e in res.episodes], "rss_mb": rss_mb()})  # fmt: skip
        # after the last step too: TRL's teardown must not overlap the other engine's last step
        if not wait_go() or res.step >= args.total:
            raise SystemExit(0)
        began[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(spec, task, on_step, lambda: False, tmp)
        # TRL copies GRPOConfig.generation_kwargs into a GenerationConfig at __init__ and also passes the dict
        # to unwrap_model_for_generation (it overrides the model's generation config): set both.
        trainer.generation_config.min_new_tokens = args.tokens
        trainer.generation_kwargs["min_new_tokens"] = args.tokens
        lora = next(p for n, p in trainer.model.named_parameters() if "lora_" in n)
        base = trainer.model.get_base_model()
        emit({"ready": True, "precision": f"GRPOConfig bf16={trainer.args.bf16}, weights {base.dtype}, "
              f"LoRA {lora.dtype}", "threads": torch.get_num_threads()})  # fmt: skip
        if not wait_go():
            return
        began[0] = time.perf_counter()
        trainer.train()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("builtin", "trl"), required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--generations", type=int, required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--total", type=int, required=True, help="steps to run (warm-up included)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation notices
    (run_builtin if args.engine == "builtin" else run_trl)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
