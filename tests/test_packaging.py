"""One import name: EndoFed installs exactly one top-level package, ``endofed``."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> dict[str, Path]:
    """Import name -> folder of every package folder the layout maps (``__init__.py``)."""
    found: dict[str, Path] = {}
    for name, folder in SETUPTOOLS["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def test_every_package_folder_is_listed_for_setuptools() -> None:
    assert set(SETUPTOOLS["packages"]) == set(_source_packages())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # What `pip install .` installs: the wheel setuptools builds from this checkout,
    # built from a copy so that setuptools' build/ folder never lands in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in set(SETUPTOOLS["package-dir"].values()):
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=600,
    )
    (path,) = out.glob("endofed-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    (top_level,) = [n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["endofed"]
    roots = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(
        (".dist-info", ".data"))}
    assert roots == {"endofed"}


def test_the_wheel_holds_every_module_under_endofed(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package, folder in _source_packages().items():
        for module in folder.glob("*.py"):
            assert f"{package.replace('.', '/')}/{module.name}" in names


def test_the_fab_carries_configuration_not_code() -> None:
    """Sites run the endofed package they installed, not code shipped by the center."""
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO)))
    assert [n for n in fab.namelist() if not n.startswith(".info/")] == ["pyproject.toml"]
