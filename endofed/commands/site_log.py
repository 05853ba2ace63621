"""``endofed site log``: what ran on this site's data and what left, from its audit trail."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from endofed.commands.site_approvals import DEFAULT_STATE_DIR, state_dir


def _iso_date(text: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or time (e.g. 2025-03-03 or 2025-03-03T14:00)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def register_log(actions: argparse._SubParsersAction) -> None:
    """Add the ``log`` action to the ``endofed site`` parser."""
    log = actions.add_parser(
        "log",
        help="show this site's audit trail: every message, what was received and sent",
        description="Read STATE_DIR/audit-trail.jsonl (never writes it): one entry per "
        "message the site runner handled, with the app hash, run, study, round, the "
        "keys and shapes received and sent, bytes, epsilon spent and refusals. "
        "--verify recomputes the hash chain and exits 1 when an entry was edited, "
        "deleted, reordered or inserted, or the last line is cut off. Exits 1 when "
        "there is no audit trail.",
        epilog="example:\n  endofed site log --since 2025-03-03 --state-dir /srv/endofed/state"
        "\n  endofed site log --verify",
    )
    log.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                     help=f"the site's state-dir (default: {DEFAULT_STATE_DIR})")
    log.add_argument("--json", action="store_true",
                     help="print the entries (or the verification) as JSON")
    log.add_argument("--since", type=_iso_date, default=None, metavar="ISO-DATE",
                     help="only entries at or after this UTC date/time")
    log.add_argument("--verify", action="store_true",
                     help="check the hash chain instead of listing; exit 1 if broken")
    log.set_defaults(func=run_log)


def run_log(args: argparse.Namespace) -> int:
    from endofed.privacy.audit_trail import AUDIT_TRAIL_NAME, AuditTrail

    path = state_dir(args) / AUDIT_TRAIL_NAME
    if not path.exists():
        print(f"error: no audit trail at {path}", file=sys.stderr)
        return 1
    trail = AuditTrail(path)
    if args.verify:
        v = trail.verify()
        if args.json:
            print(json.dumps({"ok": v.ok, "entries": v.entries,
                              "first_bad_seq": v.first_bad_seq, "message": v.message,
                              "head": trail.head() if v.ok else None}, indent=2))
        elif v.ok:
            print(f"{v.message}; last hash {trail.head()}")
        else:
            print(f"FAILED at entry {v.first_bad_seq}: {v.message}", file=sys.stderr)
        return 0 if v.ok else 1
    entries = trail.entries(since=args.since)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    _print(entries, path)
    return 0


def _shapes(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return "-"
    parts = []
    for k, v in d.items():
        shape = v.get("shape") if isinstance(v, dict) else v
        parts.append(f"{k}{list(shape) if isinstance(shape, list | tuple) else ''}")
    text = ", ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


def _print(entries: list[dict[str, Any]], path: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Audit trail {path} ({len(entries)} entries)")
    for col in ("seq", "time", "outcome", "message", "run", "study", "round", "app",
                "received", "sent", "bytes", "epsilon", "reason"):
        table.add_column(col, overflow="fold")
    for e in entries:
        eps = e.get("epsilon_spent")
        table.add_row(
            str(e.get("seq")), str(e.get("time", ""))[:19], str(e.get("outcome", "-")),
            str(e.get("message_type", "-")), str(e.get("run_id", "-")),
            str(e.get("study_id", "-"))[:12], str(e.get("round", "-")),
            str(e.get("app_hash", "-"))[:12], _shapes(e.get("received")),
            _shapes(e.get("sent")), str(e.get("sent_bytes", "-")),
            "-" if eps is None else f"{eps:.4g}" if isinstance(eps, int | float) else str(eps),
            str(e.get("reason") or ""),
        )
    Console(width=None if sys.stdout.isatty() else 220).print(table)
