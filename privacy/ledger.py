"""A site's persistent privacy ledger: what has been spent, on the site's own disk.

The ledger is one JSON file, ``<state-root>/<site-name>/privacy-ledger.json``, written
atomically (:mod:`endofed.shared.util.atomic`) while holding an exclusive lock on
``privacy-ledger.json.lock``, so concurrent processes of the same site cannot lose
each other's updates or overspend together.

It records every training round of every run as an entry with its DP-SGD charge
``(noise_multiplier, sample_rate, steps)``; the concatenation of these charges is the
accountant history (also written, merged, as ``history`` for readers). Nothing resets
it: a restarted SuperNode, a new run name or a crashed round all start from the file.

Write-ahead charging: :meth:`PrivacyLedger.reserve` charges a round's *planned* steps
before any training happens and refuses (:class:`~endofed.privacy.accounting.PrivacyBudgetError`)
when epsilon after the round would exceed the target. :meth:`PrivacyLedger.complete`
then replaces the charge with the steps actually taken. A round that never completes
(crash, killed process) keeps its full planned charge and is marked ``interrupted``
when the ledger is next opened, so a crash can only over-, never under-report.

Changing the budget of an existing ledger: the configured ``dp-epsilon``, ``dp-delta``
and ``dp-accountant`` always apply from now on; the spent history stays. Epsilon
spent is recomputed from the history under the current (delta, accountant), and each
change is logged as an event in the file. Lowering the target below what is already
spent makes the site decline every further round. :mod:`endofed.privacy.ledger_summary`
reads a ledger for people without writing it.

Default location (:func:`default_state_root`): node config ``state-dir`` if set;
in simulation (node config has ``partition-id``) ``<runs-dir>/_state``; otherwise
``~/.endofed/state`` (persistent, writable, never inside a checkout, and not beside
the data, which is often a read-only mount).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from endofed.privacy.accounting import (
    ACCOUNTANTS,
    HistoryEntry,
    PrivacyBudgetError,
    compress_history,
    compute_epsilon,
)
from endofed.shared.config import EndoFedConfig
from endofed.shared.util.atomic import atomic_write_json
from endofed.shared.util.processes import is_alive

try:  # POSIX advisory locks; Windows falls back to an exclusive lock file.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LEDGER_NAME = "privacy-ledger.json"
FORMAT = "endofed-privacy-ledger"
VERSION = 1

# Tolerance when comparing an epsilon with its target (accountant round-off).
_EPS_SLACK = 1e-9


class LedgerError(RuntimeError):
    """The ledger file is unreadable, inconsistent or belongs to another site."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not safe:
        raise LedgerError(f"site name {name!r} cannot name a ledger directory")
    return safe


def default_state_root(cfg: EndoFedConfig) -> Path:
    """Where per-site state lives when node config ``state-dir`` is not set."""
    if cfg.privacy.state_dir is not None:
        return Path(cfg.privacy.state_dir).expanduser()
    if cfg.site.partition_id >= 0:  # simulation: keep it with the runs
        return Path(cfg.federation.runs_dir).expanduser() / "_state"
    return Path.home() / ".endofed" / "state"


def ledger_path(cfg: EndoFedConfig, site_name: str) -> Path:
    """``<state-root>/<site-name>/privacy-ledger.json`` (absolute)."""
    return (default_state_root(cfg) / _safe_name(site_name) / LEDGER_NAME).resolve()


@dataclass
class RoundEntry:
    """One training round's DP-SGD charge and outcome."""

    id: str
    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    status: str  # "running" | "done" | "interrupted"
    planned_steps: int
    epsilon_after: float
    started: str
    finished: str | None = None
    pid: int = 0
    # The study's identity (the server's ``study-id``; older entries: empty = ``run``).
    study: str = ""

    @property
    def study_key(self) -> str:
        return self.study or self.run

    @property
    def charge(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class _State:
    site: str
    epsilon_target: float
    delta: float
    accountant: str
    rounds: list[RoundEntry] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=_now)

    def history(self) -> list[HistoryEntry]:
        return compress_history(r.charge for r in self.rounds)


