"""``endofed audit RUN_DIR [--data DIR ...]``: membership-inference audit of a run's model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="membership-inference attack AUC of a run's global model, per site"
    )
    p.add_argument("run_dir", type=Path, help="runs/<run-name> (federated) or a train --out")
    p.add_argument(
        "--data", type=Path, action="append", default=[],
        help="a site folder (repeat); default: the run's synthetic simulation sites",
    )
    p.add_argument("--model", type=Path, default=None,
                   help="model file (default: final_model.pt or model.pt in RUN_DIR)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from endofed.client.site import synthetic_site_dir
    from endofed.privacy.audit import membership_inference_audit, write_audit_markdown
    from endofed.server.report import render_run_report
    from endofed.server.run_state import load_run_state
    from endofed.shared.config import EndoFedConfig
    from endofed.shared.data.labels import harmonize_labels
    from endofed.shared.data.site import scan_site
    from endofed.shared.data.split import split_records
    from endofed.shared.engine import resolve_device
    from endofed.shared.model import load_model_checkpoint

    run_dir: Path = args.run_dir
    model_path = args.model or next(
        (p for p in (run_dir / "final_model.pt", run_dir / "model.pt") if p.exists()), None
    )
    if model_path is None:
        raise SystemExit(f"{run_dir}: no final_model.pt or model.pt; pass --model")
    state = load_run_state(run_dir)
    run_config = state.run_config if state else {}
    if not run_config and (run_dir / "config.json").exists():
        run_config = json.loads((run_dir / "config.json").read_text())
    cfg = EndoFedConfig.from_mapping(run_config)
    sites: list[tuple[str, Path]] = [(p.name, p) for p in args.data]
    if not sites:
        csv = run_dir / "metrics.csv"
        if not csv.exists():
            raise SystemExit("no --data given and the run has no metrics.csv to find sites")
        names = sorted(s for s in pd.read_csv(csv)["site"].unique() if s.startswith("site_"))
        sites = [(n, synthetic_site_dir(cfg, int(n.split("_")[1]) - 1)) for n in names]
    device = resolve_device(args.device)
    model = load_model_checkpoint(model_path, map_location=device)
    results = []
    skipped: list[str] = []
    for name, path in sites:
        try:
            index = harmonize_labels(scan_site(path), cfg.data.class_names)
            val = cfg.data.val_fraction
            split = split_records(index.records, fractions=(1 - val, val),
                                  seed=cfg.data.split_seed)
            res = membership_inference_audit(model, split["train"], split["val"], cfg,
                                             site=name, device=device)
        except (ValueError, OSError) as exc:  # one unusable site must not sink the audit
            skipped.append(name)
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            continue
        results.append(res)
        print(f"{name}: attack AUC {res.attack_auc:.3f} "
              f"({res.members} members / {res.non_members} non-members)")
    if not results:
        print(f"error: no site could be audited ({', '.join(skipped)})", file=sys.stderr)
        return 1
    write_audit_markdown(results, run_dir / "audit.md")
    (run_dir / "audit.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    if (run_dir / "metrics.csv").exists() and (run_dir / "checkpoints").exists():
        render_run_report(run_dir)
    print(f"audit: {run_dir / 'audit.md'}")
    return 0
