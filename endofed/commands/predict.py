"""``endofed predict CHECKPOINT IMAGE_OR_DIR... --out DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a trained model on images: JSON + overlay PNGs")
    p.add_argument("checkpoint", type=Path, help="model file (model.pt / final_model.pt)")
    p.add_argument("inputs", nargs="+", type=Path,
                   help="images, DICOM files (.dcm: one prediction per frame, named "
                   "<name>_frame<n>) or folders (searched recursively; regular files only)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: <name>.json (+ <name>_overlay.png) per image, <name> "
                   "its path inside the given folder; a taken name gets -2, -3, ...")
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-overlay", action="store_true", help="JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.engine import resolve_device
    from endofed.shared.inference import Predictor, predict_to_dir
    from endofed.shared.metrics import json_safe

    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=resolve_device(args.device), score_thresh=args.score_thresh
    )
    results, problems = predict_to_dir(
        predictor, args.inputs, args.out, overlays=not args.no_overlay
    )
    op = predictor.operating_point
    summary = {"images": len(results), "skipped": [{"file": f, "reason": r} for f, r in problems],
               "out": str(args.out),
               "lesion_images": sum(bool(r["lesion"]) for r in results),
               "operating_point": json_safe(op.to_dict())}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(results)} images predicted ({summary['lesion_images']} lesion at lesion "
          f"probability > {op.threshold:g}, rule {op.rule}), {len(problems)} skipped "
          f"-> {args.out}")
    for f, r in problems:
        print(f"  skipped {f}: {r}")
    return 0 if results else 1
