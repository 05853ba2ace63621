"""``endofed privacy-audit RUN_DIR [--data DIR,DIR]``: membership-inference audit of a
run's model (formerly ``endofed audit``, still accepted for one release)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from endofed.commands._common import CommaList


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "privacy-audit", aliases=["audit"],
        help="privacy audit: membership-inference attacks (loss + calibrated) on a run's "
             "model, per site",
        description=(
            "Scores each site's training images (members) against its held-out images "
            "(non-members) with a loss-threshold attack and a calibrated attack (offline "
            "LiRA: reference models trained here on halves of the audited images). "
            "Reports AUC and TPR at 1% and 0.1% FPR per site and pooled, in audit.json "
            "and audit.md. Reads RUN_DIR, never changes its model files; reference "
            "models stay in memory. Formerly 'endofed audit' (still accepted for one "
            "release)."
        ),
        epilog="example:\n  endofed privacy-audit runs/demo/federated --reference-models 0\n"
               "  endofed privacy-audit runs/central --data site_a,site_b --out audit/",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a federated run (runs/<run-name>, OUT/runs/<arm>_<dp>_<seed>) "
                        "or a train --out folder")
    p.add_argument(
        "--data", action=CommaList, item_type=Path, default=[], metavar="DIR[,DIR...]",
        help="comma-separated site folders (for a train --out folder: the folders it "
             "trained on); default: the run's synthetic simulation sites",
    )
    p.add_argument("--model", type=Path, default=None, metavar="FILE",
                   help="model file (default: final_model.pt or model.pt in RUN_DIR)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where audit.json / audit.md go (default: RUN_DIR, also added to "
                        "its report)")
    p.add_argument("--reference-models", type=int, default=2, metavar="N",
                   help="reference models of the calibrated attack (0 = loss attack only; "
                        "default 2; a per-image sigma needs >= 8)")
    p.add_argument("--reference-finetune", default="target",
                   choices=["target", "global", "local", "heads"],
                   help="reference recipe: the audited run's fine-tuning mode (target), or "
                        "local (frozen backbone body: cheaper) / global")
    p.add_argument("--reference-epochs", type=int, default=None, metavar="N",
                   help="epochs per reference model (default: the audited model's total, "
                        "rounds x local-epochs)")
    p.add_argument("--reference-cache", type=Path, default=None, metavar="DIR",
                   help="keep the reference models' per-image losses here and reuse them "
                        "(same recipe, images and seed), e.g. across the arms of one "
                        "experiment; stays on this machine")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed of the reference halves and models (default: the run's seed)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _run_config(run_dir: Path) -> tuple[dict, bool]:
    """(run config, federated?): ``config.json`` of a train --out folder, else the
    federated run state's run config."""
    from endofed.server.run_state import load_run_state

    config = run_dir / "config.json"
    if config.exists():
        try:
            return json.loads(config.read_text()), False
        except json.JSONDecodeError as exc:
            raise SystemExit(f"endofed privacy-audit: {config} is not valid JSON ({exc})") from None
    state = load_run_state(run_dir)
    if state is None:
        raise SystemExit(
            f"endofed privacy-audit: {run_dir} has neither config.json (a train --out folder) "
            "nor checkpoints/last.pt (a federated run); pass the run's folder"
        )
    return state.run_config, True


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from endofed.client.site import synthetic_site_dir
    from endofed.privacy.audit import (
        AuditSite,
        ReferenceSpec,
        run_epsilon,
        run_membership_audit,
        target_epochs,
        write_audit,
    )
    from endofed.privacy.membership import FPR_LEVELS, fpr_key, fpr_label
    from endofed.server.report import render_run_report
    from endofed.shared.config import EndoFedConfig
    from endofed.shared.data.labels import harmonize_labels
    from endofed.shared.data.site import scan_site
    from endofed.shared.data.split import split_records
    from endofed.shared.engine import configure_threads, resolve_device
    from endofed.shared.model import load_model_checkpoint

    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise SystemExit(f"endofed privacy-audit: {run_dir} is not a folder; pass a run directory")
    model_path = args.model or next(
        (p for p in (run_dir / "final_model.pt", run_dir / "model.pt") if p.exists()), None
    )
    if model_path is None:
        raise SystemExit(f"endofed privacy-audit: {run_dir}: no final_model.pt or model.pt; "
                         "pass --model")
    run_config, federated = _run_config(run_dir)
    cfg = EndoFedConfig.from_mapping(run_config)
    spec = ReferenceSpec(count=args.reference_models, finetune=args.reference_finetune,
                         epochs=args.reference_epochs,
                         seed=cfg.train.seed if args.seed is None else args.seed)
    try:
        spec.validate()
    except ValueError as exc:
        raise SystemExit(f"endofed privacy-audit: {exc}") from None
    sites: list[tuple[str, Path]] = [(p.name, p) for p in args.data]
    if not sites:
        csv = run_dir / "metrics.csv"
        if not csv.exists():
            raise SystemExit("endofed privacy-audit: no --data given and the run has no "
                             "metrics.csv to find its sites; pass --data SITE,SITE (its "
                             "site folders)")
        names = sorted(s for s in pd.read_csv(csv)["site"].unique() if s.startswith("site_"))
        sites = [(n, synthetic_site_dir(cfg, int(n.split("_")[1]) - 1)) for n in names]
    configure_threads(cfg.train.threads)
    device = resolve_device(args.device)
    model = load_model_checkpoint(model_path, map_location=device)

    val = cfg.data.val_fraction
    scanned: list[tuple[str, list]] = []
    skipped: list[str] = []
    for name, path in sites:
        try:
            scanned.append((name, harmonize_labels(scan_site(path), cfg.data.class_names)
                            .records))
        except (ValueError, OSError) as exc:  # one unusable site must not sink the audit
            skipped.append(name)
            print(f"{name}: skipped: {exc}", file=sys.stderr)
    if federated:  # each site split its own records (client/runtime.py)
        splits = {n: split_records(recs, fractions=(1 - val, val), seed=cfg.data.split_seed)
                  for n, recs in scanned}
    else:  # train --out pooled its folders, then split once (simulations/central.py)
        pooled = split_records([r for _, recs in scanned for r in recs],
                               fractions=(1 - val, val), seed=cfg.data.split_seed)
        side = {id(r): k for k, rs in pooled.items() for r in rs}
        splits = {n: {k: [r for r in recs if side[id(r)] == k] for k in ("train", "val")}
                  for n, recs in scanned}
    audit_sites: list[AuditSite] = []
    for name, _ in scanned:
        members, non_members = splits[name]["train"], splits[name]["val"]
        if not members or not non_members:
            skipped.append(name)
            print(f"{name}: skipped: site {name!r}: the audit needs both training (member) "
                  f"and held-out (non-member) images; got {len(members)} and "
                  f"{len(non_members)}", file=sys.stderr)
            continue
        audit_sites.append(AuditSite(name, members, non_members))
    if not audit_sites:
        raise SystemExit(f"endofed privacy-audit: no site could be audited ({', '.join(skipped)}); "
                         "each needs training and held-out images")

    epsilon, eps_source = run_epsilon(run_dir)
    try:
        report = run_membership_audit(
            model, audit_sites, cfg, references=spec if spec.count else None,
            epochs=target_epochs(cfg, federated=federated), device=device,
            cache_dir=args.reference_cache, progress=not args.no_progress,
            epsilon=epsilon,
        )
    except ValueError as exc:
        raise SystemExit(f"endofed privacy-audit: {exc}") from None
    report.epsilon = {"target": cfg.privacy.epsilon or None, "spent": epsilon,
                      "source": eps_source}
    report.meta = {"run_dir": str(run_dir.resolve()), "model": str(model_path.resolve()),
                   "run_kind": "federated" if federated else "central",
                   "sites": [s.name for s in audit_sites], "skipped": skipped}
    out_dir = args.out or run_dir
    js, md = write_audit(report, out_dir)
    for r in report.rows:
        tprs = "  ".join(
            f"TPR@{fpr_label(f)}FPR " + ("n/e" if r[fpr_key(f)] is None else
                                         f"{r[fpr_key(f)]:.3f}") for f in FPR_LEVELS)
        print(f"{r['site']}: {r['attack']} attack AUC {r['auc']:.3f}  {tprs}  "
              f"({r['members']} members / {r['non_members']} non-members)")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if out_dir == run_dir and (run_dir / "metrics.csv").exists() and \
            (run_dir / "checkpoints").exists():
        render_run_report(run_dir)
    print(f"audit: {md}\n       {js}")
    return 0
