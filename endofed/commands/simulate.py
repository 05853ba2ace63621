"""``endofed simulate``: central vs local-only vs federated (x DP) on one fixed split."""

from __future__ import annotations

import argparse
from pathlib import Path

from endofed.commands._common import add_config_flags, config_mapping, preset_image_size


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") \
            from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="research grid: central, local-only and federated arms (x DP) on one split",
        description=(
            "Every arm trains on the same virtual hospitals, the same patient-aware "
            "train/val split and the same budget (rounds x local-epochs epochs), and is "
            "evaluated here on each hospital's val split. Writes results.csv, summary.md "
            "and plots/ to --out; rerunning the same command resumes the grid.\n\n"
            "Defaults: preset lite0 (the ImageNet-pretrained model the federation runs, "
            "as for train; the bare run config's tiny is for tests), the preset's input "
            "size, 5 rounds of 1 local epoch. endofed demo differs on purpose (128 px, "
            "2 local epochs, lr 0.003) to finish in minutes on a laptop."
        ),
        epilog="example:\n  endofed simulate --out runs/grid --arms central,local,fedavg "
               "--dp none,8 --rounds 5\n  endofed simulate --data data/kvasir --sites 4 "
               "--partition dirichlet:0.5 --out runs/kvasir",
    )
    p.add_argument("--data", type=str, default="synthetic", metavar="DIR[,DIR...]|synthetic",
                   help="comma-separated data folders, or 'synthetic' (default)")
    p.add_argument("--sites", type=int, default=3, metavar="N",
                   help="number of virtual hospitals K")
    p.add_argument("--partition", default="iid", metavar="KIND",
                   help="how the pooled data is split into hospitals: iid, "
                   "dirichlet:A[,MIN] (MIN = fewest images per hospital), source")
    p.add_argument("--arms", type=_csv, default=_csv("central,local,fedavg"), metavar="ARMS",
                   help="central, local and/or strategies (fedavg, fedprox, fedadam, "
                        "fedmedian, ...); 'X+prep' enables site preprocessing")
    p.add_argument("--dp", type=_csv, default=["none"], metavar="EPS[,EPS...]",
                   help="comma-separated per-site DP budgets for federated arms, e.g. "
                        "none,8,4,1")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="federated rounds R")
    p.add_argument("--local-epochs", type=int, default=1, metavar="N",
                   help="local epochs per round E")
    p.add_argument("--preset", default="lite0", metavar="NAME",
                   help="model preset (lite0/lite1/lite2: ImageNet-pretrained; tiny, cpu, "
                        "...); lite0 as for train, not the bare config's tiny")
    p.add_argument("--seeds", type=_ints, default=[0], metavar="N[,N...]",
                   help="comma-separated training seeds")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="experiment directory")
    p.add_argument("--holdout-site", type=Path, default=None, metavar="DIR",
                   help="a hospital folder never trained on; every model is also evaluated there")
    p.add_argument("--device-shift", action="store_true",
                   help="give each virtual hospital its own simulated endoscope colour profile")
    p.add_argument("--preprocess-ablation", action="store_true",
                   help="also run each federated arm with site preprocessing ('X+prep')")
    p.add_argument("--images-per-site", type=int, default=24, metavar="N",
                   help="images per synthetic hospital (synthetic data only)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="model input size in pixels (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per batch")
    p.add_argument("--limit-images", type=int, default=0, metavar="N",
                   help="use at most N images per data folder (0 = all), for quick runs")
    p.add_argument("--split-seed", type=int, default=0, metavar="N",
                   help="seed of the partition and the train/val split (fixed for all arms)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="FRACTION",
                   help="patient-aware validation share of each hospital")
    p.add_argument("--cpus-per-client", type=float, default=1.0, metavar="N",
                   help="CPUs reserved per simulated hospital")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds before a federated run is abandoned (default: no limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--track", dest="cfg_tracking", default=None, metavar="NAME",
                   help="experiment tracking: none, mlflow (one sqlite store OUT/mlruns, "
                        "one run per arm and seed, tagged with strategy, DP and seed) or "
                        "tensorboard (OUT/tensorboard/<arm>); needs pip install "
                        "endofed[tracking] (default: none)")
    add_config_flags(p, only=["--lr", "--device", "--class-names", "--threads", "--max-steps"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.metrics.tracking import check_tracking
    from endofed.simulations.experiment import run_experiment
    from endofed.simulations.experiment_results import summary_table
    from endofed.simulations.experiment_spec import (
        ExperimentError,
        ExperimentSpec,
        parse_arms,
        parse_dp,
    )

    data = None if args.data.strip().lower() == "synthetic" else [Path(p) for p in _csv(args.data)]
    extra_config = config_mapping(args)
    check_tracking(str(extra_config.get("tracking", "none")))  # before any arm starts
    try:
        spec = ExperimentSpec(
            out=args.out,
            data=data,
            sites=args.sites,
            partition=args.partition,
            arms=parse_arms(args.arms, preprocess_ablation=args.preprocess_ablation),
            dp=parse_dp(args.dp),
            rounds=args.rounds,
            local_epochs=args.local_epochs,
            preset=args.preset,
            seeds=args.seeds,
            holdout_site=args.holdout_site,
            device_shift=args.device_shift,
            images_per_site=args.images_per_site,
            image_size=args.image_size or preset_image_size(args.preset) or 128,
            batch_size=args.batch_size,
            limit_images=args.limit_images,
            split_seed=args.split_seed,
            val_fraction=args.val_fraction,
            extra_config=extra_config,
            num_cpus_per_client=args.cpus_per_client,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
        result = run_experiment(spec)
    except ExperimentError as exc:
        raise SystemExit(f"endofed simulate: {exc}") from None
    table = summary_table(result.results)
    cols = ["arm", "dp", "seeds", "map50", "dice", "auc", "sensitivity", "specificity"]
    print(table[[c for c in cols if c in table.columns]].to_string(index=False))
    print(f"ran {len(result.ran)} arm(s), {len(result.skipped)} already done")
    print(f"results: {result.out_dir / 'results.csv'}\nsummary: {result.summary_path}")
    return 0
