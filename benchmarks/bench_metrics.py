"""Throughput of MetricAccumulator.update / compute / state merge; prints JSON.

Usage: python benchmarks/bench_metrics.py [--images 2000] [--dets 50] [--classes 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from endofed.shared.metrics import MetricAccumulator, sum_states


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--dets", type=int, default=50, help="detections per image")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--mask-size", type=int, default=128)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    k = args.classes
    names = [f"c{i}" for i in range(1, k + 1)]
    acc = MetricAccumulator(class_names=names, morphology_names=["u", "f", "d"])
    t_update = 0.0
    for start in range(0, args.images, args.batch):
        b = min(args.batch, args.images - start)
        dets, tgts = [], []
        for _ in range(b):
            g = int(rng.integers(0, 4))
            gb = rng.uniform(0, 200, (g, 2))
            gt = np.concatenate([gb, gb + rng.uniform(10, 50, (g, 2))], axis=1)
            db = rng.uniform(0, 200, (args.dets, 2))
            det = np.concatenate([db, db + rng.uniform(10, 50, (args.dets, 2))], axis=1)
            det[: 2 * g] = np.repeat(gt, 2, axis=0) + rng.normal(0, 3, (2 * g, 4))
            dets.append(
                {
                    "boxes": det,
                    "labels": rng.integers(1, k + 1, args.dets),
                    "scores": rng.random(args.dets),
                }
            )
            tgts.append(
                {
                    "boxes": gt,
                    "labels": rng.integers(1, k + 1, g),
                    "morphology": rng.integers(-1, 3, g),
                }
            )
        probs = rng.dirichlet(np.ones(k + 1), b)
        labels = rng.integers(0, k + 1, b)
        s = args.mask_size
        mask_prob = rng.random((b, 1, s, s), dtype=np.float32)
        mask_true = (rng.random((b, 1, s, s)) > 0.7).astype(np.float32)
        t0 = time.perf_counter()
        acc.update(
            detections=dets,
            targets=tgts,
            image_probs=probs,
            image_labels=labels,
            mask_prob=mask_prob,
            mask_true=mask_true,
            latency_ms=1.0,
        )
        t_update += time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = acc.compute()
    t_compute = time.perf_counter() - t0
    t0 = time.perf_counter()
    sum_states([acc.state()] * 10)
    t_merge = (time.perf_counter() - t0) / 10
    state_bytes = sum(v.nbytes for v in acc.state().values())
    print(
        json.dumps(
            {
                "images": args.images,
                "detections_per_image": args.dets,
                "classes": k,
                "update_ms_per_image": round(1000 * t_update / args.images, 3),
                "compute_ms": round(1000 * t_compute, 2),
                "merge_ms_per_state": round(1000 * t_merge, 3),
                "state_bytes": state_bytes,
                "map50": round(metrics["map50"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
