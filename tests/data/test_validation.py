"""Bad files are skipped with a reason naming them; everything else still loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from endofed.shared.data import load_sample, scan_site


def _reasons(index) -> dict[str, str]:
    return {Path(p.path).name.split(":")[0]: p.reason for p in index.report.problems}


@pytest.fixture
def messy_kvasir(kvasir_site, frame, save_rgb, save_gray) -> Path:
    good = {f"good{i}": [(10 + i, 10, 50, 40 + i)] for i in range(4)}
    root = kvasir_site({**good, "outside": [(5, 5, 30, 30)], "overshoot": [(60, 50, 100, 90)]})
    images = root / "images"
    # random bytes with an image extension
    (images / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(500))
    # a JPEG cut in the middle of its scan data
    img, _ = frame(96, 128, [(20, 20, 60, 60)], seed=9)
    jpg = save_rgb(root / "tmp.jpg", img).read_bytes()
    (images / "truncated.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    (root / "tmp.jpg").unlink()
    (images / "empty.jpg").write_bytes(b"")
    # a mask of another size than its image
    save_rgb(images / "badmask.png", frame(96, 128, seed=3)[0])
    save_gray(root / "masks" / "badmask.png", np.zeros((50, 50), np.uint8))
    # bbox JSON: one clearly outside box, one 1.5 px overshoot (clipped, kept)
    (root / "kavsir_bboxes.json").write_text(json.dumps({
        "outside": {"height": 96, "width": 128, "bbox": [
            {"label": "polyp", "xmin": 100, "ymin": 10, "xmax": 160, "ymax": 40}]},
        "overshoot": {"height": 96, "width": 128, "bbox": [
            {"label": "polyp", "xmin": 60, "ymin": 50, "xmax": 129.5, "ymax": 90}]},
    }))
    (root / "extra_bboxes.json").write_text('{"good0": {"bbox": [')  # malformed JSON
    # manifest with a row for a file that does not exist
    rows = [{"image": f"images/{s}.png", "label": "polyp"} for s in good]
    rows.append({"image": "images/ghost.png", "label": "polyp"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_messy_kvasir_folder(messy_kvasir):
    index = scan_site(messy_kvasir)
    usable = {r.image_path.stem for r in index.records}
    assert usable == {"good0", "good1", "good2", "good3", "overshoot"}
    reasons = _reasons(index)
    assert set(reasons) == {
        "corrupt.png", "truncated.jpg", "empty.jpg", "badmask.png", "outside.png",
        "extra_bboxes.json", "manifest.csv",
    }
    assert "not a decodable image" in reasons["corrupt.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "50x50" in reasons["badmask.png"] and "128x96" in reasons["badmask.png"]
    assert "outside" in reasons["outside.png"]
    assert "malformed JSON" in reasons["extra_bboxes.json"]
    assert "ghost.png" in reasons["manifest.csv"] and "not found" in reasons["manifest.csv"]
    # every problem line names a file and fits on one line
    assert all(p.path and "\n" not in str(p) for p in index.report.problems)
    assert index.report.images_found == 10
    over = next(r for r in index.records if r.image_path.stem == "overshoot")
    assert over.boxes.tolist() == [[60, 50, 128, 90]]
    # the good records load
    for r in index.records:
        s = load_sample(r)
        assert s.image.shape == (96, 128, 3) and s.mask.shape == (96, 128)


def test_messy_coco_folder(tmp_path, frame, save_rgb):
    root = tmp_path / "coco"
    for n in ("a.png", "b.png"):
        save_rgb(root / "images" / n, frame(60, 80)[0])
    (root / "images" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 60, "width": 80},
            {"id": 2, "file_name": "b.png", "height": 60, "width": 80},
            {"id": 3, "file_name": "c.png", "height": 60, "width": 80},
            {"id": 4, "file_name": "missing.png", "height": 60, "width": 80},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [70, 5, 40, 20]},
        ],
        "categories": [{"id": 1, "name": "polyp"}],
    }
    (root / "train.json").write_text(json.dumps(data))
    (root / "val.json").write_text("{ this is not json")
    index = scan_site(root)
    assert [r.image_path.name for r in index.records] == ["a.png"]
    assert index.records[0].meta.split == "train"  # hinted by the JSON file name
    reasons = _reasons(index)
    assert set(reasons) == {"b.png", "c.png", "missing.png", "val.json"}
    assert "outside" in reasons["b.png"]
    assert "not found" in reasons["missing.png"]
    assert "malformed JSON" in reasons["val.json"]


def test_manifest_missing_files_and_bad_boxes(tmp_path, frame, save_rgb):
    root = tmp_path / "m"
    save_rgb(root / "ok.jpg", frame(50, 60)[0])
    save_rgb(root / "partial.jpg", frame(50, 60)[0])
    pd.DataFrame([
        {"image": "ok.jpg", "label": "polyp", "xmin": 1, "ymin": 1, "xmax": 20, "ymax": 20},
        {"image": "gone.jpg", "label": "polyp", "xmin": 1, "ymin": 1, "xmax": 20, "ymax": 20},
        {"image": "partial.jpg", "label": "polyp", "xmin": 1, "ymin": None, "xmax": 20,
         "ymax": 20},
    ]).to_csv(root / "manifest.csv", index=False)
    index = scan_site(root)
    assert [r.image_path.name for r in index.records] == ["ok.jpg"]
    problems = [str(p) for p in index.report.problems]
    assert len(problems) == 2
    assert any("manifest.csv:3" in p and "gone.jpg" in p for p in problems)
    assert any("manifest.csv:4" in p and "incomplete box" in p for p in problems)


def test_problems_are_logged(messy_kvasir, caplog):
    with caplog.at_level("WARNING", logger="endofed.shared.data"):
        scan_site(messy_kvasir)
    text = caplog.text
    assert "truncated.jpg" in text and "corrupt.png" in text
