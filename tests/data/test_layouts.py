"""Each site layout scans into the expected records, classes and masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from endofed.shared.data import SiteDataError, detect_layout, load_sample, scan_site
from endofed.shared.data.layouts import scan_coco, scan_kvasir, scan_manifest


def _by_stem(index):
    return {r.image_path.stem: r for r in index.records}


# ----------------------------------------------------------------------------- kvasir


def test_kvasir_boxes_from_png_masks(kvasir_site):
    root = kvasir_site({
        "two": [(10, 12, 40, 30), (70, 50, 110, 90)],
        "one": [(5, 5, 25, 60)],
        "empty_mask": [],
        "no_mask": None,
    })
    index = scan_kvasir(root)
    recs = _by_stem(index)
    assert index.class_names == ["lesion"]
    assert index.report.problems == []
    assert sorted(map(tuple, recs["two"].boxes.tolist())) == [(10, 12, 40, 30), (70, 50, 110, 90)]
    assert recs["one"].boxes.tolist() == [[5, 5, 25, 60]]
    assert recs["two"].labels.tolist() == [1, 1]
    assert len(recs["empty_mask"].boxes) == 0 and len(recs["no_mask"].boxes) == 0
    assert recs["no_mask"].mask_path is None
    s = load_sample(recs["two"])
    assert s.image.shape == (96, 128, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == bool and s.mask.sum() == 30 * 18 + 40 * 40
    # RGB order: the lesion colour drawn as (220, 60, 60) must come back red-dominant
    assert s.image[20, 20, 0] > s.image[20, 20, 2]
    assert not load_sample(recs["no_mask"]).mask.any()


def test_kvasir_jpeg_masks_are_binarised_and_specks_ignored(tmp_path, frame, save_rgb, save_gray):
    root = tmp_path / "jpg"
    img, mask = frame(120, 160, [(30, 20, 90, 80)])
    mask[110:112, 150:152] = 255  # 4-px speck: < 0.05 % of 19200 px
    save_rgb(root / "images" / "a.jpg", img)
    save_gray(root / "masks" / "a.jpg", mask)
    (rec,) = scan_site(root).records
    assert len(rec.boxes) == 1
    np.testing.assert_allclose(rec.boxes[0], [30, 20, 90, 80], atol=2)
    m = load_sample(rec).mask
    assert abs(int(m.sum()) - 60 * 60) < 60 * 60 * 0.05


def test_kvasir_bbox_json_and_manifest_metadata(kvasir_site):
    root = kvasir_site({"a": [(10, 10, 50, 50)], "b": [(20, 20, 60, 70)], "c": []})
    (root / "kavsir_bboxes.json").write_text(json.dumps({
        "a": {"height": 96, "width": 128, "bbox": [
            {"label": "polyp", "xmin": 10, "ymin": 10, "xmax": 50, "ymax": 50},
            {"label": "adenoma", "xmin": 60, "ymin": 5, "xmax": 100, "ymax": 40},
        ]},
    }))
    pd.DataFrame({
        "image": ["images/a.png", "images/b.png", "images/c.png"],
        "mask": ["masks/a.png", "masks/b.png", "masks/c.png"],
        "label": ["polyp", "polyp", "polyp"],
        "morphology": ["sessile", "", ""],
        "patient_id": ["p1", "p1", "p2"],
        "split": ["train", "train", "Validation"],
    }).to_csv(root / "manifest.csv", index=False)
    assert detect_layout(root) == "kvasir"
    index = scan_site(root)
    recs = _by_stem(index)
    assert index.class_names == ["adenoma", "polyp"]
    # JSON boxes win for "a" (labels from the JSON), mask boxes + manifest label for "b"
    assert recs["a"].boxes.tolist() == [[10, 10, 50, 50], [60, 5, 100, 40]]
    assert recs["a"].labels.tolist() == [2, 1]
    assert recs["b"].boxes.tolist() == [[20, 20, 60, 70]] and recs["b"].labels.tolist() == [2]
    assert recs["a"].meta.morphologies == ["sessile", "sessile"]
    assert recs["b"].meta.morphologies == [""]
    assert recs["a"].group_id == recs["b"].group_id == "p1"
    assert recs["c"].meta.split == "val"
    assert index.morphology_names == ["sessile"]


def test_images_only_folder_is_all_normal(image_folder):
    root = image_folder(5)
    index = scan_site(root)
    assert index.report.layout == "kvasir"
    assert len(index.records) == 5 and index.class_names == []
    assert all(len(r.boxes) == 0 for r in index.records)


# ----------------------------------------------------------------------------- coco


def _coco_site(tmp_path: Path, segs: dict[str, object], *, in_images_dir: bool = True) -> Path:
    """Two annotated images (ulcer polygon/RLE + cancer box) and one without annotation."""
    root = tmp_path / "coco"
    folder = root / "images" if in_images_dir else root
    folder.mkdir(parents=True)
    h, w = 80, 100
    for name in ("x.png", "y.png", "z.png"):
        img = np.full((h, w, 3), (160, 90, 80), np.uint8)
        assert cv2.imwrite(str(folder / name), img)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 25],
         "segmentation": segs["x"], "iscrowd": int(isinstance(segs["x"], dict)),
         "attributes": {"morphology": "flat"}},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50.5, 5, 40, 30],
         "segmentation": [], "iscrowd": 0},
    ]
    data = {
        "images": [{"id": i + 1, "file_name": n, "height": h, "width": w,
                    **({"patient_id": "P9"} if n == "x.png" else {})}
                   for i, n in enumerate(("x.png", "y.png", "z.png"))],
        "annotations": anns,
        "categories": [{"id": 7, "name": "ulcer"}, {"id": 3, "name": "cancer"}],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def _rect_mask(h=80, w=100, box=(10, 20, 40, 45)) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


def test_coco_polygons(tmp_path):
    poly = [[10, 20, 40, 20, 40, 45, 10, 45]]
    root = _coco_site(tmp_path, {"x": poly})
    assert detect_layout(root) == "coco"
    index = scan_site(root)
    recs = _by_stem(index)
    assert index.class_names == ["cancer", "ulcer"]  # sorted names, not category ids
    assert recs["x"].boxes.tolist() == [[10, 20, 40, 45]]
    assert recs["x"].labels.tolist() == [2]
    assert recs["x"].meta.morphologies == ["flat"] and recs["x"].group_id == "P9"
    assert recs["y"].boxes.tolist() == [[50.5, 5, 90.5, 35]] and recs["y"].labels.tolist() == [1]
    assert len(recs["z"].boxes) == 0
    m = load_sample(recs["x"]).mask
    ys, xs = np.nonzero(m)
    # pycocotools rasterises polygon edges within a pixel
    assert abs(xs.min() - 10) <= 1 and abs(xs.max() - 39) <= 1
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 44) <= 1
    assert not load_sample(recs["y"]).mask.any()  # no segmentation: empty mask


def test_coco_compressed_rle(tmp_path):
    truth = _rect_mask()
    truth[30:35, 60:70] = 1  # a second blob in the same annotation
    rle = mask_utils.encode(np.asfortranarray(truth))
    rle["counts"] = rle["counts"].decode("ascii")
    root = _coco_site(tmp_path, {"x": rle}, in_images_dir=False)
    rec = _by_stem(scan_coco(root))["x"]
    np.testing.assert_array_equal(load_sample(rec).mask, truth.astype(bool))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def test_coco_uncompressed_rle(tmp_path):
    truth = _rect_mask(box=(5, 10, 50, 70))
    root = _coco_site(tmp_path, {"x": _uncompressed_rle(truth)})
    rec = _by_stem(scan_site(root, layout="coco"))["x"]
    np.testing.assert_array_equal(load_sample(rec).mask, truth.astype(bool))


def test_coco_rle_of_wrong_size_is_a_problem(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    root = _coco_site(tmp_path, {"x": rle})
    index = scan_site(root)
    assert "x" not in _by_stem(index)
    (p,) = index.report.problems
    assert p.path.endswith("x.png") and "size" in p.reason


# ----------------------------------------------------------------------------- manifest


def test_manifest_rows_per_box(tmp_path, frame, save_rgb, save_gray):
    root = tmp_path / "m"
    img, mask = frame(90, 120, [(40, 30, 70, 60)])
    save_rgb(root / "data" / "a.jpg", img)
    save_rgb(root / "data" / "b.jpg", img)
    save_gray(root / "data" / "b_mask.png", mask)
    save_rgb(root / "data" / "n.jpg", frame(90, 120)[0])
    pd.DataFrame([
        {"image": "data/a.jpg", "label": "ulcer", "xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40,
         "morphology": "flat", "patient_id": "p1", "split": "test"},
        {"image": "data/a.jpg", "label": "cancer", "xmin": 50, "ymin": 50, "xmax": 100,
         "ymax": 80, "morphology": "", "patient_id": "", "split": ""},
        {"image": "data/b.jpg", "mask": "data/b_mask.png", "label": "ulcer", "patient_id": "p2"},
        {"image": "data/n.jpg", "label": "normal"},
    ]).to_csv(root / "manifest.csv", index=False)
    assert detect_layout(root) == "manifest"
    index = scan_site(root)
    recs = _by_stem(index)
    assert index.report.problems == []
    assert index.class_names == ["cancer", "ulcer"]
    assert recs["a"].boxes.tolist() == [[1, 2, 30, 40], [50, 50, 100, 80]]
    assert recs["a"].labels.tolist() == [2, 1]
    assert recs["a"].meta.morphologies == ["flat", ""]
    assert recs["a"].meta.split == "test" and recs["a"].group_id == "p1"
    assert recs["b"].boxes.tolist() == [[40, 30, 70, 60]] and recs["b"].labels.tolist() == [2]
    assert len(recs["n"].boxes) == 0
    assert scan_manifest(root).class_names == index.class_names


# ----------------------------------------------------------------------------- errors


def test_empty_folder_names_expected_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SiteDataError) as err:
        scan_site(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    for layout in ("kvasir", "coco", "manifest"):
        assert layout in msg


def test_all_images_broken_raises_with_reasons(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    (tmp_path / "images" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError) as err:
        scan_site(tmp_path)
    msg = str(err.value)
    assert "no usable image" in msg and "a.jpg" in msg and "b.png" in msg


def test_unknown_layout_name(tmp_path):
    with pytest.raises(SiteDataError, match="unknown layout"):
        scan_site(tmp_path, layout="voc")


def test_fixed_class_names_from_federation(kvasir_site):
    root = kvasir_site({"a": [(10, 10, 40, 40)]})
    index = scan_site(root, class_names=["cancer", "lesion"])
    assert index.class_names == ["cancer", "lesion"]
    assert index.records[0].labels.tolist() == [2]
    with pytest.raises(SiteDataError, match="unknown class"):
        scan_site(root, class_names=["cancer"])
