"""The bottom-layer helpers: atomic writes, Markdown tables, figures."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from endofed.shared.util.atomic import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from endofed.shared.util.figures import new_figure, save_figure
from endofed.shared.util.tables import dataframe_table, markdown_table


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "model.pt", "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_mode_is_set_on_the_written_file(tmp_path: Path) -> None:
    key = atomic_write_bytes(tmp_path / "ca.key", b"secret", mode=0o600)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == b"secret"
    public = atomic_write_bytes(tmp_path / "ca.crt", b"cert", mode=0o644)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_markdown_table_formats_and_escapes() -> None:
    table = markdown_table(["site", "AUC"], [["a|b", 0.5], ["c", float("nan")], ["d", 3]])
    assert table == (
        "| site | AUC |\n"
        "|---|---|\n"
        "| a\\|b | 0.5000 |\n"
        "| c | n/a |\n"
        "| d | 3 |"
    )


def test_dataframe_table_matches_pandas_rows() -> None:
    df = pd.DataFrame({"round": [1, 2], "map50": [0.25, np.float64(0.125)]})
    assert dataframe_table(df, float_fmt="{:.3f}").splitlines()[2:] == [
        "| 1 | 0.250 |", "| 2 | 0.125 |"]


def test_save_figure_writes_a_png(tmp_path: Path) -> None:
    fig = new_figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "plots" / "line.png", dpi=50)
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 10
