"""Site data throughput: scan time and load + augment images/s (prints JSON).

    python benchmarks/bench_data.py --data ../shared/data/kvasir-seg --image-size 300 --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import torch

from endofed.shared.data import DetectionDataset, load_sample, make_loader, scan_site


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a site folder")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the 2nd run")
    ap.add_argument("--limit", type=int, default=200, help="images per throughput run")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    index = scan_site(args.data, layout=args.layout)
    scan_s = time.perf_counter() - t0
    records = index.records[: args.limit]
    n = len(records)

    t0 = time.perf_counter()
    for r in records:
        load_sample(r)
    decode_s = time.perf_counter() - t0

    torch.manual_seed(0)
    ds = DetectionDataset(records, image_size=args.image_size, train=True)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    single_s = time.perf_counter() - t0

    cached = DetectionDataset(records, image_size=args.image_size, train=True, cache_items=n)
    for i in range(n):
        cached[i]  # fill
    t0 = time.perf_counter()
    for i in range(n):
        cached[i]
    cached_s = time.perf_counter() - t0

    eval_ds = DetectionDataset(records, image_size=args.image_size, train=False)
    t0 = time.perf_counter()
    for i in range(n):
        eval_ds[i]
    eval_s = time.perf_counter() - t0

    loader = make_loader(ds, args.batch_size, shuffle=True, num_workers=args.workers, seed=0)
    t0 = time.perf_counter()
    seen = sum(len(b) for b in loader)
    workers_s = time.perf_counter() - t0

    print(json.dumps({
        "data": os.path.abspath(args.data),
        "layout": index.report.layout,
        "images_scanned": index.report.images_found,
        "usable": len(index.records),
        "problems": len(index.report.problems),
        "scan_s": round(scan_s, 3),
        "scan_images_per_s": _rate(index.report.images_found, scan_s),
        "image_size": args.image_size,
        "images_timed": n,
        "decode_images_per_s": _rate(n, decode_s),
        "train_load_augment_images_per_s_single": _rate(n, single_s),
        "train_augment_cached_images_per_s_single": _rate(n, cached_s),
        "eval_load_resize_images_per_s_single": _rate(n, eval_s),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "train_loader_images_per_s_workers": _rate(seen, workers_s),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
