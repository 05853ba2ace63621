"""``endofed site ledger``: a hospital's privacy budget, read from its own disk."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register_ledger(actions: argparse._SubParsersAction) -> None:
    """Add the ``ledger`` action to the ``endofed site`` parser."""
    ledger = actions.add_parser(
        "ledger",
        help="show a site's privacy budget: target, spent, and each study",
        description="Read the site's persistent privacy ledger (never writes it) and show "
        "its epsilon target, what every study spent, and what is left. Exits 1 if there "
        "is no ledger yet.",
        epilog="example:\n  endofed site ledger --site-name hosp-a --state-dir /srv/endofed/state",
    )
    ledger.add_argument("--site-name", required=True, metavar="NAME",
                        help="the site's name (its node config site-name)")
    ledger.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="the SuperNode's state-dir (default ~/.endofed/state)")
    ledger.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ledger.set_defaults(func=run_ledger)


def run_ledger(args: argparse.Namespace) -> int:
    from endofed.privacy.ledger import LedgerError, ledger_path
    from endofed.privacy.ledger_summary import read_ledger_summary
    from endofed.shared.config import EndoFedConfig

    node = {"site-name": args.site_name, "data-path": "."}
    if args.state_dir is not None:
        node["state-dir"] = str(args.state_dir)
    path = ledger_path(EndoFedConfig.from_flower({}, node), args.site_name)
    try:
        summary = read_ledger_summary(path)
    except FileNotFoundError:
        print(f"error: no privacy ledger for site {args.site_name!r} at {path}",
              file=sys.stderr)
        return 1
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print(summary)
    return 0


def _print(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(
        f"[bold]Site {s['site']}[/]: epsilon spent {s['epsilon_spent']:.4g} of "
        f"{s['epsilon_target']:.4g} (left {s['epsilon_left']:.4g}), delta {s['delta']:g}, "
        f"{s['accountant']} accountant\nledger: {s['path']}", soft_wrap=True
    )
    table = Table(title="Studies")
    for col in ("run", "study", "rounds", "done", "interrupted", "steps", "epsilon after",
                "started", "finished"):
        table.add_column(col, justify="left" if col in ("run", "study", "started", "finished")
                         else "right")
    for r in s["runs"]:
        study = r["study"] if r["study"] != r["run"] else "-"
        table.add_row(r["run"], study[:12], str(r["rounds"]), str(r["done"]),
                      str(r["interrupted"]),
                      str(r["steps"]), f"{r['epsilon_after']:.4g}", r["started"],
                      r["finished"] or "-")
    console.print(table)
    for e in s["events"]:
        console.print(f"{e.get('time')}: {e.get('event')} {e.get('from')} -> {e.get('to')}",
                      markup=False, highlight=False)
