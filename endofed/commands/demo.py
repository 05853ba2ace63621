"""``endofed demo``: a small simulated federation of synthetic hospitals, with report."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="simulate 3 synthetic hospitals for a few rounds",
        description="Simulate a small FedAvg federation of synthetic hospitals (each with "
        "its own endoscope colour profile) on this machine and write metrics.csv and "
        "report.md to OUT/federated. The demo always starts fresh: an existing "
        "OUT/federated from an earlier demo is deleted first (the command prints what it "
        "deletes); use endofed simulate for runs that resume.\n\n"
        "Its defaults are chosen to finish in minutes on a laptop CPU and differ from "
        "simulate's on purpose: lite0 at 128 px instead of its 224, 2 local epochs per "
        "round, learning rate 0.003 with a short warm-up, batch 8, 1 thread per site.",
        epilog="example:\n  endofed demo --out runs/demo --rounds 3",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="runs directory; its federated/ subfolder is replaced")
    p.add_argument("--sites", type=int, default=3, metavar="N",
                   help="number of synthetic hospitals")
    p.add_argument("--rounds", type=int, default=6, metavar="N", help="FedAvg rounds")
    p.add_argument("--preset", default="lite0", metavar="NAME",
                   help="model preset (lite0: ImageNet-pretrained EfficientNet-Lite0)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX",
                   help="model input size in pixels (smaller than lite0's 224, for speed)")
    p.add_argument("--images-per-site", type=int, default=40, metavar="N",
                   help="synthetic images per hospital")
    p.add_argument("--lr", type=float, default=0.003, metavar="LR",
                   help="learning rate of the new layers (higher than the run config's "
                        "0.001: few rounds)")
    p.add_argument("--track", default="none", metavar="NAME",
                   help="experiment tracking: none, mlflow (sqlite store in "
                        "OUT/federated/mlruns) or tensorboard (OUT/federated/tensorboard); "
                        "needs pip install endofed[tracking]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.metrics.tracking import check_tracking
    from endofed.simulations.federated import run_simulation

    check_tracking(args.track)  # a typo or a missing package: one line, before any work
    previous = args.out / "federated"
    if previous.exists():  # the demo always starts fresh (real runs resume instead)
        print(f"replacing the previous demo run: deleting {previous}")
        shutil.rmtree(previous)
    t0 = time.perf_counter()
    run_config = {
        "num-server-rounds": args.rounds,
        "preset": args.preset,
        "image-size": args.image_size,
        "batch-size": 8,
        "local-epochs": 2,
        "learning-rate": args.lr,
        "warmup-steps": 10,
        "synthetic-images-per-site": args.images_per_site,
        "threads": 1,
        "tracking": args.track,
    }
    print(f"EndoFed demo: {args.sites} synthetic hospitals (different endoscope colour "
          f"profiles), {args.rounds} FedAvg rounds, preset {args.preset}")
    result = run_simulation(
        run_config, num_sites=args.sites, runs_dir=args.out, run_name="federated",
        num_cpus_per_client=1, timeout=1800,
    )
    print(f"done in {time.perf_counter() - t0:.0f}s")
    summary = _global_summary(result.run_dir / "metrics.json")
    if summary:
        print(summary)
    print(f"metrics: {result.run_dir / 'metrics.csv'}")
    print(f"report:  {result.run_dir / 'report.md'}")
    return 0


def _global_summary(metrics_json: Path) -> str:
    """One line on the final global model: mAP, Dice and the verdict at its threshold."""
    import json

    try:
        m = json.loads(metrics_json.read_text())
    except (OSError, ValueError):
        return ""
    line = f"global model on the held-out images: mAP@0.5 {m.get('map50', float('nan')):.3f}"
    if m.get("dice_lesion") is not None:
        line += f", Dice (lesion images) {m['dice_lesion']:.3f}"
    op = m.get("operating_point") or {}
    if all(op.get(k) is not None for k in ("threshold", "sensitivity", "specificity")):
        line += (f"; lesion when probability > {op['threshold']:g} (rule {op.get('rule')}): "
                 f"sensitivity {op['sensitivity']:.2f}, specificity {op['specificity']:.2f}")
    return line
