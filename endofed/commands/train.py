"""``endofed train DATA... --out RUN_DIR``: the centralized baseline (DP-SGD with
``-c dp-epsilon=...``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from endofed.commands._common import add_config_flags, config_from_args

#: train's own defaults over the run config's (which the Flower apps share).
TRAIN_DEFAULTS: dict[str, object] = {"preset": "lite0", "threads": 0}
_WHY = {
    "preset": "train is the baseline of a real federation, which runs the "
              "ImageNet-pretrained lite0 (pyproject's run config); the bare config's tiny "
              "is for fast tests",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train centrally on one or more site folders",
        description=(
            "Pools the site folders, splits them patient-aware, trains and keeps the best "
            "epoch by validation mAP@0.5. With -c dp-epsilon=E it trains with DP-SGD "
            "(Opacus, the federation's privacy entry point; ledger in --out). An existing "
            "OUT/checkpoints/last.pt is resumed exactly (same preset, size, classes and "
            "DP settings required) unless --no-resume."
        ),
        epilog="example:\n  endofed train data/site_a data/site_b --out runs/central "
               "--epochs 20\n  endofed train data/site_a --out runs/central_dp "
               "-c dp-epsilon=8 --track mlflow",
    )
    p.add_argument("data", nargs="+", type=Path, metavar="DIR", help="site folders (pooled)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory")
    p.add_argument("--no-resume", action="store_true",
                   help="start over: ignore (and replace) OUT/checkpoints/last.pt")
    p.add_argument("--track", dest="cfg_tracking", default=None, metavar="NAME",
                   help="experiment tracking: none, mlflow (sqlite store in OUT/mlruns: "
                        "settings, per-epoch metrics, report and model) or tensorboard "
                        "(event files in OUT/tensorboard); needs pip install "
                        "endofed[tracking] (default: none)")
    add_config_flags(p, defaults=TRAIN_DEFAULTS, why=_WHY)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.privacy.accounting import PrivacyBudgetError
    from endofed.privacy.ledger import LedgerError
    from endofed.shared.engine.trainer import ResumeError
    from endofed.shared.metrics import flat_scalars
    from endofed.shared.model.weights import UnreadableFileError
    from endofed.simulations.central import train_central

    cfg = config_from_args(args, dict(TRAIN_DEFAULTS))
    try:
        result = train_central(cfg, args.data, args.out, resume=not args.no_resume)
    except (ResumeError, UnreadableFileError, PrivacyBudgetError, LedgerError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"endofed train: {exc}", file=sys.stderr)
        return 2
    scalars = flat_scalars(result.metrics)
    keys = ("map50", "map", "dice", "auc", "sensitivity", "specificity", "accuracy", "f1")
    print("  ".join(f"{k}={scalars.get(k, float('nan')):.4f}" for k in keys))
    if result.privacy is not None:
        p = result.privacy
        print(f"DP-SGD: epsilon spent {p['epsilon_spent']:.4g} of {p['epsilon_target']:g} "
              f"(delta {p['delta']:g}, noise multiplier {p['noise_multiplier']:.4g}); "
              f"ledger: {p['ledger']}")
    print(f"model: {result.model_path}\nreport: {result.out_dir / 'report.md'}")
    return 0
