"""Benchmark: our GRPO engine against TRL's GRPOTrainer on identical work, step by step in one run.

    make bench                                         # = .venv/bin/python benchmarks/bench_engine.py
    .venv/bin/python benchmarks/bench_engine.py --steps 2             # a quick smoke run
    .venv/bin/python benchmarks/bench_engine.py --sweep               # the scaling sweep (the README's table)
    .venv/bin/python benchmarks/bench_engine.py --sweep --points 360m-g4-t32 --steps 2

The work, the same on both sides: LoRA r=16 all-linear, 2 prompts × G completions per step from the same batches in
the same order, every completion forced to exactly T new tokens (min_new_tokens = max_new_tokens; checked below),
beta 0, μ 1, the same learning rate. The default point is the bundled SmolLM2-135M-Instruct, G=4, T=32. Each
engine runs in its own precision (bf16 where the CPU has AVX512-BF16/AMX, else fp32: dtype "auto"; TRL then trains
with `bf16=True`) and in its own subprocess (`bench_child.py`), so peak memory is per engine.

Hygiene: both children are loaded, then run their steps alternately (engine, TRL, TRL, engine, ...: the order flips
every step), so a machine that slows down mid-run slows both alike; the one waiting uses no CPU. `--warmup` steps
per side are dropped, then `--steps` (default 10 at the default point, 3 per sweep point) are timed. Both children
get the same environment, the same torch thread count and the same allocator settings (glibc keeps freed memory).

How to read it:
- step time: wall time of one whole step (rollout, rewards, update): median, interquartile range, min–max. For TRL
  it runs from the end of its previous step's log to the end of this one's (its per-step overheads included).
- ratio: TRL's step over the engine's step, per pair of steps run back to back; its median and min–max.
- machine limits: the bf16 matmul peak (2048², before and after the run) and the copy bandwidth (512 MB). The
  generation floor is T × (bytes of every matrix a decode step reads) ÷ bandwidth; the training phase's share is
  its estimated FLOPs (`bench_machine.train_flops`) over its time, against the bf16 peak. Both are given against
  the limits of the run's start and, per step, against the limits measured just before that engine step
  (`bench_machine.Probe`: other tenants come and go within a run); the sweep's table gives the latter.
- last line: `speedup_vs_trl=<TRL median step / engine median step>`; the bar is 5.0. Exit code 0 either way, 1 only
  when the work was not identical (a completion not T tokens long) or a child failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_machine import Probe, copy_bandwidth, matmul_peak

BAR = 5.0
HERE = Path(__file__).resolve().parent
BIG = "llama-360m-random"  # built from a config by bench_child.build_random_llama
DEFAULT_POINT = ("smollm2-135m-instruct", 4, 32)
# the sweep: G grows at T=32, T grows at G=4, both at once, and a 360M model at the default work
SWEEP = [("smollm2-135m-instruct", g, t) for g, t in ((4, 32), (8, 32), (16, 32), (4, 128))]
SWEEP += [(BIG, 4, 32), ("smollm2-135m-instruct", 16, 128)]  # the costliest point last


def label(model: str, g: int, t: int) -> str:
    return f"{'360m' if model == BIG else '135m' if model == DEFAULT_POINT[0] else model}-g{g}-t{t}"


class Child:
    """One engine's subprocess, spoken to one step at a time (see bench_child's protocol)."""

    def __init__(self, engine: str, model: str, g: int, t: int, total: int, args, env: dict):
        cmd = [sys.executable, str(HERE / "bench_child.py"), "--engine", engine, "--model", model,
               "--generations", str(g), "--tokens", str(t), "--total", str(total),
               "--threads", str(args.threads), "--device", args.device]  # fmt: skip
        self.name = "engine" if engine == "builtin" else "TRL"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        """The next protocol line; other lines are passed through."""
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
            print(f"  [{self.name}] {line.rstrip()}", flush=True)
        self.proc.wait()
        raise RuntimeError(f"{self.name} benchmark child ended (exit {self.proc.returncode})")

    def step(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle


def run_point(model: str, g: int, t: int, steps: int, args, env: dict, name: str) -> dict:
    """Both engines on one point, alternating; returns {'engine': [...], 'TRL': [...], 'ready': {...}}."""
    total = args.warmup + steps
    print(f"\n== {name}: {args.warmup} warm-up + {steps} timed steps per side, alternating ==",
          flush=True)  # fmt: skip
    kids = [Child(e, model, g, t, total, args, env) for e in ("builtin", "trl")]
    try:
        ready = {k.name: k.read() for k in kids}
        probe = Probe(args.device)  # after the children load: its 1 GB of buffers is not in their way
        out: dict = {k.name: [] for k in kids}
        for i in range(total):
            for k in kids if i % 2 == 0 else kids[::-1]:
                limits = probe() if k.name == "engine" else None  # the machine just before the engine's step
                out[k.name].append(k.step() | ({"limits": limits} if limits else {}))
    finally:
        for k in kids:
            k.close()
    return {name: rows[args.warmup :] for name, rows in out.items()} | {"ready": ready}


def spread(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": min(xs), "max": max(xs)}


def fmt_spread(s: dict, digits: int = 2) -> str:
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'])} (IQR {f.format(s['q1'])}–{f.format(s['q3'])}, "
            f"min–max {f.format(s['min'])}–{f.format(s['max'])})")  # fmt: skip


def summarize(data: dict, t: int, g: int, bandwidth: float, peak: float) -> dict:
    eng, trl = data["engine"], data["TRL"]
    col = {side: {k: [r[k] for r in rows] for k in rows[0]} for side, rows in (("engine", eng), ("TRL", trl))}
    lens = {side: [n for r in rows for n in r["lengths"]] for side, rows in (("engine", eng), ("TRL", trl))}
    ok = all(len(v) == 2 * g * len(eng) and set(v) == {t} for v in lens.values())
    floor = t * data["ready"]["engine"]["decode_bytes"] / (bandwidth * 1e9)
    # the median step's rate, not total over total: one step slowed by another process would drag the mean down
    rates = [
        f / secs / 1e9 for f, secs in zip(col["engine"]["flops"], col["engine"]["training"], strict=True)
    ]
    gflops = statistics.median(rates)
    # each step against the limits measured just before it
    near = [r["limits"] for r in eng]
    floors = [t * data["ready"]["engine"]["decode_bytes"] / (m["bandwidth"] * 1e9) for m in near]
    beside = {"gen_vs_floor": spread([gen / f for gen, f in zip(col["engine"]["generation"], floors, strict=True)]),
              "peak_share": spread([r / m["bf16"] for r, m in zip(rates, near, strict=True)]),
              "bf16": spread([m["bf16"] for m in near]), "bandwidth": spread([m["bandwidth"] for m in near])}  # fmt: skip
    paired = [b / a for a, b in zip(col["engine"]["wall"], col["TRL"]["wall"], strict=True)]
    s = {side: spread(col[side]["wall"]) for side in col}
    return {"ok": ok, "lengths": {k: sorted(set(v)) for k, v in lens.items()}, "wall": s,
            "phases": {side: {k: statistics.median(col[side][k])
                              for k in ("step_time", "generation", "rewards", "training")} for side in col},
            "rss_mb": {side: max(col[side]["rss_mb"]) for side in col}, "ratio": s["TRL"]["median"] / s["engine"]["median"],
            "paired": spread(paired), "gen_floor": floor, "gflops": gflops, "peak_share": gflops / peak, "beside": beside,
            "train_gflop_per_step": statistics.mean(col["engine"]["flops"]) / 1e9,
            "steps": {side: col[side]["wall"] for side in col}}  # fmt: skip


def report(sm: dict, data: dict, t: int, device: str) -> None:
    for side in ("engine", "TRL"):
        r = data["ready"][side]
        print(f"{side}: lengths {sm['lengths'][side]} -> {'all exactly' if sm['ok'] else 'NOT all'} {t} tokens; "
              f"{r['precision']}; {r['threads']} threads")  # fmt: skip
    print(f"\n{'':24}{'engine':>12}{'TRL':>12}")
    print(
        f"{'median step (s)':24}{sm['wall']['engine']['median']:>12.2f}{sm['wall']['TRL']['median']:>12.2f}"
    )
    for key in ("step_time", "generation", "rewards", "training"):
        print(
            f"{'  ' + key + ' (s)':24}{sm['phases']['engine'][key]:>12.3f}{sm['phases']['TRL'][key]:>12.3f}"
        )
    print(f"{'peak RSS (MB)':24}{sm['rss_mb']['engine']:>12.0f}{sm['rss_mb']['TRL']:>12.0f}")
    print("  (TRL's split: 'generation' includes its log-prob passes before the first reward call)")
    for side in ("engine", "TRL"):
        print(f"{side} step (s): {fmt_spread(sm['wall'][side])}")
        print(f"  steps: {' '.join(f'{x:.2f}' for x in sm['steps'][side])}")
    print(f"ratio TRL/engine: {sm['ratio']:.2f} (medians); per step pair {fmt_spread(sm['paired'])}")
    gen = sm["phases"]["engine"]["generation"]
    print(f"generation: engine {gen:.3f} s vs weight-streaming floor {sm['gen_floor']:.3f} s "
          f"({data['ready']['engine']['decode_bytes'] / 1e6:.0f} MB per decode step × {t} tokens) = "
          f"{gen / sm['gen_floor']:.1f}× the floor (target ≤ 2×)")  # fmt: skip
    print(f"training: {sm['train_gflop_per_step']:.1f} GFLOP/step at {sm['gflops']:.0f} GFLOP/s = "
          f"{sm['peak_share']:.0%} of the bf16 matmul peak (target ≥ 50 %)")  # fmt: skip
    bs = sm["beside"]
    print(f"against the limits measured just before each engine step (bf16 {bs['bf16']['min']:.0f}–"
          f"{bs['bf16']['max']:.0f} GFLOP/s, copy {bs['bandwidth']['min']:.1f}–{bs['bandwidth']['max']:.1f} GB/s): "
          f"generation {bs['gen_vs_floor']['median']:.1f}× its floor (IQR {bs['gen_vs_floor']['q1']:.1f}–"
          f"{bs['gen_vs_floor']['q3']:.1f}), training {bs['peak_share']['median']:.0%} of the peak (IQR "
          f"{bs['peak_share']['q1']:.0%}–{bs['peak_share']['q3']:.0%})")  # fmt: skip
    if device.startswith("cuda"):
        print("  (on a GPU a step of this size is bound by kernel launches and Python, not by reading weights or by "
              "FLOPs: the two limit lines above say little there; the ratio to TRL is the figure)")  # fmt: skip


def table(rows: list[tuple[str, int, int, dict]], steps: int) -> str:
    out = ["| model | G | T | engine s/step (IQR) | TRL s/step (IQR) | TRL ÷ engine (per-pair min–max) | "
           "engine generation ÷ floor | engine training, % of bf16 peak |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model, g, t, sm in rows:
        e, r, p = sm["wall"]["engine"], sm["wall"]["TRL"], sm["paired"]
        name = "SmolLM2-360M shape, random" if model == BIG else "SmolLM2-135M (bundled)"
        gen, share = sm["beside"]["gen_vs_floor"]["median"], sm["beside"]["peak_share"]["median"]
        out.append(f"| {name} | {g} | {t} | {e['median']:.2f} ({e['q1']:.2f}–{e['q3']:.2f}) | "
                   f"{r['median']:.2f} ({r['q1']:.2f}–{r['q3']:.2f}) | **{sm['ratio']:.2f}×** "
                   f"({p['min']:.2f}–{p['max']:.2f}) | {gen:.1f}× | {share:.0%} |")  # fmt: skip
    out.append(f"\n{steps} timed steps per side and point (after warm-up), alternating engine and TRL; the engine's "
               "generation and training against the limits measured just before each of its steps (medians).")  # fmt: skip
    return "\n".join(out)


def measure_machine(device: str) -> tuple[dict, float]:
    import torch

    peak = {
        "bf16": matmul_peak(torch.bfloat16, device=device),
        "fp32": matmul_peak(torch.float32, device=device),
    }
    bw = copy_bandwidth(device=device)
    return peak, bw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="timed steps per side and point (default 10; 3 with --sweep)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per side, not timed")
    ap.add_argument("--sweep", action="store_true", help="run the scaling sweep instead of the default point")
    ap.add_argument("--points", help=f"with --sweep: a comma list of {', '.join(label(*p) for p in SWEEP)}")
    ap.add_argument("--model", default=DEFAULT_POINT[0], help="the default point's model (e.g. tiny-random)")
    ap.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's own count)")
    ap.add_argument("--device", default="cpu", help="cpu (the figures this project reports) or cuda")
    ap.add_argument("--json", help="also write every measurement to this file")
    args = ap.parse_args()
    steps = args.steps or (3 if args.sweep else 10)
    if steps < 1 or args.warmup < 1:
        ap.error("need --steps >= 1 and --warmup >= 1")
    points = [(args.model, *DEFAULT_POINT[1:])]
    if args.sweep:
        want = set(args.points.split(",")) if args.points else None
        if want and want - {label(*p) for p in SWEEP}:
            ap.error(f"unknown points {sorted(want - {label(*p) for p in SWEEP})}")
        points = [p for p in SWEEP if want is None or label(*p) in want]
    import torch

    from workbench.models import cpu_has_fast_bf16

    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    # One environment for both children: same threads (OpenMP and torch), no tokenizer threads, no progress bars.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} threads for both sides, device {args.device}, "
          f"fast bf16 CPU: {cpu_has_fast_bf16()}")  # fmt: skip
    peak, bw = measure_machine(args.device)
    print(f"machine: matmul peak (2048², best of 8) bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} "
          f"GFLOP/s; copy bandwidth (512 MB, read + write) {bw:.1f} GB/s")  # fmt: skip
    if steps < 10:
        print(f"note: {steps} timed steps per side; the bench's bar is read on at least 10")
    tmp = tempfile.mkdtemp(prefix="bench-360m-") if any(p[0] == BIG for p in points) else None
    results, ok = [], True
    try:
        for model, g, t in points:
            path = model
            if model == BIG:
                from bench_child import build_random_llama

                path = str(Path(tmp) / BIG)
                if not Path(path).exists():
                    print(f"building {BIG} (SmolLM2-360M's shape, random weights) ...", flush=True)
                    build_random_llama(path)
            try:
                data = run_point(path, g, t, steps, args, env, label(model, g, t))
            except RuntimeError as e:
                print(f"FAILED: {e}")
                return 1
            sm = summarize(data, t, g, bw, peak["bf16"])
            ok &= sm["ok"]
            report(sm, data, t, args.device)
            results.append((model, g, t, sm))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    again, bw2 = measure_machine(args.device)
    print(f"\nmachine after the run: bf16 {again['bf16']:.0f} GFLOP/s, copy {bw2:.1f} GB/s")
    if not 0.85 < again["bf16"] / peak["bf16"] < 1.15 or not 0.85 < bw2 / bw < 1.15:
        print("note: the machine's limits moved during the run: another process probably used the CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "bandwidth": bw, "points": results}, indent=1))
    if args.sweep:
        print("\n" + table(results, steps))
    if not ok:
        print("INVALID: completions were not all exactly T tokens long, so the work was not identical")
    ratio = results[0][3]["ratio"]
    if not args.sweep:
        print(f"bar {BAR:.1f}x: {'met' if ratio >= BAR else 'NOT met'} ({ratio:.2f}x)")
        print(f"speedup_vs_trl={ratio:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
