"""The single `vsr` command. Each installed vsr package contributes subcommands through the
`vsr.commands` entry-point group: an entry point names a function `register(subparsers)` that adds
its subparser(s) and sets `func` on them."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsr", description="VideoSearch-R1: search, refine, ground.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="vsr.commands"), key=lambda e: e.name):
        register = ep.load()
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
