"""The import contract (pyproject ``[tool.importlinter]``) holds, and it has teeth."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lint_imports", REPO / "tools" / "lint_imports.py")
lint_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint_imports)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    shutil.copy2(REPO / "pyproject.toml", tree / "pyproject.toml")
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"}
    return subprocess.run([str(exe), "--no-cache", "pyproject.toml"], cwd=tree, text=True,
                          capture_output=True, env=env, timeout=300)


def test_the_layers_point_one_way(tmp_path: Path) -> None:
    lint_imports.build_layout(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout


def test_a_wrong_import_breaks_the_contract(tmp_path: Path) -> None:
    lint_imports.build_layout(tmp_path)
    # The data layer reaching up into the client (and, inside a function, into the
    # model): both must be caught, a function-level import is no hiding place.
    sample = tmp_path / "endofed" / "shared" / "data" / "sample.py"
    sample.write_text(sample.read_text() + "\nimport endofed.client.site  # noqa\n\n"
                      "def _hidden():\n    import endofed.shared.model  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "endofed.shared.data.sample -> endofed.client.site" in result.stdout
    assert "endofed.shared.data.sample -> endofed.shared.model" in result.stdout
