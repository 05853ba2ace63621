"""The site page: a hospital's approvals, privacy ledger per study and audit trail.

Reads the SuperNode's state dir (``STATE_DIR``) through the privacy package's own
readers: :class:`~endofed.privacy.approvals.ApprovalStore`,
:func:`~endofed.privacy.ledger_summary.read_ledger_summary` (never writes, unlike
opening a ledger) and :class:`~endofed.privacy.audit_trail.AuditTrail`. A reader that
is not installed in this release, or a file that is missing or unreadable, shows as
"not available" with the reason instead of failing the page.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

from endofed.privacy.ledger import LEDGER_NAME, LedgerError
from endofed.privacy.ledger_summary import read_ledger_summary

log = logging.getLogger(__name__)

AUDIT_TRAIL_NAME = "audit-trail.jsonl"
#: Audit entries shown on the page (newest first); the JSON API returns them all.
PAGE_ENTRIES = 200


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        log.debug("%s not available: %s", name, exc)
        return None


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dict(obj) if isinstance(obj, dict) else {"value": str(obj)}


def approvals(state_dir: Path) -> dict[str, Any]:
    """``{"available": bool, "reason": str, "items": [...]}`` of the site's approvals."""
    mod = _module("endofed.privacy.approvals")
    if mod is None or not hasattr(mod, "ApprovalStore"):
        return {"available": False, "reason": "approvals are not part of this release",
                "items": []}
    try:
        items = mod.ApprovalStore(state_dir).list(include_revoked=True)
    except Exception as exc:  # noqa: BLE001 - show why, do not fail the page
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "items": []}
    out = []
    for a in items:
        d = _as_dict(a)
        d["active"] = d.get("revoked_at") is None
        out.append(d)
    return {"available": True, "reason": "" if out else "no approvals yet", "items": out}


def ledger_files(state_dir: Path) -> list[Path]:
    """Ledger files of the state dir: ``<site>/privacy-ledger.json`` (and one at the top)."""
    found = sorted(state_dir.glob(f"*/{LEDGER_NAME}"))
    if (state_dir / LEDGER_NAME).is_file():
        found.insert(0, state_dir / LEDGER_NAME)
    return found


def ledgers(state_dir: Path) -> dict[str, Any]:
    """Each ledger's summary (budget, spent, per study: rounds, steps, epsilon)."""
    out, problems = [], []
    for path in ledger_files(state_dir):
        try:
            out.append(read_ledger_summary(path))
        except (LedgerError, OSError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    reason = "" if out else f"no privacy ledger under {state_dir}"
    return {"available": bool(out), "reason": "; ".join(problems) or reason, "items": out}


def audit_trail(state_dir: Path, *, limit: int | None = None) -> dict[str, Any]:
    """The audit trail's entries (newest first, at most ``limit``) and its verification."""
    mod = _module("endofed.privacy.audit_trail")
    path = state_dir / AUDIT_TRAIL_NAME
    if mod is None or not hasattr(mod, "AuditTrail"):
        return {"available": False, "reason": "the audit trail is not part of this release",
                "entries": [], "total": 0, "verification": None}
    if not path.is_file():
        return {"available": False, "reason": f"no audit trail at {path}", "entries": [],
                "total": 0, "verification": None}
    try:
        trail = mod.AuditTrail(path)
        entries = list(trail.entries())
        verification = _as_dict(trail.verify())
    except Exception as exc:  # noqa: BLE001 - show why, do not fail the page
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "entries": [],
                "total": 0, "verification": None}
    newest = list(reversed(entries))
    return {"available": True, "reason": "", "total": len(entries),
            "entries": newest[:limit] if limit else newest, "verification": verification}


def site_overview(state_dir: Path, *, limit: int | None = PAGE_ENTRIES) -> dict[str, Any]:
    """Everything the site page shows."""
    state_dir = Path(state_dir)
    return {"state_dir": str(state_dir), "approvals": approvals(state_dir),
            "ledgers": ledgers(state_dir), "audit": audit_trail(state_dir, limit=limit)}
