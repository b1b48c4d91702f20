"""`vsr index ...` subcommands."""

from __future__ import annotations

import argparse
import json


def _info(args: argparse.Namespace) -> int:
    import vsr_index

    print(json.dumps({"version": vsr_index.__version__, "simd": vsr_index.simd_info()}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="vector index tools")
    sub = parser.add_subparsers(dest="index_command", metavar="INDEX_COMMAND")
    info = sub.add_parser("info", help="print version and the SIMD kernels this CPU uses")
    info.set_defaults(func=_info)
    parser.set_defaults(func=lambda a: parser.print_help() or 2)
