"""The `workbench` command line (same as `python -m workbench`).

workbench models [--prepare] [--json]     list models; convert the bundled one
"""

from __future__ import annotations

import argparse
import json
import sys

from . import models


def cmd_models(args: argparse.Namespace) -> int:
    if args.prepare:
        for name in models.BUNDLED:
            models.prepare_bundled(name)
    infos = models.list_models()
    if args.json:
        print(json.dumps([i.__dict__ for i in infos]))
    else:
        for i in infos:
            state = (
                f"prepared at {i.path}" if i.prepared else "not prepared (run: workbench models --prepare)"
            )
            print(f"{i.name:24s} {i.about} — {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="GRPO Workbench: try GRPO on a small model.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list models; --prepare converts the bundled one")
    m.add_argument("--prepare", action="store_true", help="convert the bundled model now (once)")
    m.add_argument("--json", action="store_true", help="print one JSON document")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (models.ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
