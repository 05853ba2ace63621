"""Packages named like EndoFed's folders (``server``, ``client``, ``shared``) cannot
replace EndoFed's apps: a real simulation round with them first on every path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from endofed.simulations.federated import run_simulation

POISON = 'raise ImportError("foreign package {name!r} was imported instead of EndoFed\'s")\n'


def _foreign_packages(root: Path) -> Path:
    for name in ("server", "client", "shared", "privacy", "simulations"):
        pkg = root / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(POISON.format(name=name))
        (pkg / "app.py").write_text(POISON.format(name=f"{name}.app"))
    return root


@pytest.mark.slow
def test_a_round_runs_with_foreign_server_client_shared_first_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = _foreign_packages(tmp_path / "foreign")
    # First on sys.path here and in every process the run starts (SuperLink,
    # ServerApp, the ClientApps in the simulation workers).
    monkeypatch.syspath_prepend(str(foreign))
    monkeypatch.setenv("PYTHONPATH", str(foreign))
    armed = subprocess.run([sys.executable, "-c", "import server"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(foreign)},
                           cwd=tmp_path)
    assert "foreign package 'server'" in armed.stderr  # the trap is armed in a new process
    result = run_simulation(
        {"preset": "tiny", "image-size": 64, "batch-size": 4, "local-epochs": 1,
         "max-steps": 1, "synthetic-images-per-site": 6, "threads": 1,
         "num-server-rounds": 1, "seed": 1, "amp": False},
        num_sites=2, runs_dir=tmp_path / "runs", run_name="foreign", timeout=600,
    )
    assert (result.run_dir / "checkpoints" / "round_001.pt").exists()
    logs = "\n".join(p.read_text(errors="replace")
                     for p in (result.run_dir / "logs").rglob("*") if p.is_file())
    assert "foreign package" not in logs
