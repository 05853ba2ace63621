"""Site data hardening (issue 14, item 3): every defect found by trying hostile or odd folders.

Each test writes real files (cv2, numpy, raw bytes) in ``tmp_path`` and scans them with
the real scanners; expected boxes and masks are the rectangles the test drew.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from endofed.shared.data import SiteDataError, load_sample, scan_site, summarize
from endofed.shared.data.layouts import scan_coco, scan_kvasir, scan_manifest
from endofed.shared.data.layouts._base import MAX_IMAGE_PIXELS, binarize_mask
from endofed.shared.data.site import detect_layout

BOX = (10, 12, 50, 40)  # xmin, ymin, xmax, ymax of the drawn lesion


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR claiming ``width x height``, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _reasons(index) -> dict[str, str]:
    return {p.path: p.reason for p in index.report.problems}


def _usable(index) -> set[str]:
    return {r.image_path.name for r in index.records}


@pytest.fixture
def outside(tmp_path, frame, save_rgb, save_gray) -> Path:
    """A decodable image + lesion mask *outside* the site folder (tmp_path/site)."""
    img, mask = frame(96, 128, [BOX], seed=7)
    save_rgb(tmp_path / "outside" / "secret.png", img)
    save_gray(tmp_path / "outside" / "secret_mask.png", mask)
    return tmp_path / "outside"


# ----------------------------------------------------------------------------- confinement


def test_manifest_rows_outside_the_site_are_reported_not_read(
    tmp_path, outside, frame, save_rgb
):
    root = tmp_path / "site"
    save_rgb(root / "a.png", frame(96, 128, seed=1)[0])
    save_rgb(root / "b.png", frame(96, 128, seed=2)[0])
    pd.DataFrame([
        {"image": "a.png", "mask": ""},
        {"image": "../outside/secret.png", "mask": ""},
        {"image": str(outside / "secret.png"), "mask": ""},
        {"image": "../../../../../../../../etc/passwd", "mask": ""},
        {"image": "b.png", "mask": "../outside/secret_mask.png"},  # the mask column too
        {"image": "./b.png", "mask": ""},  # the same file as row 6
    ]).to_csv(root / "manifest.csv", index=False)
    index = scan_site(root)
    # the outside image never became a record (the old code read it and used it)
    assert [r.image_path.name for r in index.records] == ["a.png"]
    reasons = _reasons(index)
    for line in (3, 4, 5):
        assert "outside the site folder" in reasons[f"manifest.csv:{line}"]
    assert "passwd" in reasons["manifest.csv:5"]
    assert "mask '../outside/secret_mask.png' is outside" in reasons["manifest.csv:6,7"]
    assert index.report.images_found == 5


def test_kvasir_manifest_mask_and_symlinked_image_outside(tmp_path, outside, kvasir_site):
    root = kvasir_site({"a": [BOX], "b": None})
    os.symlink(outside / "secret.png", root / "images" / "link.png")
    pd.DataFrame([{"image": "images/b.png", "mask": "../outside/secret_mask.png"}]).to_csv(
        root / "manifest.csv", index=False)
    index = scan_kvasir(root)
    assert _usable(index) == {"a.png"}
    reasons = {Path(p).name: r for p, r in _reasons(index).items()}
    assert "outside the site folder" in reasons["link.png"]
    assert "outside the site folder" in reasons["b.png"]


def test_coco_file_name_outside_the_site(tmp_path, outside, frame, save_rgb):
    root = tmp_path / "site"
    save_rgb(root / "images" / "a.png", frame(96, 128, seed=1)[0])
    (root / "coco.json").write_text(json.dumps({
        "images": [
            {"id": 1, "file_name": "../outside/secret.png"},
            {"id": 2, "file_name": str(outside / "secret.png")},
            {"id": 3, "file_name": "../../../../../../../../etc/passwd"},
            # an annotator's absolute path whose base name is in images/: still found
            {"id": 4, "file_name": "/home/annotator/export/a.png"},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 12, 40, 28]}],
        "categories": [{"id": 1, "name": "polyp"}],
    }))
    index = scan_coco(root)
    assert _usable(index) == {"a.png"}
    problems = index.report.problems
    assert len(problems) == 3
    assert all(p.path.endswith("coco.json") and "outside the site folder" in p.reason
               for p in problems)
    assert "etc/passwd" in problems[2].reason


def test_allowed_roots_let_a_site_name_another_folder(tmp_path, outside, frame, save_rgb):
    root = tmp_path / "site"
    save_rgb(root / "a.png", frame(96, 128, seed=1)[0])
    pd.DataFrame([{"image": "a.png"},
                  {"image": "../outside/secret.png", "mask": "../outside/secret_mask.png"}]
                 ).to_csv(root / "manifest.csv", index=False)
    (root / "endofed-site.toml").write_text('allowed-roots = ["../outside"]\n')
    index = scan_site(root)
    assert _usable(index) == {"a.png", "secret.png"}
    secret = next(r for r in index.records if r.image_path.name == "secret.png")
    np.testing.assert_array_equal(secret.boxes, [BOX])
    # /etc is still not allowed
    (root / "manifest.csv").write_text("image\na.png\n/etc/passwd\n")
    assert "outside the site folder" in _reasons(scan_site(root))["manifest.csv:3"]


@pytest.mark.parametrize("text, needle", [
    ('allowed-root = ["/tmp"]\n', "unknown key"),
    ('allowed-roots = "/tmp"\n', "must be a list"),
    ('allowed-roots = ["does-not-exist"]\n', "not an existing folder"),
    ("allowed-roots = [\n", "cannot read"),
])
def test_a_bad_site_settings_file_is_one_clear_error(tmp_path, frame, save_rgb, text, needle):
    root = tmp_path / "site"
    save_rgb(root / "images" / "a.png", frame(96, 128)[0])
    (root / "endofed-site.toml").write_text(text)
    with pytest.raises(SiteDataError) as err:
        scan_site(root)
    assert "endofed-site.toml" in str(err.value) and needle in str(err.value)


# ----------------------------------------------------------------------------- stems


def test_ambiguous_stems_are_reported_not_paired(tmp_path, frame, save_rgb, save_gray):
    root = tmp_path / "site"
    for name, seed in (("x.jpg", 1), ("x.png", 2), ("y.png", 3), ("n.jpg", 4), ("n.png", 5),
                       ("z.png", 6)):
        save_rgb(root / "images" / name, frame(96, 128, seed=seed)[0])
    mask = frame(96, 128, [BOX])[1]
    save_gray(root / "masks" / "x.png", mask)
    save_gray(root / "masks" / "y.png", mask)
    save_gray(root / "masks" / "z.png", mask)
    save_gray(root / "masks" / "z.bmp", mask)  # two masks for one image
    index = scan_kvasir(root)
    reasons = {Path(p).name: r for p, r in _reasons(index).items()}
    assert "ambiguous stem 'x'" in reasons["x.jpg"] and "ambiguous stem 'x'" in reasons["x.png"]
    assert "ambiguous masks" in reasons["z.png"]
    # y pairs with its mask; n.jpg / n.png have nothing matched by stem: both normal
    assert _usable(index) == {"y.png", "n.jpg", "n.png"}
    assert index.report.images_found == 6


def test_ambiguous_stem_with_bbox_json_and_explicit_masks(tmp_path, frame, save_rgb, save_gray):
    root = tmp_path / "site"
    save_rgb(root / "images" / "x.jpg", frame(96, 128, seed=1)[0])
    save_rgb(root / "images" / "x.png", frame(96, 128, seed=2)[0])
    save_gray(root / "masks" / "x_jpg.png", frame(96, 128, [BOX])[1])
    save_gray(root / "masks" / "x_png.png", frame(96, 128, [(60, 50, 90, 80)])[1])
    # masks named per image in the manifest: nothing is ambiguous
    pd.DataFrame([{"image": "images/x.jpg", "mask": "masks/x_jpg.png"},
                  {"image": "images/x.png", "mask": "masks/x_png.png"}]).to_csv(
        root / "manifest.csv", index=False)
    index = scan_kvasir(root)
    boxes = {r.image_path.name: r.boxes.tolist() for r in index.records}
    assert boxes == {"x.jpg": [list(BOX)], "x.png": [[60, 50, 90, 80]]}
    # a bbox JSON entry keyed by the shared stem is ambiguous again
    (root / "kavsir_bboxes.json").write_text(json.dumps(
        {"x": {"height": 96, "width": 128, "bbox": [
            {"label": "polyp", "xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9}]}}))
    with pytest.raises(SiteDataError, match="ambiguous stem 'x'"):
        scan_kvasir(root)


# ----------------------------------------------------------------------------- masks


def test_binarize_mask_by_its_own_range():
    # hand-computed: the threshold is half the mask's maximum
    np.testing.assert_array_equal(binarize_mask(np.array([[0, 1], [1, 0]], np.uint8)),
                                  [[False, True], [True, False]])
    noisy = np.array([0, 3, 120, 127, 128, 250, 255], np.uint8)  # JPEG noise on 0/255
    np.testing.assert_array_equal(binarize_mask(noisy), [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(binarize_mask(np.array([0, 500, 1000], np.uint16)),
                                  [0, 0, 1])
    assert not binarize_mask(np.zeros((4, 4), np.uint8)).any()
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (0, 0, 200)  # a red lesion in a BGR mask
    np.testing.assert_array_equal(binarize_mask(colour), [[True, False], [False, False]])


@pytest.mark.parametrize("kind", ["0/1 png", "0/255 png", "0/255 jpg", "16-bit png"])
def test_masks_of_any_value_range_give_the_lesion(tmp_path, frame, save_rgb, kind):
    root = tmp_path / "site"
    img, mask = frame(96, 128, [BOX], seed=2)
    save_rgb(root / "images" / "a.png", img)
    ext = ".jpg" if "jpg" in kind else ".png"
    values = {"0/1 png": mask // 255, "16-bit png": (mask > 0).astype(np.uint16) * 1000}
    (root / "masks").mkdir()
    assert cv2.imwrite(str(root / "masks" / f"a{ext}"), values.get(kind, mask))
    index = scan_kvasir(root)
    (rec,) = index.records
    np.testing.assert_array_equal(rec.boxes, [BOX])  # old code: no box for 0/1 and 16-bit
    sample = load_sample(rec)
    x0, y0, x1, y1 = BOX
    expected = np.zeros((96, 128), bool)
    expected[y0:y1, x0:x1] = True
    assert (sample.mask != expected).sum() <= (0 if ext == ".png" else 40)


# ----------------------------------------------------------------------------- bombs


def test_decompression_bomb_headers_are_skipped_and_counted(kvasir_site, capsys):
    root = kvasir_site({"a": [BOX]})
    bomb = png_header_only(root / "images" / "bomb.png", 50000, 50000)
    assert bomb.stat().st_size < 100
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # just over our cap, far under PIL's or cv2's
    png_header_only(root / "images" / "big.png", side, side)
    png_header_only(root / "masks" / "a.png", side, side)  # a mask bomb skips its image
    root2 = kvasir_site({"b": [BOX]}, name="site2")
    png_header_only(root2 / "images" / "bomb.png", 50000, 50000)

    index = scan_kvasir(root2)  # the old code raised cv2.error here
    reasons = {Path(p).name: r for p, r in _reasons(index).items()}
    assert "decompression bomb" in reasons["bomb.png"]
    assert "2500000000 pixels" in reasons["bomb.png"]
    assert _usable(index) == {"b.png"} and index.report.oversized == 1

    with pytest.raises(SiteDataError) as err:  # nothing usable left in the first site
        scan_kvasir(root)
    assert "decompression bomb" in str(err.value)
    reasons_all = str(err.value)
    assert f"{side}x{side} pixels" in reasons_all and "mask a.png" in reasons_all

    import argparse

    from endofed.commands import site as site_command

    parser = argparse.ArgumentParser(prog="endofed")
    site_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["site", "check", str(root2), "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["oversized"] == 1 and summary["usable"] == 1


# ----------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("key", ["annotations", "images", "categories"])
def test_coco_key_that_is_not_a_list_is_one_problem(tmp_path, frame, save_rgb, key):
    root = tmp_path / "site"
    save_rgb(root / "images" / "a.png", frame(96, 128)[0])
    data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
            "categories": [{"id": 1, "name": "polyp"}]}
    (root / "good.json").write_text(json.dumps(data))
    (root / "broken.json").write_text(json.dumps({**data, key: None}))
    index = scan_site(root)  # the old code raised TypeError for annotations/images
    assert _usable(index) == {"a.png"}
    (problem,) = index.report.problems
    assert problem.path.endswith("broken.json")
    assert f"'{key}' must be a list, not null" in problem.reason
    (root / "good.json").unlink()
    with pytest.raises(SiteDataError, match=f"broken.json: malformed COCO JSON: '{key}'"):
        scan_site(root)


# ----------------------------------------------------------------------------- manifests


def test_utf8_bom_manifest_is_detected(tmp_path, frame, save_rgb):
    root = tmp_path / "site"
    save_rgb(root / "a.png", frame(96, 128, [BOX])[0])
    text = "image,label,xmin,ymin,xmax,ymax\r\na.png,polyp,10,12,50,40\r\n"
    (root / "manifest.csv").write_bytes(text.encode("utf-8-sig"))  # what Excel writes
    assert detect_layout(root) == "manifest"  # the old code: "no usable site layout"
    index = scan_site(root)
    assert index.class_names == ["polyp"]
    np.testing.assert_array_equal(index.records[0].boxes, [BOX])


def test_manifest_without_image_column_names_the_file_and_column(tmp_path, frame, save_rgb):
    root = tmp_path / "site"
    save_rgb(root / "a.png", frame(96, 128)[0])
    (root / "manifest.csv").write_text("file,label\na.png,polyp\n")
    for layout in ("auto", "manifest"):
        with pytest.raises(SiteDataError) as err:
            scan_site(root, layout=layout)
        msg = str(err.value)
        assert "manifest.csv" in msg and "no 'image' column" in msg and "'file'" in msg
        assert "no usable site layout" not in msg


# ----------------------------------------------------------------------------- regular files


@pytest.mark.timeout(60)
def test_fifos_are_reported_and_never_opened(tmp_path, kvasir_site):
    root = kvasir_site({"a": [BOX]})
    os.mkfifo(root / "images" / "pipe.png")
    os.mkfifo(root / "extra.json")  # the old layout detection blocked opening this
    os.mkfifo(root / "kavsir_bboxes.json")  # and the old Kvasir scan this
    index = scan_site(root, layout="auto")
    reasons = {Path(p).name: r for p, r in _reasons(index).items()}
    assert "named pipe" in reasons["pipe.png"]
    assert "named pipe" in reasons["kavsir_bboxes.json"]
    assert _usable(index) == {"a.png"}
    manifest_root = tmp_path / "m"
    manifest_root.mkdir()
    os.mkfifo(manifest_root / "p.png")
    (manifest_root / "ok.png").write_bytes((root / "images" / "a.png").read_bytes())
    (manifest_root / "manifest.csv").write_text("image\nok.png\np.png\n")
    index = scan_manifest(manifest_root)
    assert "named pipe" in _reasons(index)[str(manifest_root / "p.png")]
    assert summarize(index)["usable"] == 1
