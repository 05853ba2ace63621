"""The site writer: synthetic hospitals on disk, in a layout the site scanners read."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from endofed.shared.data.sample import NORMAL_CLASS_NAME
from endofed.shared.data.synthetic.devices import DeviceProfile, device_profile_for_site
from endofed.shared.data.synthetic.frame import SyntheticFrame, render_frame
from endofed.shared.data.synthetic.lesions import LesionConfig
from endofed.shared.data.synthetic.raster import frame_shape

log = logging.getLogger(__name__)


@dataclass
class SiteSummary:
    """What :func:`write_site` wrote."""

    root: Path
    site_index: int
    n_images: int
    n_lesions: int
    n_lesion_free: int
    n_patients: int
    profile: DeviceProfile
    class_names: tuple[str, ...]


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _write_jpg(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    path.write_bytes(buf.tobytes())


_IMAGE_WRITERS: dict[str, Callable[[Path, np.ndarray], None]] = {
    "png": _write_png,
    "jpg": _write_jpg,
}


def _kvasir_layout(root: Path, frames: list[tuple[str, str, SyntheticFrame]], fmt: str) -> None:
    """``images/``, ``masks/`` (PNG, 0/255), ``bboxes.json``, ``manifest.csv``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    write_image = _IMAGE_WRITERS[fmt]
    bboxes: dict[str, dict] = {}
    rows = []
    for stem, patient, f in frames:
        img_rel = f"images/{stem}.{fmt}"
        mask_rel = f"masks/{stem}.png"
        write_image(root / img_rel, cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        _write_png(root / mask_rel, f.mask.astype(np.uint8) * 255)
        h, w = f.mask.shape
        bboxes[stem] = {
            "height": h,
            "width": w,
            "bbox": [
                {
                    "label": f.class_names[int(lab) - 1],
                    "morphology": morph,
                    "xmin": int(b[0]), "ymin": int(b[1]), "xmax": int(b[2]), "ymax": int(b[3]),
                }
                for b, lab, morph in zip(f.boxes, f.labels, f.morphologies)
            ],
        }
        # Image-level label and morphology: those of the largest lesion.
        lab = f.image_label
        if lab == 0:
            label, morph = NORMAL_CLASS_NAME, ""
        else:
            areas = (f.boxes[:, 2] - f.boxes[:, 0]) * (f.boxes[:, 3] - f.boxes[:, 1])
            i = int(np.argmax(areas))
            label, morph = f.class_names[lab - 1], f.morphologies[i]
        rows.append([img_rel, mask_rel, label, morph, patient])
    with open(root / "bboxes.json", "w", encoding="utf-8") as fh:
        json.dump(bboxes, fh, indent=1, sort_keys=True)
    with open(root / "manifest.csv", "w", encoding="utf-8", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["image", "mask", "label", "morphology", "patient_id"])
        wr.writerows(rows)


#: layout name -> writer of ``(root, [(stem, patient_id, frame)], image_format)``.
SITE_LAYOUTS: dict[str, Callable[[Path, list[tuple[str, str, SyntheticFrame]], str], None]] = {
    "kvasir": _kvasir_layout,
}


def write_site(
    out_dir: Path | str,
    *,
    n_images: int,
    seed: int,
    site_index: int = 0,
    size: int | tuple[int, int] = (256, 256),
    layout: str = "kvasir",
    lesions: LesionConfig | None = None,
    profile: DeviceProfile | None = None,
    image_format: str = "png",
    max_frames_per_patient: int = 4,
) -> SiteSummary:
    """Write one synthetic hospital to ``out_dir`` (deterministic: same args, same bytes).

    Files (``layout="kvasir"``): ``images/<stem>.png``, ``masks/<stem>.png`` (0/255),
    ``bboxes.json`` (``{stem: {height, width, bbox: [{label, morphology, xmin, ymin,
    xmax, ymax}]}}``, an empty ``bbox`` list for lesion-free frames), ``manifest.csv``
    (``image, mask, label, morphology, patient_id``; ``label`` is the image-level class,
    ``"normal"`` without lesion; ``morphology`` that of the largest lesion),
    ``overlays.json`` (``{stem: [{type, xmin, ymin, xmax, ymax}]}``, see the module
    docstring) and ``synthetic.json`` (generator settings and device profile).

    Consecutive frames are grouped into patients of 1..``max_frames_per_patient``
    frames sharing a tissue tint. Frame ``i`` only depends on ``(seed, site_index, i)``
    and its patient, so a larger ``n_images`` extends a site without changing it.
    """
    if layout not in SITE_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(SITE_LAYOUTS)}")
    if image_format not in _IMAGE_WRITERS:
        raise ValueError(
            f"unknown image_format {image_format!r}; expected one of {sorted(_IMAGE_WRITERS)}"
        )
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    profile = profile or device_profile_for_site(site_index, seed)
    cfg = lesions or LesionConfig()
    hw = frame_shape(size)

    patient_rng = np.random.default_rng([int(seed), int(site_index), 0x9A71E7])
    frames: list[tuple[str, str, SyntheticFrame]] = []
    patient, left, tint = -1, 0, np.ones(3)
    for i in range(n_images):
        if left == 0:
            patient += 1
            left = int(patient_rng.integers(1, max_frames_per_patient + 1))
            tint = patient_rng.uniform(0.93, 1.07, 3)
        left -= 1
        rng = np.random.default_rng([int(seed), int(site_index), i])
        frame = render_frame(rng, size=hw, profile=profile, lesions=cfg, tissue_tint=tint)
        stem = f"s{site_index + 1:02d}_{i:05d}"
        frames.append((stem, f"s{site_index + 1:02d}-p{patient:04d}", frame))

    SITE_LAYOUTS[layout](root, frames, image_format)
    overlays = {
        stem: [
            {"type": t, "xmin": int(b[0]), "ymin": int(b[1]), "xmax": int(b[2]), "ymax": int(b[3])}
            for b, t in zip(f.overlay_boxes, f.overlay_types)
        ]
        for stem, _, f in frames
    }
    with open(root / "overlays.json", "w", encoding="utf-8") as fh:
        json.dump(overlays, fh, indent=1, sort_keys=True)
    summary = SiteSummary(
        root=root,
        site_index=site_index,
        n_images=n_images,
        n_lesions=sum(len(f.labels) for _, _, f in frames),
        n_lesion_free=sum(len(f.labels) == 0 for _, _, f in frames),
        n_patients=patient + 1,
        profile=profile,
        class_names=tuple(cfg.class_names),
    )
    info = {
        "generator": "endofed.synthetic",
        "seed": int(seed),
        "site_index": int(site_index),
        "size": list(hw),
        "layout": layout,
        "image_format": image_format,
        "class_names": list(cfg.class_names),
        "n_images": n_images,
        "n_lesions": summary.n_lesions,
        "n_lesion_free": summary.n_lesion_free,
        "n_patients": summary.n_patients,
        "device_profile": asdict(profile),
    }
    with open(root / "synthetic.json", "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1, sort_keys=True)
    log.info(
        "%s: %d synthetic images (%d lesions, %d lesion-free, %d patients), device %s",
        root, n_images, summary.n_lesions, summary.n_lesion_free, summary.n_patients,
        profile.name,
    )
    return summary


def write_sites(
    out: Path | str,
    *,
    sites: int,
    images_per_site: int,
    seed: int,
    size: int | tuple[int, int] = (256, 256),
    layout: str = "kvasir",
    lesions: LesionConfig | None = None,
    image_format: str = "png",
) -> list[SiteSummary]:
    """Write ``out/site_1 ... out/site_N``, each with its own device profile."""
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    return [
        write_site(
            Path(out) / f"site_{k + 1}",
            n_images=images_per_site,
            seed=seed,
            site_index=k,
            size=size,
            layout=layout,
            lesions=lesions,
            image_format=image_format,
        )
        for k in range(sites)
    ]
