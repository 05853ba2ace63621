"""Loopback endpoints: a free port for a process we start, and proof that it took it.

A port found free may be taken by another process before ours binds it, so a start
only counts once *our* process answers its ``/health`` endpoint on that port.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request

from endofed.shared.util.processes import ManagedProcess
from endofed.simulations.flwr_run import FlowerRunError

LOOPBACK = "127.0.0.1"


def find_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_http_health(
    port: int, proc: ManagedProcess, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Poll ``http(s)://127.0.0.1:port/health`` until ``proc`` itself answers 2xx.

    With ``ssl_context`` the check goes over HTTPS and verifies the SuperLink's
    certificate (so a certificate without the loopback SAN fails here, early).
    Raises :class:`FlowerRunError` if ``proc`` exits or ``timeout`` passes first.
    """
    scheme = "https" if ssl_context is not None else "http"
    url = f"{scheme}://{LOOPBACK}:{port}/health"
    bound_marker = f"running on {scheme}://{LOOPBACK}:{port} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise FlowerRunError(
                f"{proc.name} exited with code {proc.popen.returncode} before becoming "
                f"ready; see {proc.log_path}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(  # noqa: S310
                url, timeout=1.0, context=ssl_context
            ) as response:
                healthy = 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            healthy = False
        # The answer must come from *our* process (the free port may have been taken
        # by another SuperLink in between): it logs the address it bound.
        if healthy and bound_marker in proc.log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise FlowerRunError(
        f"{proc.name} did not answer {url} within {timeout:.0f}s; see {proc.log_path}"
    )
