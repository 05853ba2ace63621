"""``endofed evaluate CHECKPOINT DATA... --out DIR``: the paper's metrics on site folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a model on site folders: metrics.json + report",
        description="Run MODEL on every image of the site folders and write the paper's "
        "metrics (mAP, Dice, AUC, sensitivity / specificity at the threshold stored in the "
        "model) to DIR/metrics.json and DIR/report.md.",
        epilog="example:\n  endofed evaluate runs/central/model.pt data/site_c --out eval/site_c",
    )
    p.add_argument("checkpoint", type=Path, metavar="MODEL",
                   help="model file (model.pt, final_model.pt or a round checkpoint)")
    p.add_argument("data", nargs="+", type=Path, metavar="DIR",
                   help="site folders (all images evaluated)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where metrics.json and report.md go")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per batch")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--score-thresh", type=float, default=0.05, metavar="SCORE",
                   help="lowest box score kept for mAP (low, so the precision-recall curve "
                        "is complete; the verdict uses the model's stored threshold)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.shared.build import dataset_for, loader_for
    from endofed.shared.config import EndoFedConfig
    from endofed.shared.engine import evaluate, resolve_device
    from endofed.shared.metrics import MetricAccumulator, flat_scalars
    from endofed.shared.metrics.operating_point import at_threshold, from_checkpoint_extra
    from endofed.shared.metrics.report import write_evaluation_report
    from endofed.shared.model import load_model_checkpoint, read_checkpoint
    from endofed.shared.model.weights import UnreadableFileError
    from endofed.simulations.central import pooled_records

    device = resolve_device(args.device)
    try:  # weights_only: a file that holds anything but tensors and plain data is refused
        model = load_model_checkpoint(args.checkpoint, map_location=device)
        extra = read_checkpoint(args.checkpoint).get("extra", {})
    except UnreadableFileError as exc:
        raise SystemExit(f"endofed evaluate: {exc}") from None
    names = extra.get("class_names") or [
        f"class_{i}" for i in range(1, model.num_classes + 1)
    ]
    cfg = EndoFedConfig.from_mapping({
        "image-size": model.config.image_size, "batch-size": args.batch_size,
        "class-names": ",".join(names), "device": args.device,
    })
    records = pooled_records(args.data, cfg)
    acc = MetricAccumulator(class_names=names, morphology_names=list(cfg.data.morphology_names))
    evaluate(model, loader_for(dataset_for(records, cfg, train=False), cfg, shuffle=False),
             acc, device=device, score_thresh=args.score_thresh, progress=True)
    metrics = acc.compute()
    # The checkpoint's own threshold (0.5 with a warning for an old checkpoint), applied
    # to these images: sensitivity / specificity of the verdict the model ships with.
    stored = from_checkpoint_extra(extra, origin=str(args.checkpoint))
    point = at_threshold(acc.state(), stored.threshold, rule=stored.rule)
    metrics["operating_point"] = {
        **point.to_dict(), "note": stored.note,
        "chosen_on": f"stored in {args.checkpoint.name} (not re-chosen on these images)",
    }
    report = write_evaluation_report(
        metrics, args.out, title=f"EndoFed evaluation of {args.checkpoint.name}",
        extra_sections={"Data": ", ".join(str(p) for p in args.data)
                        + f" ({len(records)} images)"},
    )
    s = flat_scalars(metrics)
    keys = ("map50", "map", "dice", "auc", "sensitivity", "specificity", "accuracy", "f1")
    print("  ".join(f"{k}={s.get(k, float('nan')):.4f}" for k in keys))
    print(f"at lesion probability > {point.threshold:g} (rule {point.rule}): "
          f"sensitivity={point.sensitivity:.4f}  specificity={point.specificity:.4f}")
    print(f"report: {report}")
    return 0
