"""Image-level figures cross-source and on same-source crops (prints JSON).

    python benchmarks/bench_image_level.py --model runs/central/model.pt \\
        --kvasir ../shared/data/kvasir-seg --normal ../shared/data/normal-frames

Cross-source = lesion images of ``--kvasir`` vs the images of ``--normal``; same-source
= a lesion crop and an equally sized lesion-free crop of each lesion frame
(``endofed.simulations.image_level_check``). Both on the validation split that the run
held out: pass its ``--val-fraction`` / ``--split-seed`` (defaults: the config's). The
threshold is ``--threshold``, else the checkpoint's operating point, else 0.5.
``--limit N`` keeps a seeded subset of N images per folder before the split (a quick
look, not the run's split). ``--write-crops DIR`` also writes the crops as a site folder
(outside the repository: they are derivatives of the data).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from endofed.shared.build import sample_loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.same_source import CropConfig, plan_crops, write_same_source_site
from endofed.shared.data.sample import SampleRecord
from endofed.simulations.central import pooled_records
from endofed.simulations.image_level_check import (
    OverlayAvoid,
    image_level_check,
    load_model_and_threshold,
    val_records,
)


def _limited(records: list[SampleRecord], limit: int, seed: int) -> list[SampleRecord]:
    if limit <= 0 or len(records) <= limit:
        return records
    keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[int(i)] for i in keep]


def main() -> None:
    defaults = EndoFedConfig().data
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an EndoFed model checkpoint")
    ap.add_argument("--kvasir", required=True, help="the lesion site folder")
    ap.add_argument("--normal", required=True, help="the normal-frames site folder")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    ap.add_argument("--split-seed", type=int, default=defaults.split_seed)
    ap.add_argument("--no-split", action="store_true", help="evaluate every image")
    ap.add_argument("--seed", type=int, default=0, help="crop seed")
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--class-names", default=",".join(defaults.class_names))
    ap.add_argument("--limit", type=int, default=0, help="images per folder (0 = all)")
    ap.add_argument("--no-overlay-avoid", action="store_true",
                    help="do not keep crops off detected overlay panels")
    ap.add_argument("--write-crops", default=None, help="write the crops here as a site")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    model, stored = load_model_and_threshold(args.model)
    cfg = EndoFedConfig.from_mapping({
        "image-size": args.image_size or model.config.image_size,
        "batch-size": args.batch_size,
        "val-fraction": args.val_fraction,
        "split-seed": args.split_seed,
        "class-names": args.class_names,
    })  # fmt: skip
    lesion = _limited(pooled_records([args.kvasir], cfg), args.limit, args.split_seed)
    normal = _limited(pooled_records([args.normal], cfg), args.limit, args.split_seed)
    threshold = args.threshold if args.threshold is not None else stored
    t0 = time.perf_counter()
    out = image_level_check(
        model, lesion, normal, cfg, threshold=threshold, seed=args.seed,
        avoid_overlays=not args.no_overlay_avoid, split=not args.no_split,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if args.write_crops:
        chosen = {id(r) for r in (lesion + normal if args.no_split else
                                  val_records(lesion + normal, cfg))}
        loader = sample_loader_for(cfg)
        plan = plan_crops([r for r in lesion if id(r) in chosen and len(r.labels)],
                          seed=args.seed, config=CropConfig(), loader=loader,
                          avoid=None if args.no_overlay_avoid else OverlayAvoid())
        write_same_source_site(plan, args.write_crops, list(cfg.data.class_names),
                               loader=loader)
        out["crops_written_to"] = args.write_crops
    print(json.dumps({
        "model": args.model,
        "threshold_source": ("argument" if args.threshold is not None
                             else "checkpoint" if stored is not None else "default"),
        "image_size": cfg.data.image_size,
        "limit": args.limit,
        **out,
        "seconds": round(seconds, 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
