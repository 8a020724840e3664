"""The `workbench` command line's arguments: the parser, and the run flags generated from RunSpec.

    from workbench.cli_args import build_parser, spec_from_args
    args = build_parser().parse_args(["train", "--preset", "quick", "--max-steps", "10"])
    spec = spec_from_args(args)          # preset, then --config FILE, then the flags on top

Every RunSpec field becomes a flag with its help, range and choices (`--flag/--no-flag` for switches), so a new
field needs no CLI code. The commands themselves live in `workbench.cli`, which dispatches on `args.command`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_ab import add_ab_arguments
from .cli_rate import add_rate_command
from .config import PRESETS, ConfigError, RunSpec, json_object, spec_fields


class UsageError(Exception):
    """The command line cannot be parsed; the message is one line (argparse's usage block is not printed)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- run spec flags -----------------------------------------------------------------------------------------
def add_spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run settings (override the preset and the config file)")
    for f in spec_fields():
        md, rng = f.metadata, f.metadata.get("range")
        text = md["help"].replace("%", "%%") + (f" [{rng[0]}..{rng[1]}]" if rng else "")
        kw = {"dest": f.name, "default": argparse.SUPPRESS}  # unset flags leave the preset/config value alone
        if f.name == "rewards":
            g.add_argument(
                "--reward", action="append", metavar="'NAME:WEIGHT,K=V'", help=text + " Repeatable.", **kw
            )
            continue
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        text += f" (default {f.default})" if f.default not in ("", None) else ""
        if f.type == "bool":
            g.add_argument(*names, action=argparse.BooleanOptionalAction, help=text, **kw)
        else:
            cast = {"int": int, "float": float}.get(f.type, str)
            g.add_argument(
                *names, type=cast, choices=md.get("choices"), metavar=f.name.upper(), help=text, **kw
            )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Preset (or the defaults), then the config file on top, then the flags on top."""
    if args.preset and args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    d = (PRESETS[args.preset] if args.preset else RunSpec()).to_dict()
    if args.config:
        try:
            text = Path(args.config).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {args.config}: {e.strerror}") from None
        d.update(json_object(text, f"config file {args.config}"))
    d.update({f.name: getattr(args, f.name) for f in spec_fields() if hasattr(args, f.name)})
    return RunSpec.from_dict(d)


WEIGHTS = ("last", "best")
WEIGHTS_HELP = (
    "which weights: last (the final adapter, else the latest checkpoint; the default) or best (those with the best "
    "held-out score during training, by the run's keep_best_by)"
)


# --- the parser ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description="GRPO Workbench: try GRPO on a small model.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    from .lab.cli import add_parsers  # the reward design lab: preflight, replay

    add_parsers(cmd)
    return p


def decoding_args(args: argparse.Namespace) -> dict:
    """Compare's decoding flags (both `compare` forms), with progress lines on stderr."""
    import sys

    return dict(mode=args.mode, seed=args.seed, max_new_tokens=args.max_new_tokens,
                progress=lambda frac, msg: print(f"[{frac:4.0%}] {msg}", file=sys.stderr, flush=True))  # fmt: skip
