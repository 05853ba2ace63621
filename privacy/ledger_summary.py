"""A read-only view of a site's privacy ledger, for people (``endofed site ledger``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from endofed.privacy.ledger import FORMAT, LedgerError


def read_ledger_summary(path: Path | str) -> dict[str, Any]:
    """A read-only view of a ledger file for people: budget, spent, and each study.

    Never writes (unlike opening a :class:`PrivacyLedger`, which applies the configured
    budget). Epsilon per study is the cumulative ``epsilon_after`` of its last round.

    Raises:
        FileNotFoundError: no ledger at ``path``.
        LedgerError: the file is not a readable EndoFed ledger.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8 text
        raise LedgerError(f"privacy ledger {path} is unreadable ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LedgerError(f"{path} is not an EndoFed privacy ledger")
    runs: dict[str, dict[str, Any]] = {}
    for r in payload.get("rounds", []):
        key = r.get("study") or r["run"]
        run = runs.setdefault(key, {"run": r["run"], "study": key, "rounds": 0, "done": 0,
                                    "interrupted": 0, "running": 0, "steps": 0,
                                    "started": r["started"], "finished": None,
                                    "epsilon_after": 0.0})
        run["rounds"] += 1
        run[r["status"]] = run.get(r["status"], 0) + 1
        run["steps"] += int(r["steps"])
        run["finished"] = r.get("finished") or run["finished"]
        run["epsilon_after"] = float(r["epsilon_after"])
    target = float(payload["epsilon_target"])
    spent = float(payload["epsilon_spent"])
    return {
        "path": str(path),
        "site": payload["site"],
        "epsilon_target": target,
        "epsilon_spent": spent,
        "epsilon_left": max(0.0, target - spent),
        "delta": float(payload["delta"]),
        "accountant": payload["accountant"],
        "runs": list(runs.values()),
        "events": list(payload.get("events", [])),
        "updated": payload.get("updated"),
    }
