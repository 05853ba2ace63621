"""The approval gate: is this app bundle one the hospital approved?

The gate sees the FAB only as bytes. It hashes them itself (the hash the SuperNode
reports, ``Fab.hash_str``, must agree: a bundle whose bytes do not match its declared
hash is refused) and asks the site's :class:`~endofed.privacy.approvals.ApprovalStore`.
Nothing of the bundle is unpacked, installed or imported, approved or not: an approved
app runs the hospital's own installed EndoFed ClientApp.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from flwr.supercore.fab import Fab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one bundle (``app_hash`` is the sha256 of its bytes)."""

    approved: bool
    app_hash: str
    reason: str
    matched: str | None = None


class AppGate:
    """Checks bundles against the approvals kept in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        from endofed.privacy.approvals import ApprovalStore

        self.store = ApprovalStore(state_dir)

    def check(self, fab: Fab) -> GateDecision:
        """Decide for one bundle; re-read the approvals each time (a revoke applies at
        the next message)."""
        digest = hashlib.sha256(fab.content).hexdigest()
        if fab.hash_str and fab.hash_str != digest:
            log.warning("app bundle declares hash %s but its bytes hash to %s; refused",
                        fab.hash_str[:16], digest[:16])
            return GateDecision(False, digest, "the bundle's bytes do not match its hash")
        decision = self.store.check(digest, fab.content)
        return GateDecision(bool(decision.approved), digest, str(decision.reason),
                            decision.matched)
