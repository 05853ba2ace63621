"""A model on a federation's pooled validation splits, the images `simulate` scores.

Each site folder is split patient-aware exactly as a simulated site splits it
(``val-fraction``, ``split-seed``), the model runs on every site's validation part and
the metrics are computed once over all of them. Use it to score a starting point (a
public warm start, an earlier model) on the same images as the federated arms.
Prints one JSON document.

Example::

    python benchmarks/pooled_validation.py runs/warm_kv/model.pt \\
        runs/sim_pp_grid/sites/site_1 runs/sim_pp_grid/sites/site_2 \\
        runs/sim_pp_grid/sites/site_3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

KEYS = ("map50", "map", "dice_lesion", "auc", "sensitivity", "specificity", "num_images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model file (model.pt, final_model.pt)")
    parser.add_argument("sites", nargs="+", type=Path, help="the simulation's site folders")
    parser.add_argument("--preset", default="lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from endofed.client.runtime import build_site_runtime
    from endofed.shared.engine.evaluator import evaluate
    from endofed.shared.metrics.accumulator import MetricAccumulator

    sites = [str(s.resolve()) for s in args.sites]
    acc = None
    for i in range(len(sites)):
        run_config = {
            "preset": args.preset, "image-size": args.image_size,
            "val-fraction": args.val_fraction, "split-seed": args.split_seed,
            "threads": args.threads, "weights-path": str(args.model.resolve()),
            "data-path": ",".join(sites), "partition": "source",
        }
        rt = build_site_runtime(run_config, {"partition-id": i, "num-partitions": len(sites)})
        if acc is None:
            acc = MetricAccumulator(class_names=list(rt.cfg.data.class_names),
                                    morphology_names=list(rt.cfg.data.morphology_names))
        evaluate(rt.model, rt.val_loader(), acc, device=rt.device)
    metrics = acc.compute()
    print(json.dumps({"benchmark": "pooled_validation", "model": str(args.model),
                      "sites": sites, **{k: metrics[k] for k in KEYS if k in metrics}},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