class PrivacyLedger:
    """The persistent (epsilon, delta) account of one site.

    Args:
        path: the ledger file (its directory is created).
        site: site name stored in the file; opening another site's ledger fails.
        epsilon_target, delta, accountant: the configured budget; they apply even
            when the file holds other values (the change is logged, see module doc).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        site: str,
        epsilon_target: float,
        delta: float,
        accountant: str = "prv",
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(
                f"config key 'dp-accountant': unknown accountant {accountant!r}; "
                f"choose one of {sorted(ACCOUNTANTS)}"
            )
        if epsilon_target <= 0:
            raise ValueError(f"config key 'dp-epsilon': must be > 0, got {epsilon_target}")
        self.path = Path(path)
        self.site = site
        self.epsilon_target = float(epsilon_target)
        self.delta = float(delta)
        self.accountant = accountant
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the privacy state directory {self.path.parent}: {exc}; "
                "set node config state-dir to a writable folder"
            ) from exc
        with self._locked():
            state = self._read()
            changed = self._reconcile(state)
            if changed or not self.path.exists():
                self._write(state)
        self._state = state

    # -- public view ----------------------------------------------------------------
    @property
    def rounds(self) -> list[RoundEntry]:
        """All recorded rounds (a snapshot as of the last read)."""
        return list(self._state.rounds)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._state.events)

    def history(self) -> list[HistoryEntry]:
        """The accountant history: every round's charge, merged, in order."""
        return self._state.history()

    def epsilon_spent(self) -> float:
        """Epsilon of the recorded history under the configured delta and accountant."""
        return compute_epsilon(self.history(), delta=self.delta, accountant=self.accountant)

    def refresh(self) -> None:
        """Re-read the file (another process may have written it)."""
        with self._locked():
            self._state = self._read()

    def has_study(self, study: str) -> bool:
        """True if any round of study ``study`` was ever reserved (done, running or not).

        ``study`` is the server's ``study-id`` (or, from older servers, the run name).
        """
        return any(r.study_key == study for r in self._state.rounds)

    def rounds_done(self, study: str) -> int:
        """Number of completed rounds of study ``study``."""
        return sum(1 for r in self._state.rounds
                   if r.study_key == study and r.status == "done")

    # -- round protocol ---------------------------------------------------------------
    def reserve(
        self,
        *,
        run: str,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        study: str = "",
    ) -> tuple[RoundEntry, list[HistoryEntry]]:
        """Charge a round's planned steps before training (write-ahead).

        Returns the new entry and the history *before* it (to seed the accountant).

        Raises:
            PrivacyBudgetError: epsilon after the round would exceed the target; the
                ledger is left unchanged.
        """
        with self._locked():
            state = self._read()
            self._reconcile(state)
            before = state.history()
            spent = compute_epsilon(before, delta=self.delta, accountant=self.accountant)
            after = compute_epsilon(
                [*before, (noise_multiplier, sample_rate, steps)],
                delta=self.delta,
                accountant=self.accountant,
            )
            if after > self.epsilon_target + _EPS_SLACK:
                self._state = state
                raise PrivacyBudgetError(
                    f"site {self.site}: round {round} of run {run!r} ({steps} steps, noise "
                    f"multiplier {noise_multiplier:.4g}, sample rate {sample_rate:.4g}) would "
                    f"reach epsilon {after:.4g} > target {self.epsilon_target:.4g} "
                    f"(spent {spent:.4g}; ledger {self.path})",
                    spent=spent,
                    target=self.epsilon_target,
                )
            entry = RoundEntry(
                id=uuid.uuid4().hex,
                run=run,
                round=int(round),
                noise_multiplier=float(noise_multiplier),
                sample_rate=float(sample_rate),
                steps=int(steps),
                status="running",
                planned_steps=int(steps),
                epsilon_after=after,
                started=_now(),
                pid=os.getpid(),
                study=str(study),
            )
            state.rounds.append(entry)
            self._write(state)
            self._state = state
        return entry, before

    def complete(self, entry: RoundEntry, *, steps: int) -> float:
        """Record the steps a reserved round actually took; returns epsilon spent after it."""
        with self._locked():
            state = self._read()
            for stored in state.rounds:
                if stored.id == entry.id:
                    break
            else:
                raise LedgerError(f"{self.path}: round entry {entry.id} is missing")
            if steps > stored.planned_steps:
                log.warning(
                    "site %s: round %d took %d steps, more than the %d charged in advance",
                    self.site, stored.round, steps, stored.planned_steps,
                )
            stored.steps = int(steps)
            stored.status = "done"
            stored.finished = _now()
            upto = state.rounds[: state.rounds.index(stored) + 1]
            stored.epsilon_after = compute_epsilon(
                [r.charge for r in upto], delta=self.delta, accountant=self.accountant
            )
            self._write(state)
            self._state = state
        return compute_epsilon(state.history(), delta=self.delta, accountant=self.accountant)

    # -- file handling --------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        if fcntl is not None:
            with open(lock_path, "a+") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return
        import time  # pragma: no cover - non-POSIX fallback

        deadline = time.monotonic() + 60.0
        while True:
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise LedgerError(f"{lock_path}: lock held for over 60 s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            os.close(fd)
            os.unlink(lock_path)

    def _read(self) -> _State:
        if not self.path.exists():
            return _State(
                site=self.site,
                epsilon_target=self.epsilon_target,
                delta=self.delta,
                accountant=self.accountant,
            )
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8 text
            raise LedgerError(
                f"privacy ledger {self.path} is unreadable ({exc}); it must not be deleted or "
                "edited by hand - restore it from a backup"
            ) from exc
        if not isinstance(payload, dict):
            payload = {"format": type(payload).__name__}
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise LedgerError(
                f"{self.path} is not an EndoFed privacy ledger (format "
                f"{payload.get('format')!r} version {payload.get('version')!r})"
            )
        if payload.get("site") != self.site:
            raise LedgerError(
                f"{self.path} belongs to site {payload.get('site')!r}, not {self.site!r}"
            )
        try:
            rounds = [RoundEntry(**r) for r in payload.get("rounds", [])]
            return _State(
                site=payload["site"],
                epsilon_target=float(payload["epsilon_target"]),
                delta=float(payload["delta"]),
                accountant=str(payload["accountant"]),
                rounds=rounds,
                events=list(payload.get("events", [])),
                created=str(payload.get("created", _now())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"privacy ledger {self.path} is malformed: {exc}") from exc

    def _reconcile(self, state: _State) -> bool:
        """Apply the configured budget and close stale rounds; True if state changed."""
        changed = False
        for key, new in (
            ("epsilon_target", self.epsilon_target),
            ("delta", self.delta),
            ("accountant", self.accountant),
        ):
            old = getattr(state, key)
            if old != new:
                log.warning(
                    "site %s: privacy ledger %s changes %s from %s to %s (spent history kept)",
                    self.site, self.path, key, old, new,
                )
                state.events.append({"time": _now(), "event": f"{key}-changed",
                                     "from": old, "to": new})
                setattr(state, key, new)
                changed = True
        for r in state.rounds:
            if r.status == "running" and not _pid_alive(r.pid):
                log.warning(
                    "site %s: round %d of run %r never completed; keeping its full "
                    "charge of %d steps", self.site, r.round, r.run, r.steps,
                )
                r.status = "interrupted"
                changed = True
        return changed

    def _write(self, state: _State) -> None:
        history = state.history()
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "site": state.site,
            "epsilon_target": state.epsilon_target,
            "delta": state.delta,
            "accountant": state.accountant,
            "epsilon_spent": compute_epsilon(
                history, delta=state.delta, accountant=state.accountant
            ),
            "history": [list(h) for h in history],
            "rounds": [asdict(r) for r in state.rounds],
            "events": state.events,
            "created": state.created,
            "updated": _now(),
        }
        atomic_write_json(self.path, payload, indent=2)


def _pid_alive(pid: int) -> bool:
    """Whether the process that holds a "running" entry still exists (on this host).

    Our own process counts as alive: a "running" entry of ours that is not being
    trained any more (an exception escaped the round) is stale too, but the DP layer
    completes or abandons its entries explicitly.
    """
    return pid == os.getpid() or is_alive(pid)
