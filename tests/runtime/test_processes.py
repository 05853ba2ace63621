"""Process-tree cleanup: children that leave the process group are still killed."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

from endofed.shared.util.processes import marked_processes, spawn, stop_all


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


# A parent that starts a grandchild in a *new session* (as flower-superlink does with
# flower-superexec), writes its pid, ignores SIGTERM and sleeps.
_SCRIPT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def test_stop_all_kills_detached_grandchild_and_stubborn_parent(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    pid_file = tmp_path / "child.pid"
    proc = spawn(
        "stubborn",
        [sys.executable, "-c", _SCRIPT, str(pid_file)],
        env=dict(os.environ),
        token=token,
        log_path=tmp_path / "stubborn.log",
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) != os.getpgid(proc.pid)  # escaped the group
    assert set(marked_processes(token)) == {proc.pid, grandchild}

    start = time.monotonic()
    stop_all([proc], token, grace=1.0)
    assert time.monotonic() - start < 15
    assert proc.popen.returncode is not None
    assert not running(proc.pid)
    assert not running(grandchild)
    assert marked_processes(token) == {}
