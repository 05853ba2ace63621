"""``endofed overlay-detector train|eval``: the optional learned overlay detector (paper
2.1.2). Formerly ``endofed overlay`` (still accepted for one release): it detects the
overlay *noise* of endoscopy frames (border, burnt-in text, panels, tube), it does not
draw prediction overlays (that is ``endofed predict``).

``train`` fits the project's improved SSD on overlay composites (overlay-free frames
with synthetic black border, text, panel and tube drawn on top) and writes a
checkpoint usable as ``PreprocessConfig(detector="learned", detector_path=FILE)``.
``eval`` prints per-type recall at IoU >= 0.5 on fresh composites as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``overlay-detector`` (alias ``overlay``, with ``train`` and ``eval``)."""
    p = subparsers.add_parser(
        "overlay-detector", aliases=["overlay"],
        help="train / evaluate the learned detector of overlay noise (border, text, panel, "
             "tube) that preprocess can crop away",
        description="The optional learned overlay detector: the improved SSD trained on "
        "composites of overlay-free frames and synthetic overlays (black border, burnt-in "
        "text, panels, tube). preprocess --detector learned --detector-path FILE uses it. "
        "It finds overlay noise in frames; prediction overlays are drawn by "
        "'endofed predict'. Formerly 'endofed overlay' (still accepted for one release).",
        epilog="example:\n  endofed overlay-detector train --out detector.pt --epochs 5\n"
               "  endofed overlay-detector eval detector.pt --images 50",
    )
    sub = p.add_subparsers(dest="overlay_command", metavar="ACTION")
    t = sub.add_parser(
        "train", help="train a detector and write its checkpoint",
        description="Train the overlay detector on composites and write its checkpoint.",
        epilog="example:\n  endofed overlay-detector train --out detector.pt "
               "--backgrounds clean_frames/ --epochs 20",
    )
    t.add_argument("--out", type=Path, required=True, metavar="FILE", help="checkpoint to write")
    t.add_argument("--backgrounds", type=Path, default=None, metavar="DIR",
                   help="folder of overlay-free frames (default: synthetic clean frames)")
    t.add_argument("--images", type=_positive, default=256, metavar="N",
                   help="training composites (default 256)")
    t.add_argument("--epochs", type=_positive, default=20, metavar="N", help="epochs (default 20)")
    t.add_argument("--image-size", type=_positive, default=128, metavar="PX",
                   help="model input size in pixels (default 128)")
    t.add_argument("--batch-size", type=_positive, default=16, metavar="N",
                   help="batch size (default 16)")
    t.add_argument("--preset", default="tiny", metavar="NAME",
                   help="model preset (default tiny: the detector is small and fast)")
    t.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    t.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda ... (default auto)")
    t.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads (0 = torch default)")
    t.set_defaults(func=run_train)
    e = sub.add_parser(
        "eval", help="per-type recall and precision at IoU >= 0.5 on fresh composites (JSON)",
        description="Print per-type recall and precision at IoU >= 0.5 on fresh composites "
        "as JSON.",
        epilog="example:\n  endofed overlay-detector eval detector.pt --images 100",
    )
    e.add_argument("file", type=Path, metavar="FILE", help="checkpoint of `overlay-detector train`")
    e.add_argument("--images", type=_positive, default=100, metavar="N",
                   help="composites (default 100)")
    e.add_argument("--backgrounds", type=Path, default=None, metavar="DIR",
                   help="folder of overlay-free frames (default: synthetic clean frames)")
    e.add_argument("--size", type=_positive, default=256, metavar="PX",
                   help="composite side (default 256)")
    e.add_argument("--score-thresh", type=float, default=0.2, metavar="SCORE",
                   help="min score (default 0.2)")
    e.add_argument("--seed", type=int, default=12345, metavar="N",
                   help="composite seed; differs from training seeds (default 12345)")
    e.set_defaults(func=run_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    from endofed.shared.engine import resolve_device
    from endofed.shared.overlay_detector import train_overlay_detector

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        path = train_overlay_detector(
            args.out, backgrounds=args.backgrounds, n_images=args.images,
            image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
            preset=args.preset, seed=args.seed, device=resolve_device(args.device),
            progress=True,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"endofed overlay-detector train: {exc}") from None
    print(f"wrote overlay detector {path} ({args.images} composites, {args.epochs} epochs, "
          f"{args.image_size} px, {time.perf_counter() - t0:.1f} s)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from endofed.shared.overlay_detector import (
        LEARNED,
        LearnedDetector,
        make_composites,
        overlay_recall,
    )
    from endofed.shared.preprocessing import PreprocessConfig

    try:
        det = LearnedDetector(
            PreprocessConfig(detector=LEARNED, detector_path=str(args.file)),
            score_thresh=args.score_thresh,
        )
        comps = make_composites(args.images, backgrounds=args.backgrounds, size=args.size,
                                seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"endofed overlay-detector eval: {exc}") from None
    t0 = time.perf_counter()
    result = overlay_recall(det.detect_boxes, comps)
    result["all"]["ms_per_image"] = (time.perf_counter() - t0) * 1e3 / len(comps)
    clean = {k: {n: (None if isinstance(v, float) and math.isnan(v) else v)
                 for n, v in d.items()} for k, d in result.items()}
    print(json.dumps({"file": str(args.file), "images": args.images,
                      "score_thresh": args.score_thresh, "iou_thresh": 0.5,
                      "recall": clean}, indent=2))
    return 0
