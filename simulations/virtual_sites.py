"""Virtual hospitals: the experiment's K site folders, materialised once and reloaded.

The data folders (or synthetic hospitals) are pooled, split into K sites by
:func:`endofed.shared.data.partition.partition`, each site is split patient-aware
into train/val, and each site is written as a folder with a ``manifest.csv``
(absolute image paths and a ``split`` column), optionally with device-shifted
copies of its images. Every arm reads exactly these folders, so the split cannot
drift between arms.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from endofed.shared.config import EndoFedConfig
from endofed.shared.data.layouts._base import MANIFEST_NAME, SITE_SETTINGS_NAME
from endofed.shared.data.partition import partition
from endofed.shared.data.sample import SampleRecord
from endofed.shared.data.site import load_sample
from endofed.shared.data.split import split_records
from endofed.shared.data.synthetic import DeviceProfile, write_sites
from endofed.simulations.central import pooled_records
from endofed.simulations.device_shift import apply_device_profile, profile_rng, site_profiles
from endofed.simulations.experiment_spec import ExperimentError, ExperimentSpec

log = logging.getLogger(__name__)

_MANIFEST_COLUMNS = ["image", "mask", "label", "xmin", "ymin", "xmax", "ymax", "morphology",
                     "split", "patient_id", "lesion_id"]  # fmt: skip


@dataclass
class VirtualSite:
    """One materialised hospital: its folder and its fixed train/val records."""

    name: str
    path: Path
    train: list[SampleRecord]
    val: list[SampleRecord]

    @property
    def records(self) -> list[SampleRecord]:
        """Train then val records."""
        return [*self.train, *self.val]


def source_folders(spec: ExperimentSpec) -> list[Path]:
    """The data folders to pool: ``spec.data``, or synthetic hospitals written once."""
    if spec.data:
        return [Path(p).resolve() for p in spec.data]
    root = (spec.out / "source" / "synthetic").resolve()
    folders = [root / f"site_{i + 1}" for i in range(spec.sites)]
    if not all((f / MANIFEST_NAME).exists() for f in folders):
        log.info("writing %d synthetic hospitals of %d images to %s",
                 spec.sites, spec.images_per_site, root)
        write_sites(root, sites=spec.sites, images_per_site=spec.images_per_site,
                    seed=spec.split_seed, size=max(spec.image_size, 128))
    return folders


def _limited(records: list[SampleRecord], limit: int, seed: int) -> list[SampleRecord]:
    """At most ``limit`` records (``<= 0``: all), a seeded random subset in order."""
    if limit <= 0 or len(records) <= limit:
        return records
    keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[int(i)] for i in keep]


def _write_png(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return f"{path.parent.name}/{path.name}"  # relative: the folder is renamed into place


def write_site_manifest(
    site_dir: Path,
    records: Sequence[SampleRecord],
    split_of: Mapping[str, str],
    class_names: Sequence[str],
    *,
    shift: tuple[DeviceProfile, int, int] | None = None,
) -> None:
    """Write ``site_dir/manifest.csv`` (one row per box) for ``records``.

    With ``shift = (profile, seed, site_index)`` the images are device-shifted copies
    written to ``site_dir/images``; otherwise the manifest points at the originals.
    COCO polygon/RLE masks are decoded to ``site_dir/masks``.
    """
    site_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k, r in enumerate(records):
        stem = f"{k:05d}_{Path(r.image_path).stem}"
        image = str(Path(r.image_path).resolve())
        mask = str(Path(r.mask_path).resolve()) if r.mask_path else ""
        sample = None
        if shift is not None:
            profile, seed, site_index = shift
            sample = load_sample(r)
            shifted = apply_device_profile(sample.image, profile,
                                           profile_rng(seed, site_index, k))
            image = _write_png(site_dir / "images" / f"{stem}.png",
                               cv2.cvtColor(shifted, cv2.COLOR_RGB2BGR))
        if not mask and r.segmentation:
            sample = sample or load_sample(r)
            mask = _write_png(site_dir / "masks" / f"{stem}.png",
                              sample.mask.astype(np.uint8) * 255)
        common = {
            "image": image, "mask": mask, "split": split_of[str(r.image_path)],
            "patient_id": r.meta.patient_id or "", "lesion_id": r.meta.lesion_id or "",
        }
        if len(r.boxes) == 0:
            rows.append({**common, "label": "normal", "xmin": "", "ymin": "", "xmax": "",
                         "ymax": "", "morphology": ""})
        for j, (box, label) in enumerate(zip(r.boxes, r.labels)):
            morph = r.meta.morphologies[j] if j < len(r.meta.morphologies) else ""
            rows.append({**common, "label": class_names[int(label) - 1],
                         "xmin": repr(float(box[0])), "ymin": repr(float(box[1])),
                         "xmax": repr(float(box[2])), "ymax": repr(float(box[3])),
                         "morphology": morph or ""})
    pd.DataFrame(rows, columns=_MANIFEST_COLUMNS).to_csv(site_dir / MANIFEST_NAME, index=False)
    _write_allowed_roots(site_dir, rows)


def _write_allowed_roots(site_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Let the virtual site read the source folders its manifest points into.

    A site's annotations may name files only inside its folder or an ``allowed-roots``
    folder of its settings file; a virtual hospital references the original images.
    """
    roots = sorted({
        str(Path(v).parent) for r in rows for v in (r["image"], r["mask"])
        if v and Path(v).is_absolute()
    })
    if roots:
        lines = ",\n".join(f"    {json.dumps(r)}" for r in roots)
        (site_dir / SITE_SETTINGS_NAME).write_text(f"allowed-roots = [\n{lines},\n]\n")


