"""Helpers for the runtime tests (imported by module name; no package needed)."""

from __future__ import annotations

from pathlib import Path


def expected_fedavg(num_nodes: int, rounds: int, delta: float = 1.0) -> float:
    """Closed-form FedAvg of the smoke app, computed independently of the app.

    Node p returns ``w + (p + 1) * delta`` with weight ``10 * (p + 1)``, so every round
    moves each coordinate by ``sum((p+1)^2) / sum(p+1) * delta``.
    """
    ks = range(1, num_nodes + 1)
    return rounds * delta * sum(k * k for k in ks) / sum(ks)


def cmdline(pid: int) -> str:
    """Command line of ``pid`` ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"
