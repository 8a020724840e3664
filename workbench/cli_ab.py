"""The command line of an A/B of reward designs (registered by cli_args.py, dispatched from cli.py).

    workbench train --preset quick --variant preset:length-only --variant preset:quick   # 2 to 4 variants
    workbench train --config spec.json --variant 'length:1,target=12,unit=words' --variant task [--detach]
    workbench compare EXPERIMENT_ID [--json] [--csv out.csv]      # the base and every variant, ranked
    workbench compare RUN1 RUN2 [RUN3 RUN4] [--weights best]      # any runs of one model and task

`train --variant` queues one run per variant (experiments.py says what a variant may change) and follows them in
turn: Ctrl-C stops the variant training now, the next one still starts (`workbench stop RUN` for the rest).
`compare` with several runs, or an experiment id, makes one comparison (compare_many.py): ranked variants with
their verdicts, each against the base and against each other; --csv writes the per-prompt answers of every model
side by side, `FILE-summary.csv` and `FILE-pairs.csv`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_follow import Result

VARIANT_HELP = (
    "an A/B of reward designs: repeat 2 to 4 times, one run per variant on the same prompts, seed and held-out "
    "set. A reward list 'length:1,target=12; contains_answer:2', 'task' (the task's rewards), 'preset:NAME', or a "
    'JSON object of settings with an optional "name"'
)


def add_ab_arguments(train: argparse.ArgumentParser, compare: argparse.ArgumentParser) -> None:
    """--variant on `train`, more runs (or an experiment id) on `compare`."""
    train.add_argument("--variant", action="append", metavar="VARIANT", help=VARIANT_HELP)
    compare.add_argument("more", nargs="*", metavar="RUN",
                         help="more runs: compare the base and every tuned model at once; RUN may also be an "
                              "experiment id (exp-...), for all its variants")  # fmt: skip


def wants_many(args: argparse.Namespace) -> bool:
    from .experiments import is_experiment_id

    return bool(getattr(args, "more", None)) or is_experiment_id(args.run)


def cmd_train_ab(args: argparse.Namespace) -> Result:
    """Queue the variants as one experiment, then follow each run in queue order (unless --detach)."""
    from .cli_args import spec_from_args
    from .cli_follow import follow
    from .experiments import start_experiment

    exp = start_experiment(spec_from_args(args), args.variant)
    lines = [f"experiment {exp.id}: {len(exp.variants)} variants, one after another on the same prompts"]
    lines += [f"  {v['name']:<20} run {v['run_id']}  {_changes(v['changes'])}" for v in exp.variants]
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)
    results, code = [], 0
    if not args.detach:
        for v in exp.variants:
            print(f"--- variant {v['name']} (run {v['run_id']})", flush=True)
            c, doc, text = follow(v["run_id"])
            print(text, flush=True)
            results.append({"variant": v["name"], **doc})
            code = max(code, c)
    doc = {**exp.to_dict(), "results": results}
    return code, doc, f"compare them: workbench compare {exp.id}"


def _changes(changes: dict[str, Any]) -> str:
    """The settings a variant changes, short: rewards as `name:weight` text, other settings as key=value."""
    parts = []
    for k, v in changes.items():
        if k == "rewards":
            parts.append("rewards " + (" + ".join(_reward_text(r) for r in v) or "of the task"))
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "(the base spec)"


def _reward_text(r: Any) -> str:
    from .config import RewardSpec

    return str(r if isinstance(r, RewardSpec) else RewardSpec(**r))


def cmd_compare_many(args: argparse.Namespace) -> Result:
    """One comparison of the base and every run's tuned model; the ranked table first."""
    from .cli_args import decoding_args
    from .compare_many import compare_many, runs_to_compare

    runs = runs_to_compare([args.run, *(args.more or [])])
    cmp = compare_many(runs, weights=args.weights, **decoding_args(args))
    if args.csv:
        cmp.to_csv(args.csv)
    return 0, cmp.to_dict(), cmp.text()