def _write_sites(spec: ExperimentSpec, cfg: EndoFedConfig, staging: Path) -> dict[str, Any]:
    """Partition the pooled sources and write every site folder under ``staging``."""
    records: list[SampleRecord] = []
    for folder in source_folders(spec):
        records.extend(_limited(pooled_records([folder], cfg), spec.limit_images,
                                spec.split_seed))
    parts = partition(records, spec.partition, spec.sites, seed=spec.split_seed)
    order = sorted(range(len(parts)), key=lambda i: -len(parts[i]))  # stable
    profiles = site_profiles(spec.sites, spec.split_seed) if spec.device_shift else None
    info: dict[str, Any] = {"sites": []}
    for new, old in enumerate(order):
        part = parts[old]
        split = split_records(part, (1 - spec.val_fraction, spec.val_fraction),
                              seed=spec.split_seed)
        split_of = {str(r.image_path): side for side, rs in split.items() for r in rs}
        name = f"site_{new + 1}"
        shift = (profiles[new], spec.split_seed, new) if profiles else None
        write_site_manifest(staging / name, part, split_of, cfg.data.class_names, shift=shift)
        info["sites"].append({
            "name": name, "train": len(split["train"]), "val": len(split["val"]),
            "device_profile": dataclasses.asdict(profiles[new]) if profiles else None,
        })
    (staging / "sites.json").write_text(json.dumps(info, indent=1))
    return info


def materialize_sites(spec: ExperimentSpec, cfg: EndoFedConfig) -> list[VirtualSite]:
    """Create (once) and load the experiment's K hospitals under ``out/sites``.

    Sites are numbered by decreasing size, so ``site_i`` is also Flower's partition
    ``i - 1`` under ``partition=source`` (checked by :func:`flower_site_names`). The
    folders are written to a fresh staging folder and renamed into place, so an
    interrupted run leaves either no ``sites`` or complete ones.
    """
    root = spec.out / "sites"
    if not (root / "sites.json").exists():
        staging = spec.out / f".sites.{uuid.uuid4().hex}.tmp"  # unique per writer
        staging.mkdir(parents=True)
        try:
            info = _write_sites(spec, cfg, staging)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("materialised %d hospitals in %s: %s", spec.sites, root,
                 [(s["name"], s["train"], s["val"]) for s in info["sites"]])
    info = json.loads((root / "sites.json").read_text())
    sites = []
    for entry in info["sites"]:
        path = (root / entry["name"]).resolve()
        recs = pooled_records([path], cfg)
        sites.append(VirtualSite(
            entry["name"], path,
            train=[r for r in recs if r.meta.split == "train"],
            val=[r for r in recs if r.meta.split == "val"],
        ))
    return sites


def flower_site_names(sites: Sequence[VirtualSite]) -> dict[str, str]:
    """Flower's ``site_{pid+1}`` -> our site name, as the ClientApp resolves them
    (run config ``data-path`` = the site folders, ``partition=source``)."""
    union = [r for s in sites for r in s.records]
    parts = partition(union, "source", len(sites))
    mapping = {}
    for pid, part in enumerate(parts):
        names = {r.meta.site for r in part}
        if len(names) != 1:
            raise ExperimentError(f"partition {pid} mixes site folders {sorted(names)}")
        mapping[f"site_{pid + 1}"] = names.pop()
    return mapping
