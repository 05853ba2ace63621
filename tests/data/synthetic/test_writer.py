"""The site writer: byte-identical sites, read back by the site scanner; ``endofed synth``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from endofed.commands import synth
from endofed.shared.data import site
from endofed.shared.data.synthetic import OVERLAY_TYPES, write_site, write_sites

from .conftest import component_boxes, tree_digest


def test_write_site_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    kw = dict(n_images=6, site_index=1, size=64)
    write_site(tmp_path / "a", seed=5, **kw)
    write_site(tmp_path / "b", seed=5, **kw)
    write_site(tmp_path / "c", seed=6, **kw)
    da, db, dc = (tree_digest(tmp_path / n) for n in "abc")
    assert da == db
    assert {"bboxes.json", "manifest.csv", "overlays.json", "images/s02_00000.png",
            "masks/s02_00005.png"} <= set(da)
    assert da["images/s02_00000.png"] != dc["images/s02_00000.png"]


def test_written_site_reads_back_through_scan_site(tmp_path: Path) -> None:
    summary = write_site(tmp_path / "s", n_images=12, seed=0, site_index=0, size=64)
    index = site.scan_site(tmp_path / "s")
    assert index.report.problems == []
    assert index.class_names == ["lesion"]
    assert len(index.records) == 12
    assert sum(len(r.labels) for r in index.records) == summary.n_lesions
    bboxes = json.loads((tmp_path / "s" / "bboxes.json").read_text())
    overlays = json.loads((tmp_path / "s" / "overlays.json").read_text())
    assert set(overlays) == set(bboxes)
    for r in index.records:
        entry = bboxes[r.image_path.stem]
        want = sorted((b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry["bbox"])
        assert sorted(tuple(int(v) for v in b) for b in r.boxes) == want
        mask = site.load_sample(r).mask
        assert component_boxes(mask) == want  # the PNG mask is exact
        for o in overlays[r.image_path.stem]:
            assert o["type"] in OVERLAY_TYPES
    # Several frames share a patient, so patient-aware splits matter.
    groups = [r.group_id for r in index.records]
    assert len(set(groups)) == summary.n_patients < len(groups)


def test_write_sites_layout_and_per_site_devices(tmp_path: Path) -> None:
    sums = write_sites(tmp_path, sites=3, images_per_site=2, seed=1, size=48)
    assert [s.root.name for s in sums] == ["site_1", "site_2", "site_3"]
    assert len({s.profile for s in sums}) == 3
    info = json.loads((tmp_path / "site_2" / "synthetic.json").read_text())
    assert info["site_index"] == 1 and info["n_images"] == 2


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    synth.register(parser.add_subparsers())
    args = parser.parse_args(["synth", str(tmp_path / "out"), "--sites", "2",
                              "--images-per-site", "3", "--seed", "4", "--size", "48",
                              "--classes", "polyp,cancer"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 synthetic sites" in out and "site_2" in out
    assert len(list((tmp_path / "out" / "site_2" / "images").glob("*.png"))) == 3
    bad = parser.parse_args(["synth", str(tmp_path / "x"), "--classes", "normal"])
    with pytest.raises(SystemExit):
        bad.func(bad)
