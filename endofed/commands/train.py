"""``endofed train DATA... --out RUN_DIR``: the centralized baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from endofed.commands._common import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train centrally on one or more site folders")
    p.add_argument("data", nargs="+", type=Path, help="site folders (pooled)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.metrics import flat_scalars
    from endofed.simulations.central import train_central

    cfg = config_from_args(args, {"preset": "lite0", "threads": 0})
    result = train_central(cfg, args.data, args.out, resume=not args.no_resume)
    scalars = flat_scalars(result.metrics)
    keys = ("map50", "map", "dice", "auc", "sensitivity", "specificity", "accuracy", "f1")
    print("  ".join(f"{k}={scalars.get(k, float('nan')):.4f}" for k in keys))
    print(f"model: {result.model_path}\nreport: {result.out_dir / 'report.md'}")
    return 0
