"""One run's warm state at a time: released when the run id changes or the run goes idle.

The warm state itself (data index, datasets with their preprocessing cache, built
model, DP engine, ledger handle) lives in :mod:`endofed.client.runtime`, keyed by the
run's configuration; this class decides *when* to drop it. Flower does not tell a
SuperNode that a run ended, so a run whose last message is older than ``idle_release``
seconds counts as ended.
"""

from __future__ import annotations

import logging
import time

from endofed.client.runtime import RUNTIME_STATS, release_site_runtimes

log = logging.getLogger(__name__)


class RunCache:
    """Tracks the run whose state is warm; releases it on a new run or when idle."""

    def __init__(self, idle_release: float = 900.0) -> None:
        self.idle_release = idle_release
        self.run_id: int | None = None
        self.messages = 0  # messages served for the current run
        self.releases = 0
        self._last = time.monotonic()

    def enter(self, run_id: int) -> None:
        """A message of ``run_id`` is about to be served."""
        if self.run_id is not None and run_id != self.run_id:
            log.info("run %s follows run %s: releasing the previous run's state",
                     run_id, self.run_id)
            self.release()
        if self.run_id != run_id:
            self.run_id, self.messages = run_id, 0
        self.messages += 1
        self._last = time.monotonic()

    def tick(self) -> None:
        """Called while idle: release a run that has had no message for too long."""
        if self.run_id is not None and time.monotonic() - self._last > self.idle_release:
            log.info("run %s idle for %.0fs: releasing its state", self.run_id,
                     self.idle_release)
            self.release()
            self.run_id = None

    def release(self) -> None:
        release_site_runtimes()
        self.releases += 1

    def stats(self) -> dict[str, int]:
        """What the audit entry records about the warm state."""
        return {"runtime_builds": RUNTIME_STATS["builds"],
                "runtime_hits": RUNTIME_STATS["hits"],
                "run_messages": self.messages, "run_releases": self.releases}
