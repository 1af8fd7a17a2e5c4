"""Command line: ``python -m probelib <command> ...`` (``--help`` lists the commands).

Each module that offers commands defines ``add_cli(subparsers)``, which adds its sub-parsers
and sets ``func`` (called with the parsed arguments; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from probelib import __version__

# Modules whose commands the CLI offers, in the order --help lists them.
CLI_MODULES = ["probelib.data.cli", "probelib.training", "probelib.corruptions", "probelib.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m probelib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"probelib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
