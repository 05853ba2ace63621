"""``endofed synth --out DIR``: write synthetic hospitals (Kvasir-SEG style folders)."""

from __future__ import annotations

import argparse

from endofed.commands._common import add_out_flag, out_path


def _size(value: str) -> tuple[int, int]:
    """``256`` or ``256x320`` (``HxW``)."""
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {value!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with sides >= 32, got {value!r}")
    return parts[0], parts[1]


def _classes(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("--classes needs at least one class name")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the ``endofed`` parser."""
    p = subparsers.add_parser(
        "synth",
        help="write synthetic hospitals (endoscopy-like frames with exact masks/boxes)",
        description="Write DIR/site_1 ... DIR/site_N, each a Kvasir-SEG style folder "
        "(images/, masks/, bboxes.json, manifest.csv, overlays.json) drawn with its own "
        "endoscope colour profile. Same seed, same bytes.",
        epilog="example:\n  endofed synth --out data/synthetic --sites 3 --images-per-site 40 "
               "--classes protruding,flat",
    )
    add_out_flag(p, help="output folder (required; the old positional OUT still works)")
    p.add_argument("--sites", type=int, default=3, metavar="N",
                   help="number of hospitals (default 3)")
    p.add_argument("--images-per-site", type=int, default=24, metavar="N",
                   help="images per hospital")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="N|HxW",
                   help="frame size in pixels, N or HxW (default 256)")
    p.add_argument(
        "--classes", type=_classes, default=("lesion",), metavar="NAMES",
        help="comma-separated lesion classes (default 'lesion'); classes named "
        "protruding/flat/depressed take that morphology, others cycle through them",
    )
    p.add_argument("--empty-fraction", type=float, default=0.25, metavar="FRACTION",
                   help="share of lesion-free frames (default 0.25)")
    p.add_argument("--format", choices=("png", "jpg"), default="png",
                   help="image format (masks are always PNG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.data.synthetic import LesionConfig, write_sites

    out = out_path(args)
    if args.sites < 1 or args.images_per_site < 1:
        raise SystemExit("endofed synth: --sites and --images-per-site must be >= 1")
    try:
        lesions = LesionConfig(class_names=args.classes, empty_fraction=args.empty_fraction)
    except ValueError as exc:
        raise SystemExit(f"endofed synth: {exc}") from None
    summaries = write_sites(
        out, sites=args.sites, images_per_site=args.images_per_site, seed=args.seed,
        size=args.size, lesions=lesions, image_format=args.format,
    )
    h, w = args.size
    print(f"wrote {len(summaries)} synthetic sites ({w}x{h}, classes: "
          f"{', '.join(args.classes)}) to {out}")
    for s in summaries:
        print(f"  {s.root}: {s.n_images} images, {s.n_lesions} lesions, "
              f"{s.n_lesion_free} lesion-free, {s.n_patients} patients, device {s.profile.name}")
    return 0
