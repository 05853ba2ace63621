"""``endofed export MODEL --format onnx --out FILE``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained model (ONNX) and check it against eager",
        description="Write MODEL as an ONNX file and, unless --no-check, run it with "
        "onnxruntime on a test input and compare with the PyTorch model; prints the "
        "comparison as JSON.",
        epilog="example:\n  endofed export runs/central/model.pt --out model.onnx",
    )
    p.add_argument("checkpoint", type=Path, metavar="MODEL",
                   help="model file (model.pt, final_model.pt)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset version")
    p.add_argument("--no-check", action="store_true",
                   help="skip the comparison with the PyTorch model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.inference import export_and_check
    from endofed.shared.model import load_model_checkpoint

    model = load_model_checkpoint(args.checkpoint, map_location="cpu")
    report = export_and_check(model, args.out, opset=args.opset, check=not args.no_check)
    print(json.dumps(report, indent=1))
    return 0
