"""``endofed predict MODEL INPUT... --out DIR``: images, DICOM files, videos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: shared.data.video.DEFAULT_VIDEO_FPS (not imported: --help stays free of OpenCV)
DEFAULT_VIDEO_FPS = 1.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="run a trained model on images, DICOM files or videos: JSON + PNGs",
        description="Run MODEL on each image (a verdict with its probability and the "
        "model's stored threshold, boxes, lesion outline, attention) and write one JSON "
        "and one predict-view PNG per image, a timeline JSON and a contact sheet per video, "
        "and DIR/summary.json. The preprocessing the model was trained with is applied.",
        epilog="example:\n  endofed predict runs/central/model.pt scans/ procedure.mp4 "
        "--out predictions --video-fps 2",
    )
    p.add_argument("checkpoint", type=Path, metavar="MODEL",
                   help="model file: model.pt, final_model.pt, model_best.pt or a federated "
                   "run's round checkpoint (checkpoints/last.pt, checkpoints/round_NNN.pt)")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="images, DICOM files (.dcm: one prediction per frame, named "
                   "<name>_frame<n>), videos (.mp4/.avi: sampled at --video-fps) or folders "
                   "(searched recursively; regular files only)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: <name>.json (+ <name>_overlay.png) per image, "
                   "<name>_timeline.json (+ <name>_contact_sheet.png) per video, <name> its "
                   "path inside the given folder; a taken name gets -2, -3, ...")
    p.add_argument("--video-fps", type=_positive_float, default=DEFAULT_VIDEO_FPS, metavar="FPS",
                   help="frames per second sampled from a video (a rate at or above the "
                   "video's own keeps every frame)")
    p.add_argument("--score-thresh", type=float, default=0.3, metavar="SCORE",
                   help="lowest detection score of a box that is drawn and listed (the "
                   "image verdict uses the model's stored threshold)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-overlay", action="store_true",
                   help="JSON only: no predict-view PNGs, no contact sheets")
    p.set_defaults(func=run)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from endofed.shared.engine import resolve_device
    from endofed.shared.inference import Predictor, predict_to_dir
    from endofed.shared.metrics import json_safe

    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=resolve_device(args.device), score_thresh=args.score_thresh
    )
    results, problems = predict_to_dir(
        predictor, args.inputs, args.out, overlays=not args.no_overlay,
        video_fps=args.video_fps,
    )
    op = predictor.operating_point
    images = [r for r in results if "video" not in r]
    videos = [r for r in results if "video" in r]
    summary = {"images": len(images), "videos": len(videos),
               "skipped": [{"file": f, "reason": r} for f, r in problems],
               "out": str(args.out),
               "lesion_images": sum(bool(r["lesion"]) for r in images),
               "video_frames": sum(int(v["sampled_frames"]) for v in videos),
               "flagged_video_frames": sum(int(v["flagged_frames"]) for v in videos),
               "operating_point": json_safe(op.to_dict()),
               **{k: v for k, v in predictor.provenance().items()
                  if k not in ("threshold", "threshold_rule")}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    videos_part = f" and {len(videos)} video(s)" if videos else ""
    print(f"{len(images)} images{videos_part} predicted ({summary['lesion_images']} lesion "
          f"images at lesion probability > {op.threshold:g}, rule {op.rule}), "
          f"{len(problems)} skipped -> {args.out}")
    for v in videos:
        print(f"  video {v['video']}: {v['sampled_frames']} frames sampled at "
              f"{v['sampling_fps']:g}/s, {v['flagged_frames']} flagged -> {v['timeline']}")
    for f, r in problems:
        print(f"  skipped {f}: {r}")
    return 0 if results else 1
