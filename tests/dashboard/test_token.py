"""Off loopback the dashboard requires its token on every request."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from endofed.server.dashboard import create_app
from endofed.server.dashboard.security import COOKIE, is_loopback
from tests.dashboard.conftest import free_port


def test_loopback_detection() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.0.1.1", "::1", "localhost", "[::1]")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.168.1.10", "::", "example.org")))


def test_token_checked_on_every_request(runs_dir: Path) -> None:
    c = TestClient(create_app(runs_dir, token="s3cret"))
    for url in ("/", "/api/runs", "/static/dashboard.css", "/runs/study-a/fake/files/rounds.png"):
        assert c.get(url).status_code == 401, url
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/runs", headers={"X-EndoFed-Token": "s3cret"}).status_code == 200
    assert c.post("/api/predict?run=study-a/fake&model=final_model",
                  content=b"x").status_code == 401
    first = c.get("/?token=s3cret")
    assert first.status_code == 200 and first.cookies.get(COOKIE) == "s3cret"
    assert c.get("/api/runs").status_code == 200  # the cookie now carries it
    c.cookies.clear()
    assert c.get("/api/runs").status_code == 401


def test_cli_off_loopback_generates_and_requires_a_token(runs_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "endofed.cli", "dashboard", str(runs_dir), "--host", "0.0.0.0",
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "dashboard on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"endofed dashboard exited {proc.returncode}")
        m = re.search(r"\?token=(\S+)", line)
        assert m, line
        token = m[1]
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                r = httpx.get(f"{base}/api/runs", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 401
        ok = httpx.get(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()[0]["id"] == "study-a/fake"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from endofed.cli import main

    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"endofed dashboard: {tmp_path / 'nope'}: runs folder not found or not a folder")
    assert main(["dashboard"]) == 2
    assert "RUNS_DIR, --site DIR or both" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path), "--token", " "]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["dashboard", str(tmp_path), "--port", "70000"])
    assert exc.value.code == 2
