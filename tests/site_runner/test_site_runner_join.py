"""`endofed site join` supervises its SuperNode and site runner: both start, both stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from endofed.shared.util.processes import is_alive


def _children(pid: int) -> dict[str, int]:
    """The join's direct children by role (from /proc)."""
    out: dict[str, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) != pid:
            continue
        if "flower-supernode" in cmd:
            out["supernode"] = int(p.name)
        elif "endofed.client.runner" in cmd:
            out["runner"] = int(p.name)
    return out


def test_join_starts_supernode_and_runner_and_sigterm_stops_both(tmp_path, runner_hospitals):
    with socket.socket() as s:  # a SuperLink address nobody answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    join = subprocess.Popen(
        [sys.executable, "-m", "endofed.cli", "site", "join", "--superlink",
         f"127.0.0.1:{port}", "--data-path", str(runner_hospitals[0]), "--site-name", "a",
         "--state-dir", str(tmp_path / "state"), "--insecure"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        kids: dict[str, int] = {}
        while time.monotonic() < deadline and len(kids) < 2 and join.poll() is None:
            kids = _children(join.pid)
            time.sleep(0.5)
        assert set(kids) == {"supernode", "runner"}, (kids, join.poll())
        secret = tmp_path / "state" / "site-runner.secret"
        assert secret.stat().st_mode & 0o077 == 0  # only the service user reads it
        time.sleep(3)  # both keep running (the SuperNode retries the SuperLink)
        assert all(is_alive(p) for p in kids.values())
        join.send_signal(signal.SIGTERM)
        code = join.wait(timeout=60)
        out = join.stdout.read()
        assert code == 0, out
        assert not any(is_alive(p) for p in kids.values())
        assert "effective settings" in out
    finally:
        if join.poll() is None:
            os.kill(join.pid, signal.SIGKILL)
