"""The `workbench` command line's parser: every subcommand and its flags. The subcommand modules add their own
(cli_ab.py: the A/B flags, cli_rate.py: `rate`, lab/cli.py: `preflight` and `replay`); the commands themselves live
in cli.py, which dispatches on `args.command`.
"""

from __future__ import annotations

import argparse

from .cli_ab import add_ab_arguments
from .cli_args import WEIGHTS, WEIGHTS_HELP, Parser, add_spec_flags
from .cli_rate import add_rate_command
from .config import PRESETS
from .lab.cli import add_parsers


# --- the parser ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="workbench", description="GRPO Workbench: try GRPO on a small model.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def cmd(name: str, help: str, run: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        if run:
            c.add_argument("run", metavar="RUN", help="run id (see `workbench runs`)")
        c.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
        return c

    t = cmd("train", "start a GRPO run and follow its progress (Ctrl-C stops it gracefully)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset run spec")
    t.add_argument(
        "--config", metavar="FILE", help="a JSON run spec (e.g. a run's spec.json); flags override"
    )
    t.add_argument("--detach", action="store_true", help="start the run and return at once")
    add_spec_flags(t)
    cmd("runs", "list runs (runs left running by a dead worker are marked interrupted)")
    cmd("show", "status, metrics and the latest completions of a run", run=True)
    r = cmd("resume", "continue an interrupted or stopped run from its last checkpoint", run=True)
    r.add_argument("--detach", action="store_true", help="resume and return at once")
    cmd("stop", "stop a run after its current step (saves the adapter)", run=True)
    cmd("kill", "kill a run's worker now (resume it later from its checkpoint)", run=True)
    c = cmd("compare", "base vs tuned model on the run's held-out prompts, with scores", run=True)
    c.add_argument(
        "--mode",
        choices=("greedy", "sampled"),
        default=None,
        help="decoding (default: the run's compare_mode)",
    )
    c.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    c.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: the run's max_completion_length"
    )
    c.add_argument("--csv", metavar="FILE", help="also write the per-prompt table to FILE")
    c.add_argument("--weights", choices=WEIGHTS, default="last", help=WEIGHTS_HELP)
    add_ab_arguments(t, c)  # train --variant, compare RUN1 RUN2 ... (an A/B of reward designs)
    e = cmd("export", "write the adapter (or the merged model), or a TRL training script", run=True)
    to = e.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="DIR", help="folder for the adapter (a new or empty folder)")
    to.add_argument("--trl", metavar="DIR", help="folder for a TRL script of this run's spec")
    e.add_argument("--merged", action="store_true", help="with --to: merge the adapter into the base model")
    e.add_argument("--weights", choices=WEIGHTS, default="last", help=WEIGHTS_HELP)
    m = cmd("models", "list models; --prepare converts the bundled one")
    m.add_argument("--prepare", action="store_true", help="convert the bundled model now (once)")
    cmd("worker", "internal: the training process of a run", run=True)
    s = cmd("standby", "internal: a worker started before its run, which it reads from stdin (standby.py)")
    s.add_argument("spec", metavar="SPEC_JSON", help="the run spec to warm up for (the form's)")
    add_rate_command(cmd)
    add_parsers(cmd)  # the reward design lab: preflight, replay
    return p
