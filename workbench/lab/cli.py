"""The lab's commands: `workbench preflight` and `workbench replay` (registered by cli.py and cli_args.py).

    workbench preflight --preset quick [--prompts 8] [--json]     # every `train` flag and --config work here
    workbench preflight --run RUN                                  # the report saved with a run
    workbench replay RUN --reward 'length:1,target=20' --reward contains_answer:2 [--json]

Each returns (exit code, JSON document, text) as the commands in cli.py do. A pre-flight that raises a flag exits 0:
the flags are findings, not errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import PRESETS, RewardSpec
from ..errors import ConfigError
from .common import fmt


def add_parsers(cmd) -> None:
    """Add the lab's subcommands; `cmd(name, help, run=False)` is cli_args' subparser factory."""
    from ..cli_args import add_spec_flags

    p = cmd("preflight", "before training: sample the base model with a run's settings, score the answers, and try "
                         "answers that game the rewards")  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset run spec")
    p.add_argument(
        "--config", metavar="FILE", help="a JSON run spec (e.g. a run's spec.json); flags override"
    )
    p.add_argument(
        "--prompts", type=int, default=8, help="training prompts to sample (default 8), G answers each"
    )
    p.add_argument("--run", metavar="RUN", help="show the pre-flight report saved with this run instead")
    add_spec_flags(p)
    r = cmd("replay", "re-score a run's stored completions with another reward set (no generation)", run=True)
    r.add_argument("--reward", action="append", metavar="'NAME:WEIGHT,K=V'", dest="new_rewards",
                   help="the reward set to try (repeatable; replaces the run's whole set)")  # fmt: skip
    r.add_argument("--steps", metavar="A:B", help="only steps A to B (default: every stored step)")


def cmd_preflight(args: argparse.Namespace) -> tuple[int, Any, str]:
    from ..cli_args import spec_from_args
    from .preflight import for_run, preflight, save

    if args.run:
        from ..store import open_run

        doc = for_run(open_run(args.run))
        if doc is None:
            raise ConfigError(f"run {args.run} has no pre-flight report: run `workbench preflight --config "
                              f"<its spec.json>` before launching (or now: the settings are the same)")  # fmt: skip
        return 0, doc, preflight_text(doc)
    if not 1 <= args.prompts <= 256:
        raise ConfigError(f"--prompts {args.prompts} is out of range: choose 1 to 256")
    spec = spec_from_args(args)
    doc = preflight(
        spec, args.prompts, progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True)
    )
    doc["saved"] = str(save(doc, spec))
    return 0, doc, preflight_text(doc)


def cmd_replay(args: argparse.Namespace) -> tuple[int, Any, str]:
    from ..store import open_run
    from .replay import replay, replay_text

    if not args.new_rewards:
        raise ConfigError(
            "give the reward set to try: --reward 'name:weight,key=value' (repeat it for each reward)"
        )
    steps = None
    if args.steps:
        a, _, b = args.steps.partition(":")
        try:
            steps = list(range(int(a or 1), int(b or a) + 1))
        except ValueError:
            raise ConfigError(f"--steps {args.steps!r} must look like 5:20 (steps 5 to 20)") from None
    doc = replay(open_run(args.run), [RewardSpec.parse(t) for t in args.new_rewards], steps)
    return 0, doc, replay_text(doc)


COMMANDS = {"preflight": cmd_preflight, "replay": cmd_replay}


def preflight_text(doc: dict[str, Any]) -> str:
    """The report as lines for a terminal: the flags first, then the numbers behind them."""
    s = doc["seconds"]
    lines = [f"pre-flight: {doc['prompts']} prompts x {doc['group_size']} answers from the base model, "
             f"{fmt(s.get('total'), '.1f')} s (loading and sampling {fmt(s.get('sampling'), '.1f')} s)"]  # fmt: skip
    flags = doc.get("flags") or []
    lines.append(f"{len(flags)} flag(s)" + (":" if flags else ": nothing found"))
    lines += [f"  ! {f['text']}" for f in flags]
    lines.append("rewards on the sampled answers (mean, median, min..max; groups with no spread):")
    for r in [*doc["rewards"], {"name": "total", "weight": None, **doc["total"]}]:
        w = f" x{r['weight']:g}" if r.get("weight") is not None else ""
        lines.append(f"  {r['name'] + w:24} {fmt(r['mean']):>7} {fmt(r['median']):>7}  {fmt(r['min'])}..{fmt(r['max'])}"
                     f"  {r['zero_spread_groups']}/{r['groups']}" + (f"  ({r['n_none']} n/a)" if r.get("n_none") else ""))  # fmt: skip
    lines += [f"  {doc['zero_spread']['text']}", f"  {doc['truncated']['text']}"]
    names = doc["correlation"]["names"]
    if len(names) > 1:
        m = doc["correlation"]["matrix"]
        pairs = [f"{names[i]}~{names[j]} {fmt(m[i][j], '+.2f')}" for i in range(len(names))
                 for j in range(i + 1, len(names))]  # fmt: skip
        lines.append("  correlation: " + ", ".join(pairs))
    lines.append("exploits (share of real answers each scores at or above; prompts at or above the median):")
    for e in doc["exploits"]:
        mark = "!" if e["flagged"] else " "
        lines.append(f"  {mark} {e['label']:44} {e['beats']:4.0%}  {e['at_median']}/{e['prompts']}"
                     + (f"  via {e['reward']}" if e.get("reward") else ""))  # fmt: skip
    if doc.get("saved"):
        lines.append(f"saved: a run launched with these settings shows this report ({doc['saved']})")
    return "\n".join(lines)
