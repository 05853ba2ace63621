"""Whole-site preprocessing: every image of a site folder, through the cache, into a new folder."""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from endofed.shared.data.sample import SampleRecord
from endofed.shared.data.site import scan_site
from endofed.shared.preprocessing.cache import SiteCache, encode_png, resolve_detector
from endofed.shared.preprocessing.config import PreprocessConfig
from endofed.shared.preprocessing.overlay import OverlayDetector
from endofed.shared.util.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)


@dataclass
class SiteReport:
    """Counts of a :func:`preprocess_site` run; every image is accounted for."""

    site_dir: str
    out_dir: str
    images_found: int = 0
    written: int = 0
    computed: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    scan_problems: list[tuple[str, str]] = field(default_factory=list)
    min_mask_kept_share: float = 1.0

    def to_dict(self) -> dict:
        return {
            "site_dir": self.site_dir,
            "out_dir": self.out_dir,
            "images_found": self.images_found,
            "written": self.written,
            "computed": self.computed,
            "cached": self.cached,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "scan_problems": [{"path": p, "reason": r} for p, r in self.scan_problems],
            "min_mask_kept_share": self.min_mask_kept_share,
        }


# per-process state of pool workers
_WORKER: dict[str, SiteCache] = {}


def _worker_init(
    cache_dir: str, config: PreprocessConfig, detector: OverlayDetector | None
) -> None:
    # Do NOT call cv2.setNumThreads here: in a forked child whose parent already used
    # OpenCV's thread pool (the site scan decodes in threads) it deadlocks.
    _WORKER["cache"] = SiteCache(cache_dir, config, detector=detector)


def _process(record: SampleRecord, stem: str, out_dir: str) -> dict:
    cache = _WORKER["cache"]
    before = cache.computed
    try:
        sample, info = cache.get(record)
    except Exception as exc:  # noqa: BLE001 - any unreadable input is reported, not fatal
        return {"stem": stem, "path": str(record.image_path), "error": f"{exc}"}
    out = Path(out_dir)
    img_rel, mask_rel = f"images/{stem}.png", f"masks/{stem}.png"
    atomic_write_bytes(out / img_rel, encode_png(sample.image, out / img_rel))
    mask_png = encode_png(sample.mask.astype(np.uint8) * 255, out / mask_rel)
    atomic_write_bytes(out / mask_rel, mask_png)
    return {
        "stem": stem,
        "path": str(record.image_path),
        "computed": cache.computed > before,
        "height": sample.height,
        "width": sample.width,
        "boxes": sample.boxes.tolist(),
        "labels": sample.labels.tolist(),
        "image": img_rel,
        "mask": mask_rel,
        "mask_kept_share": info.mask_kept_share,
        "crop_box": list(info.crop_box),
    }


def preprocess_site(
    site_dir: Path | str,
    out_dir: Path | str,
    config: PreprocessConfig | None = None,
    *,
    detector: OverlayDetector | None = None,
    workers: int = 1,
    cache_dir: Path | str | None = None,
    progress: bool = True,
) -> SiteReport:
    """Preprocess every image of a site into ``out_dir`` (Kvasir-SEG layout).

    Writes ``images/*.png``, ``masks/*.png``, ``bboxes.json`` (``kavsir_bboxes.json``
    form, class names as labels), ``manifest.csv`` when the site had one (other
    columns kept), and ``preprocess_report.json``. Results go through a
    :class:`SiteCache` (default ``out_dir/.cache``), so a second run recomputes
    nothing. An unreadable image is logged, counted in the report and skipped.
    ``detector`` is the overlay detector (default: the classical one); each worker
    process gets it.
    """
    config = config or PreprocessConfig()
    site_dir, out_dir = Path(site_dir), Path(out_dir)
    if site_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{out_dir}: output folder must differ from the site folder")
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / ".cache"
    detector = resolve_detector(config, detector)  # fails fast on a detector it cannot build
    index = scan_site(site_dir)
    report = SiteReport(str(site_dir), str(out_dir), images_found=index.report.images_found)
    report.scan_problems = [(p.path, p.reason) for p in index.report.problems]
    stems: dict[str, int] = {}
    jobs = []
    for rec in index.records:
        stem = rec.image_path.stem
        n = stems.get(stem, 0)
        stems[stem] = n + 1
        jobs.append((rec, stem if n == 0 else f"{stem}_{n}"))
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc=f"preprocess {site_dir.name}", disable=not progress)
    if workers <= 1:
        _worker_init(str(cache_dir), config, detector)
        for rec, stem in jobs:
            results.append(_process(rec, stem, str(out_dir)))
            bar.update()
    else:
        with ProcessPoolExecutor(
            max_workers=workers,
            initializer=_worker_init,
            initargs=(str(cache_dir), config, detector),
        ) as pool:
            futures = [pool.submit(_process, rec, stem, str(out_dir)) for rec, stem in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()

    results.sort(key=lambda r: r["stem"])
    bboxes: dict[str, dict] = {}
    names = index.class_names
    for r in results:
        if "error" in r:
            logger.warning("%s: skipped: %s", r["path"], r["error"])
            report.failed.append((r["path"], r["error"]))
            continue
        report.written += 1
        report.computed += int(r["computed"])
        report.cached += int(not r["computed"])
        report.min_mask_kept_share = min(report.min_mask_kept_share, r["mask_kept_share"])
        bboxes[r["stem"]] = {
            "height": r["height"],
            "width": r["width"],
            "bbox": [
                {
                    "label": names[lab - 1] if 0 < lab <= len(names) else str(lab),
                    "xmin": b[0],
                    "ymin": b[1],
                    "xmax": b[2],
                    "ymax": b[3],
                }
                for b, lab in zip(r["boxes"], r["labels"])
            ],
        }
    atomic_write_bytes(out_dir / "bboxes.json", json.dumps(bboxes, indent=1).encode())
    _write_manifest(site_dir, out_dir, results)
    atomic_write_bytes(
        out_dir / "preprocess_report.json",
        json.dumps(
            {"config": config.to_dict(), "report": report.to_dict(),
             "images": [r for r in results if "error" not in r]},
            indent=1,
        ).encode(),
    )
    logger.info(
        "%s: %d written (%d computed, %d cached), %d failed, %d scan problems",
        site_dir, report.written, report.computed, report.cached, len(report.failed),
        len(report.scan_problems),
    )
    return report


def _write_manifest(site_dir: Path, out_dir: Path, results: list[dict]) -> None:
    """Rewrite ``manifest.csv`` (if the site had one) to point at the new files."""
    src = site_dir / "manifest.csv"
    if not src.is_file():
        return
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    if "image" not in df.columns:
        return
    by_stem = {Path(r["path"]).stem: r for r in results if "error" not in r}
    rows = []
    for _, row in df.iterrows():
        r = by_stem.get(Path(str(row["image"])).stem)
        if r is None:
            continue
        row = row.copy()
        row["image"] = r["image"]
        if "mask" in df.columns:
            row["mask"] = r["mask"]
        rows.append(row)
    out = pd.DataFrame(rows, columns=df.columns)
    atomic_write_bytes(
        out_dir / "manifest.csv", out.to_csv(index=False, quoting=csv.QUOTE_MINIMAL).encode()
    )
