"""COCO detection JSON sites (what annotation tools such as CVAT or Label Studio export).

Any ``*.json`` directly in the root with ``images``, ``annotations`` and ``categories``
keys is read (each must be a list). ``file_name`` is resolved relative to the JSON's
folder, then to its ``images/`` subfolder (then by its base name there, for exports
holding the annotator's absolute paths); a candidate outside the site folder (``../``,
an absolute path) is never opened, unless ``endofed-site.toml`` names its folder in
``allowed-roots``. Per annotation: ``bbox`` ``[x, y, w, h]`` (converted to XYXY;
derived from the segmentation when absent), ``category_id`` (category names become
the classes) and ``segmentation`` as polygons or RLE (compressed or uncompressed),
decoded with :mod:`pycocotools` into the lesion mask at load time. Optional extras:
``patient_id`` / ``lesion_id`` / ``split`` on an image, ``morphology`` (or
``attributes.morphology``) on an annotation. Images without annotations have no
lesion. A ``manifest.csv`` beside the JSON may add metadata (matched by the image's
path, else by its stem when that is unique).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..sample import DataReport, SiteIndex
from ._base import (
    Candidate,
    SiteDataError,
    SitePaths,
    build_index,
    clean_str,
    group_by_stem,
    load_json,
    normalize_split,
)
from .kvasir import manifest_rows

log = logging.getLogger(__name__)

COCO_KEYS = ("images", "annotations", "categories")


def is_coco(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in COCO_KEYS)


def find_coco_files(root: Path, report: DataReport | None = None) -> list[Path]:
    """COCO JSON files directly in ``root`` (malformed ones go to ``report``)."""
    out = []
    for path in sorted(Path(root).glob("*.json")):
        data = load_json(path, report)
        if is_coco(data):
            out.append(path)
    return out


def _to_rle(seg: Any, height: int, width: int) -> list[dict] | dict:
    if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        polys = [list(map(float, p)) for p in seg if len(p) >= 6]
        if len(polys) != len(seg):
            raise ValueError("polygon with fewer than 3 points")
        return mask_utils.frPyObjects(polys, height, width)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [height, width]:
            raise ValueError(f"RLE size {seg['size']} differs from image {height}x{width}")
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(seg, height, width)
        counts = seg["counts"]
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str)
                else counts}
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def decode_segmentation(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Union of COCO segmentations (polygons / RLE, one entry per annotation) as bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    for seg in segmentations:
        if seg is None or (isinstance(seg, list) and not seg):
            continue
        rle = _to_rle(seg, height, width)
        with warnings.catch_warnings():  # pycocotools 2.0.x vs numpy 2 copy= keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
        if m.ndim == 3:
            m = m.any(axis=2)
        mask |= m.astype(bool)
    return mask


def _candidate_mask_check(cand: Candidate, height: int, width: int) -> np.ndarray:
    return decode_segmentation(cand.segmentation or [], height, width)


def _split_hint(json_path: Path) -> str | None:
    tokens = json_path.stem.lower().replace("-", "_").split("_")
    for tok in tokens:
        s = normalize_split(tok)
        if s in ("train", "val", "test"):
            return s
    return None


def _json_type(value: Any) -> str:
    names = {type(None): "null", dict: "an object", str: "a string", bool: "a boolean",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _resolve_image(json_dir: Path, file_name: str, paths: SitePaths) -> tuple[Path | None, bool]:
    """The image a ``file_name`` names, and whether a candidate was outside the site.

    Candidates outside ``paths`` are skipped without being touched."""
    rel = Path(file_name)
    outside = False
    for cand in (
        rel if rel.is_absolute() else json_dir / rel,
        json_dir / "images" / rel,
        json_dir / "images" / rel.name,
    ):
        if paths.outside(cand):
            outside = True
        elif cand.exists() and not cand.is_dir():  # a FIFO is reported when it is read
            return cand, outside
    return None, outside


def _bbox_from_ann(ann: dict, seg_rle_fn) -> list[float]:
    bbox = ann.get("bbox")
    if bbox is not None:
        if len(bbox) != 4:
            raise ValueError(f"bbox {bbox!r} is not [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        return [x, y, x + w, y + h]
    rle = seg_rle_fn()
    x, y, w, h = mask_utils.toBbox(mask_utils.merge(rle) if isinstance(rle, list) else rle)
    return [float(x), float(y), float(x + w), float(y + h)]


def scan_coco(
    root: Path,
    *,
    site: str | None = None,
    class_names: list[str] | None = None,
    annotation_files: Sequence[Path] | None = None,
) -> SiteIndex:
    """Scan a folder holding COCO detection JSON (see module docstring)."""
    root = Path(root)
    paths = SitePaths.for_site(root)
    report = DataReport(root=str(root), layout="coco")
    files = list(annotation_files) if annotation_files is not None else sorted(root.glob("*.json"))
    candidates: list[Candidate] = []
    seen: set[Path] = set()
    n_coco = 0
    for json_path in files:
        data = load_json(json_path, report)
        if data is None:
            continue
        if not is_coco(data):
            log.debug("%s: not COCO (no images/annotations/categories), ignored", json_path)
            continue
        n_coco += 1
        candidates += _scan_one(json_path, data, report, seen, paths)
    if n_coco == 0:
        raise SiteDataError(
            f"{root}: no COCO JSON found (a *.json with images/annotations/categories keys)"
            + (f"; problems: {'; '.join(map(str, report.problems))}" if report.problems else "")
        )
    meta = manifest_rows(root, report, paths)
    rows_by_stem = group_by_stem(meta)
    cands_by_stem = group_by_stem(c.image_path for c in candidates)
    for c in candidates:
        row = meta.get(Path(os.path.realpath(c.image_path)))
        stem = c.image_path.stem
        if row is None and len(rows_by_stem.get(stem, [])) == 1 and len(cands_by_stem[stem]) == 1:
            row = meta[rows_by_stem[stem][0]]
        if row:
            c.patient_id = c.patient_id or row.get("patient_id")
            c.lesion_id = c.lesion_id or row.get("lesion_id")
            c.split = c.split or normalize_split(row.get("split"))
            if row.get("morphology"):
                c.box_morphologies = [m or row["morphology"] for m in c.box_morphologies]
    return build_index(
        root, "coco", candidates, report, site=site, class_names=class_names,
        mask_decoder=_candidate_mask_check, paths=paths,
    )


def _scan_one(
    json_path: Path, data: dict, report: DataReport, seen: set[Path], paths: SitePaths
) -> list[Candidate]:
    json_dir = json_path.parent
    hint = _split_hint(json_path)
    for key in COCO_KEYS:
        if not isinstance(data[key], list):
            report.add_problem(json_path, f"malformed COCO JSON: '{key}' must be a list, not "
                                          f"{_json_type(data[key])}")
            log.warning("%s", report.problems[-1])
            return []
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError):
        report.add_problem(json_path, "malformed JSON: categories need 'id' and 'name'")
        log.warning("%s", report.problems[-1])
        return []
    anns_by_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            anns_by_image[ann["image_id"]].append(ann)
        else:
            report.add_problem(json_path, f"annotation without image_id: {str(ann)[:80]}")
    out = []
    for img in data["images"]:
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            report.add_problem(json_path, f"image entry without id/file_name: {str(img)[:80]}")
            continue
        path, outside = _resolve_image(json_dir, str(img["file_name"]), paths)
        if path is None:
            report.images_found += 1
            if outside:
                report.add_problem(json_path, paths.reason("file_name", img["file_name"]))
            else:
                report.add_problem(json_dir / str(img["file_name"]),
                                   f"image file not found (listed in {json_path.name})")
            log.warning("skipped %s", report.problems[-1])
            continue
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            cand = _candidate(img, anns_by_image.get(img["id"], []), cats, path, hint)
        except (KeyError, TypeError, ValueError) as exc:
            report.images_found += 1
            report.add_problem(path, f"{json_path.name}: {exc}")
            log.warning("skipped %s", report.problems[-1])
            continue
        out.append(cand)
    return out


def _candidate(img: dict, anns: list[dict], cats: dict[int, str], path: Path,
               hint: str | None) -> Candidate:
    size = None
    if "height" in img and "width" in img:
        size = (int(img["height"]), int(img["width"]))
    boxes, labels, morphs, segs = [], [], [], []
    for ann in anns:
        cid = int(ann["category_id"])
        if cid not in cats:
            raise ValueError(f"annotation {ann.get('id')} has unknown category_id {cid}")
        seg = ann.get("segmentation")

        def seg_rle(seg=seg, ann_id=ann.get("id")):
            if size is None or not seg:
                raise ValueError(f"annotation {ann_id} has neither bbox nor segmentation")
            return _to_rle(seg, *size)

        boxes.append(_bbox_from_ann(ann, seg_rle))
        labels.append(cats[cid])
        attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        morphs.append(clean_str(ann.get("morphology") or attrs.get("morphology")) or "")
        if seg:
            segs.append(seg)
    return Candidate(
        image_path=path,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        box_labels=labels,
        box_morphologies=morphs,
        patient_id=clean_str(img.get("patient_id")),
        lesion_id=clean_str(img.get("lesion_id")),
        split=normalize_split(img.get("split")) or hint,
        segmentation=segs or None,
        expected_size=size,
    )
