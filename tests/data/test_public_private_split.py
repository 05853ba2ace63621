"""benchmarks/public_private_split.py: the public part of a DP benchmark never overlaps
the private hospitals, and each part is a site folder the reader accepts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_sites

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "public_private_split.py"


def test_sides_are_disjoint_complete_and_patient_grouped(tmp_path):
    write_sites(tmp_path / "data", sites=1, images_per_site=20, seed=3, size=64)
    src = tmp_path / "data" / "site_1"
    out = tmp_path / "pp"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(src), "--out", str(out), "--public-fraction", "0.3"],
        capture_output=True, text=True, check=True,
    )
    counts = json.loads(done.stdout)["images"]["site_1"]
    all_stems = {r.image_path.stem for r in scan_site(src).records}
    patient = {r.image_path.stem: r.meta.patient_id for r in scan_site(src).records}

    sides = {}
    for name in ("public", "private"):
        folder = out / name / "site_1"
        records = scan_site(folder).records
        assert len(records) == counts[name]
        sides[name] = {r.image_path.stem for r in records}
        # the manifest and the box table hold exactly this side's images
        with (folder / "manifest.csv").open(newline="") as fh:
            assert {Path(row["image"]).stem for row in csv.DictReader(fh)} == sides[name]
        assert set(json.loads((folder / "bboxes.json").read_text())) == sides[name]
    assert sides["public"].isdisjoint(sides["private"])
    assert sides["public"] | sides["private"] == all_stems
    assert 0 < len(sides["public"]) < len(all_stems)
    # no patient has images on both sides
    pub_patients = {patient[s] for s in sides["public"]}
    assert pub_patients.isdisjoint({patient[s] for s in sides["private"]})


def test_an_existing_split_is_not_overwritten(tmp_path):
    (tmp_path / "pp" / "public").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "pp")],
        capture_output=True, text=True,
    )
    assert done.returncode == 2 and "already holds a split" in done.stderr
