"""Check the import contract (``[tool.importlinter]`` in pyproject.toml) on the installed layout.

The top-level folders install under one import package through setuptools'
``package-dir`` mapping (``shared/`` -> ``endofed.shared`` ...). import-linter reads a
package from its folder on disk, where that mapping does not exist, so this script
copies the sources into a temporary tree shaped like the wheel (``endofed/shared/...``)
and runs ``lint-imports`` there. Exit status: import-linter's (non-zero = broken).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_layout(dest: Path) -> None:
    """Copy every mapped package folder into ``dest`` as the wheel would lay it out."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in setuptools["package-dir"].items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in (ROOT / folder).glob("*.py"):
            shutil.copy2(src, target / src.name)
    for package in setuptools["packages"]:
        parent = max((p for p in setuptools["package-dir"] if package.startswith(p)), key=len)
        rel = package[len(parent):].lstrip(".").split(".") if package != parent else []
        src_dir = ROOT / setuptools["package-dir"][parent] / Path(*rel)
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in src_dir.glob("*.py"):
            shutil.copy2(src, target / src.name)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="endofed-lint-") as tmp:
        build_layout(Path(tmp))
        shutil.copy2(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        env = {**os.environ, "PYTHONPATH": tmp}
        exe = Path(sys.executable).with_name("lint-imports")
        cmd = [str(exe), "--no-cache", "pyproject.toml", *sys.argv[1:]]
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
