"""Process liveness and cleanup: groups, and children that leave the group, are killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from endofed.shared.util.processes import (
    is_alive,
    marked_processes,
    spawn,
    stop_all,
    stop_group,
)


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


def test_is_alive_never_takes_a_pid_below_one_for_a_process() -> None:
    assert is_alive(os.getpid())
    assert not is_alive(0)  # os.kill(0, ...) would address our own process group
    assert not is_alive(-1)
    assert not is_alive(os.getpid(), starttime=-5)  # same pid, other start time


_STUBBORN_GROUP = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def test_stop_group_kills_a_root_that_ignores_sigterm_and_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    popen = subprocess.Popen([sys.executable, "-c", _STUBBORN_GROUP, str(pid_file)],
                             start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    start = time.monotonic()
    stop_group(popen, grace=1.0)
    assert time.monotonic() - start < 10
    assert popen.returncode is not None  # reaped
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)
