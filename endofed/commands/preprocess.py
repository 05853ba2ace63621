"""``endofed preprocess DIR --out OUT``: overlay removal and denoising of a site folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="crop overlays and denoise a site's images (paper 2.1.2), with a cache",
        description=(
            "Detect overlays (black border, text, panels, tube), crop them away without "
            "cutting lesions, inpaint remaining text, then median + Sym4 wavelet "
            "denoising. Output is a Kvasir-SEG style folder any EndoFed loader reads."
        ),
        epilog="example:\n  endofed preprocess data/site_a --out data/site_a_clean --workers 2",
    )
    p.add_argument("site_dir", type=Path, metavar="DIR", help="site folder (any layout)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel processes (default 1)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="cache of processed images (default: OUT/.cache)")
    p.add_argument("--no-crop", action="store_true", help="keep the full frame")
    p.add_argument("--no-inpaint", action="store_true", help="do not inpaint burnt-in text")
    p.add_argument("--no-denoise", action="store_true", help="no median and no wavelet stage")
    p.add_argument("--no-median", action="store_true", help="skip the 5x5 median filter")
    p.add_argument("--no-wavelet", action="store_true", help="skip the Sym4 wavelet stage")
    p.add_argument("--detector", default="classical", metavar="KIND",
                   help="overlay detector: classical (default) or learned (needs --detector-path)")
    p.add_argument("--detector-path", default=None, metavar="FILE",
                   help="weights file of a learned detector (endofed overlay-detector train)")
    p.add_argument("--wavelet-levels", type=int, default=None, metavar="N",
                   help="Sym4 wavelet decomposition levels (default: the preprocessing "
                        "config's)")
    p.add_argument("--threshold", choices=("BayesShrink", "VisuShrink"), default=None,
                   help="wavelet coefficient threshold rule (default: the preprocessing "
                        "config's)")
    p.add_argument("--threshold-mode", choices=("soft", "hard"), default=None,
                   help="soft or hard wavelet thresholding (default: the preprocessing "
                        "config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`PreprocessConfig` the flags describe."""
    from endofed.shared.preprocessing import PreprocessConfig

    kwargs: dict = {
        "crop": not args.no_crop,
        "inpaint_text": not args.no_inpaint,
        "median": not (args.no_denoise or args.no_median),
        "wavelet": not (args.no_denoise or args.no_wavelet),
        "detector": args.detector,
        "detector_path": args.detector_path,
    }
    kwargs["detect_overlays"] = kwargs["crop"] or kwargs["inpaint_text"]
    if args.wavelet_levels is not None:
        kwargs["wavelet_levels"] = args.wavelet_levels
    if args.threshold is not None:
        kwargs["threshold_method"] = args.threshold
    if args.threshold_mode is not None:
        kwargs["threshold_mode"] = args.threshold_mode
    return PreprocessConfig(**kwargs)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.overlay_detector import overlay_detector_for
    from endofed.shared.preprocessing import preprocess_site

    if not args.site_dir.is_dir():
        log.error("%s: not a folder", args.site_dir)
        return 2
    try:
        config = config_from_args(args)
        detector = overlay_detector_for(config) if config.detect_overlays else None
        report = preprocess_site(
            args.site_dir,
            args.out,
            config,
            detector=detector,
            workers=max(1, args.workers),
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as exc:
        log.error("preprocess %s: %s", args.site_dir, exc)
        return 2
    summary = report.to_dict()
    summary["failed"] = len(report.failed)
    summary["scan_problems"] = len(report.scan_problems)
    print(json.dumps(summary, indent=1))
    for path, reason in report.failed:
        log.warning("skipped %s: %s", path, reason)
    return 0 if report.written > 0 else 1
