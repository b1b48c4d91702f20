"""`vsr report`: rebuild report.html (vsr_train.report_html) from `vsr eval` or `vsr demo` folders."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vsr_train.report_html import OUTCOMES, ReportSettings, report_eval_runs


def _report_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs: list[Path] = []
    plots: list[Path] = []
    summary: dict | None = None
    for folder in args.runs:
        demo_summary = folder / "summary.json"
        data = json.loads(demo_summary.read_text()) if demo_summary.is_file() else {}
        if "results" in data and (folder / "eval").is_dir():  # a `vsr demo` folder
            summary = data
            runs += [folder / "eval" / key for key in data["results"]]
            plots += sorted((folder / "plots").glob("*.png"))
        else:
            runs.append(folder)
            plots += [p for p in (folder / "per_turn.png",) if p.is_file()]
    settings = ReportSettings(
        max_cards=args.max_cards,
        all_of=args.all_of,
        thumbnails_per_strip=args.thumbnails,
        thumbnail_height=args.thumbnail_height,
        max_bytes=int(args.max_mb * 1e6),
    )
    out = args.out or args.runs[0]
    print(report_eval_runs(out, runs, plots, settings, summary))
    return 0


def register_report(subparsers: argparse._SubParsersAction) -> None:
    defaults = ReportSettings()
    parser = subparsers.add_parser(
        "report",
        help="write report.html: results, plots and a card per query showing what the agent did",
        description=(
            "Rebuild report.html from `vsr eval` folders or a `vsr demo` folder (which `vsr eval` and "
            "`vsr demo` already write), e.g. to show every query of one failure kind."
        ),
    )
    parser.add_argument("runs", type=Path, nargs="+", help="`vsr eval` output folders or a `vsr demo` folder")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder of report.html (default: the first run)"
    )
    parser.add_argument("--max-cards", type=int, default=defaults.max_cards, help="cards per variant")
    parser.add_argument(
        "--all-of", choices=sorted(OUTCOMES), default=None, help="also show every query with this outcome"
    )
    parser.add_argument(
        "--thumbnails", type=int, default=defaults.thumbnails_per_strip, help="thumbnails per video strip"
    )
    parser.add_argument(
        "--thumbnail-height", type=int, default=defaults.thumbnail_height, help="thumbnail height (pixels)"
    )
    parser.add_argument(
        "--max-mb", type=float, default=defaults.max_bytes / 1e6, help="cap on the page and its files (MB)"
    )
    parser.set_defaults(func=_report_command)
