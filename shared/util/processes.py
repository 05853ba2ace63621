"""Start and reliably stop trees of Flower processes.

Flower's server-side processes spawn children that escape a plain process-group
kill: ``flower-superlink`` starts ``flower-superexec`` in a *new session*, which in
turn starts ``flwr-serverapp`` / ``flwr-simulation`` (and Ray workers). To never
leave anything behind, every process we start carries a marker in its environment
(``ENDOFED_RUNTIME_ID=<token>``), inherited by all its descendants whatever their
session. Stopping then means: SIGTERM the root's process group, wait, SIGKILL it,
and finally SIGTERM/SIGKILL every remaining process that carries the marker or was
seen as a descendant (Linux ``/proc``; elsewhere only the process group is killed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER_ENV = "ENDOFED_RUNTIME_ID"
_PROC = Path("/proc")


def _stat_fields(pid: int) -> tuple[str, int, int] | None:
    """Return ``(state, ppid, starttime)`` of ``pid`` from /proc, or None if gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def _all_pids() -> list[int]:
    if not _PROC.is_dir():
        return []
    return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]


def is_alive(pid: int, starttime: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, still has ``starttime``.

    ``pid <= 0`` is never a process (``os.kill`` would address a process group).
    """
    if pid <= 0:
        return False
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return starttime is None or fields[2] == starttime


def descendants(pid: int) -> dict[int, int]:
    """Map of every live descendant pid of ``pid`` to its start time (Linux only)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for p in _all_pids():
        fields = _stat_fields(p)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        children.setdefault(fields[1], []).append(p)
        starts[p] = fields[2]
    found: dict[int, int] = {}
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        if child in found:
            continue
        found[child] = starts[child]
        stack.extend(children.get(child, []))
    return found


def marked_processes(token: str) -> dict[int, int]:
    """Map of live pids whose environment holds ``ENDOFED_RUNTIME_ID=token``."""
    needle = f"{MARKER_ENV}={token}".encode()
    found: dict[int, int] = {}
    own = os.getpid()
    for pid in _all_pids():
        if pid == own:
            continue
        try:
            environ = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in environ.split(b"\0"):
            fields = _stat_fields(pid)
            if fields is not None and fields[0] not in ("Z", "X"):
                found[pid] = fields[2]
    return found


def _signal_all(pids: Mapping[int, int], sig: signal.Signals) -> None:
    for pid, start in pids.items():
        if is_alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(pids: Mapping[int, int], timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    remaining = dict(pids)
    while remaining:
        remaining = {p: s for p, s in remaining.items() if is_alive(p, s)}
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return remaining


@dataclass
class ManagedProcess:
    """A process we started in its own session, with its log file."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    token: str
    seen: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """Pid of the root (also its process group and session id)."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the root has not exited (reaps it if it has)."""
        return self.popen.poll() is None

    def remember_descendants(self) -> None:
        """Record the current descendants so they can be killed after reparenting."""
        if self.running():
            self.seen.update(descendants(self.pid))

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the process log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the tree, SIGKILL what survives ``grace`` seconds; reap the root."""
        self.remember_descendants()
        tree = dict(self.seen)
        stop_group(self.popen, grace=grace, name=self.name)
        kill_remaining(tree, grace=min(grace, 5.0))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(popen: subprocess.Popen[Any], grace: float = 5.0, *, name: str = "") -> None:
    """Stop the process group that ``popen`` leads (started with ``start_new_session``).

    A running root gets SIGTERM and ``grace`` seconds, then the group gets SIGKILL; a
    root that is gone already still has its group SIGKILLed (children may remain).
    The root is reaped. Processes that left the group are not touched (see
    :meth:`ManagedProcess.stop` and :func:`stop_all` for whole trees).
    """
    if popen.poll() is None:
        _signal_group(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", name or popen.args,
                           popen.pid)
    _signal_group(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace)


def kill_remaining(pids: Mapping[int, int], grace: float = 5.0) -> None:
    """SIGTERM then (after ``grace`` s) SIGKILL every still-live pid of ``pids``."""
    alive = {p: s for p, s in pids.items() if is_alive(p, s)}
    if not alive:
        return
    logger.debug("terminating leftover processes %s", sorted(alive))
    _signal_all(alive, signal.SIGTERM)
    alive = _wait_gone(alive, grace)
    if alive:
        logger.warning("killing leftover processes %s", sorted(alive))
        _signal_all(alive, signal.SIGKILL)
        _wait_gone(alive, 2.0)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    token: str,
    log_path: Path,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` in a new session, marked with ``token``, logging to ``log_path``."""
    full_env = dict(env)
    full_env[MARKER_ENV] = token
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(  # noqa: S603 - argv is built by us, no shell
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logger.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return ManagedProcess(name, list(argv), popen, log_path, token)


def stop_all(processes: Iterable[ManagedProcess], token: str, grace: float = 10.0) -> None:
    """Stop ``processes`` concurrently, then any process still marked with ``token``.

    All process groups get SIGTERM at once (Flower processes shut down gracefully in
    ~2 s each), survivors of ``grace`` seconds get SIGKILL.
    """
    procs = list(processes)
    tree: dict[int, int] = {}
    for proc in procs:
        proc.remember_descendants()
        tree.update(proc.seen)
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM if proc.running() else signal.SIGKILL)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", proc.name, proc.pid)
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5.0)
    tree.update(marked_processes(token))
    kill_remaining(tree, grace=min(grace, 5.0))
