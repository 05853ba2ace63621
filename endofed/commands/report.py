"""``endofed report RUN_DIR``: re-render a federated run's report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="re-render report.md and plots of a run directory",
        description="Re-render RUN_DIR/report.md and its plots from the run's metrics.csv "
        "(a federated run: runs/<run-name>). The model files are not touched.",
        epilog="example:\n  endofed report runs/demo/federated",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.server.report import render_run_report

    print(render_run_report(args.run_dir))
    return 0
