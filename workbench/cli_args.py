"""The `workbench` command line's shared argument pieces: the run flags generated from RunSpec, reading a spec back
from them, Compare's decoding flags. The parser that puts every subcommand together is cli_parser.py.

    from workbench.cli_parser import build_parser
    args = build_parser().parse_args(["train", "--preset", "quick", "--max-steps", "10"])
    spec = spec_from_args(args)          # preset, then --config FILE, then the flags on top

Every RunSpec field becomes a flag with its help, range and choices (`--flag/--no-flag` for switches), so a new
field needs no CLI code. The commands themselves live in `workbench.cli`, which dispatches on `args.command`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import PRESETS, ConfigError, RunSpec, json_object, spec_fields


class UsageError(Exception):
    """The command line cannot be parsed; the message is one line (argparse's usage block is not printed)."""


class Parser(argparse.ArgumentParser):
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


def decoding_args(args: argparse.Namespace) -> dict:
    """Compare's decoding flags (both `compare` forms), with progress lines on stderr."""
    import sys

    return dict(mode=args.mode, seed=args.seed, max_new_tokens=args.max_new_tokens,
                progress=lambda frac, msg: print(f"[{frac:4.0%}] {msg}", file=sys.stderr, flush=True))  # fmt: skip
