"""Privacy audit: membership-inference attacks on a trained model, run where the data is.

Two attacks score each candidate image (a site's training images are the members,
its held-out images the non-members):

* **loss**: the model's loss on the image; lower = more likely a member (Yeom et al.
  2018).
* **calibrated** (offline LiRA / difficulty calibration, Carlini et al. 2022; Watson
  et al. 2022): ``reference models`` are trained with the project's own trainer on
  seeded, patient-grouped halves of the candidate pool; each image's target loss is
  compared with its loss under the references that did *not* see it
  (:func:`endofed.privacy.membership.calibrated_scores`). An image that is easy for
  every model no longer looks like a member; one the target fits much better than
  models that never saw it does.

Each attack reports AUC, advantage and TPR at 1 % and 0.1 % FPR (``None`` = not
estimable with that few non-members), per site and pooled. Reference models and
per-image losses never leave this process (an optional cache keeps per-image
reference losses on the auditor's disk); only the aggregate table is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from endofed.privacy.ledger_summary import read_ledger_summary
from endofed.privacy.membership import (
    FPR_LEVELS,
    AttackMetrics,
    Calibration,
    attack_metrics,
    calibrated_scores,
    fpr_key,
    fpr_label,
    loss_scores,
    min_non_members,
    reference_halves,
)
from endofed.shared.build import dataset_for, loader_for, model_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.config.coercion import section_to_mapping
from endofed.shared.data.sample import SampleRecord
from endofed.shared.engine import Trainer, build_scheduler
from endofed.shared.model import ImprovedSSD
from endofed.shared.util.atomic import atomic_save, atomic_write_json

log = logging.getLogger(__name__)

POOLED = "pooled"
ALL_SITES = "*"  # run_epsilon's key when one epsilon covers every site (central run)
FINETUNE_CHOICES = ("target", "global", "local", "heads")
REFERENCE_CACHE_VERSION = 1


@dataclass
class MembershipAudit:
    """Result of the loss attack on one site (:func:`membership_inference_audit`)."""

    site: str
    members: int
    non_members: int
    attack_auc: float
    attack_advantage: float  # max(TPR - FPR) over thresholds
    member_loss_mean: float
    non_member_loss_mean: float
    tpr_at_fpr: dict[float, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update({fpr_key(f): v for f, v in d.pop("tpr_at_fpr").items()})
        return d


@torch.no_grad()
def per_image_losses(
    model: ImprovedSSD, records: Sequence[SampleRecord], cfg: EndoFedConfig,
    device: torch.device,
) -> np.ndarray:
    """The model's training loss on each image (no augmentation, eval mode)."""
    model = model.to(device).eval()
    loader = loader_for(dataset_for(records, cfg, train=False), cfg, shuffle=False)
    out: list[np.ndarray] = []
    for batch in loader:
        if len(batch) == 0:
            continue
        batch = batch.to(device)
        outputs = model(batch.images)
        losses = model.compute_loss(outputs, batch, alpha_seg=cfg.train.alpha_seg)
        out.append(losses.total.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _check_sides(site: str, members: Sequence, non_members: Sequence) -> None:
    if not members or not non_members:
        raise ValueError(
            f"site {site!r}: the audit needs both training (member) and held-out "
            f"(non-member) images; got {len(members)} and {len(non_members)}"
        )


def membership_inference_audit(
    model: ImprovedSSD,
    members: Sequence[SampleRecord],
    non_members: Sequence[SampleRecord],
    cfg: EndoFedConfig,
    *,
    site: str = "",
    device: torch.device | None = None,
) -> MembershipAudit:
    """The loss-threshold attack on one site (members vs non-members)."""
    _check_sides(site, members, non_members)
    device = device or torch.device("cpu")
    lm = per_image_losses(model, members, cfg, device)
    ln = per_image_losses(model, non_members, cfg, device)
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    m = attack_metrics("loss", labels, loss_scores(np.r_[lm, ln]))
    return MembershipAudit(
        site=site, members=len(lm), non_members=len(ln), attack_auc=m.auc,
        attack_advantage=m.advantage,
        member_loss_mean=float(lm.mean()), non_member_loss_mean=float(ln.mean()),
        tpr_at_fpr=m.tpr_at_fpr,
    )


# -- the full audit: loss + calibrated attack, per site and pooled ---------------------


@dataclass
class AuditSite:
    """One site's candidates: its training images (members) and held-out ones."""

    name: str
    members: list[SampleRecord]
    non_members: list[SampleRecord]


@dataclass(frozen=True)
class ReferenceSpec:
    """How the calibrated attack's reference models are trained.

    ``finetune`` is ``target`` (the audited run's resolved mode) or ``global`` /
    ``local`` (``local`` freezes the backbone body: cheaper); ``epochs`` is the
    audited model's total training epochs unless set.
    """

    count: int = 2
    finetune: str = "target"
    epochs: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.count == 1 or self.count < 0:
            raise ValueError(
                f"--reference-models must be 0 (loss attack only) or >= 2, got {self.count}"
            )
        if self.finetune not in FINETUNE_CHOICES:
            raise ValueError(f"--reference-finetune must be one of {FINETUNE_CHOICES}, "
                             f"got {self.finetune!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--reference-epochs must be >= 1, got {self.epochs}")


@dataclass
class AuditReport:
    """Every row of the audit plus how it was obtained."""

    rows: list[dict[str, Any]]
    references: dict[str, Any] | None
    calibration: dict[str, Any] | None
    warnings: list[str]
    epsilon: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.meta, "epsilon": self.epsilon, "references": self.references,
                "calibration": self.calibration, "warnings": self.warnings,
                "fpr_levels": list(FPR_LEVELS),
                "min_non_members": {fpr_label(f): min_non_members(f) for f in FPR_LEVELS},
                "results": self.rows}


def target_epochs(cfg: EndoFedConfig, *, federated: bool) -> int:
    """Epochs the audited model trained: rounds x local epochs, or the central budget."""
    return cfg.train.epochs * (cfg.federation.num_server_rounds if federated else 1)


def reference_config(cfg: EndoFedConfig, spec: ReferenceSpec, epochs: int,
                     index: int) -> EndoFedConfig:
    """The audited run's recipe for reference ``index`` (its seed, epochs, fine-tuning)."""
    finetune = cfg.finetune_mode if spec.finetune == "target" else spec.finetune
    return cfg.replace(
        model=dataclasses.replace(cfg.model, finetune=finetune),
        train=dataclasses.replace(cfg.train, epochs=epochs, seed=spec.seed * 1000 + index),
    )


def train_reference_model(
    cfg: EndoFedConfig, records: Sequence[SampleRecord], device: torch.device, *,
    bar: tqdm | None = None, desc: str = "reference",
) -> ImprovedSSD:
    """Train one reference model on ``records`` with the project's trainer (plain SGD
    recipe of ``cfg``: same preset, weights, optimiser and schedule, no DP)."""
    torch.manual_seed(cfg.train.seed)
    model = model_for(cfg).to(device)
    loader = loader_for(dataset_for(records, cfg, train=True), cfg, shuffle=True)
    trainer = Trainer(model, cfg.train, device=device, progress=bar is not None)
    steps = trainer.steps_per_epoch(loader)
    trainer.scheduler = build_scheduler(trainer.optimizer, cfg.train,
                                        cfg.train.epochs * max(1, steps))
    for epoch in range(cfg.train.epochs):
        stats = trainer.train_epoch(loader, epoch=epoch, steps=steps, desc=desc)
        log.info("%s epoch %d/%d: loss %.4f, %.1f img/s", desc, epoch + 1, cfg.train.epochs,
                 stats.loss, stats.images_per_second)
        if bar is not None:
            bar.update(1)
    return model.eval()


def _fingerprint(ref_cfg: EndoFedConfig, spec: ReferenceSpec,
                 pool: Sequence[SampleRecord]) -> str:
    """What the reference losses depend on: recipe, data settings, the pool, the seed."""
    skip = {"device", "threads", "workers", "preprocess-cache-dir", "seed"}
    settings: dict[str, Any] = {}
    for section in (ref_cfg.data, ref_cfg.model, ref_cfg.train, ref_cfg.preprocess):
        settings.update({k: str(v) for k, v in section_to_mapping(section).items()
                         if k not in skip})
    blob = json.dumps({
        "version": REFERENCE_CACHE_VERSION, "count": spec.count, "seed": spec.seed,
        "settings": settings,
        "pool": [[str(r.image_path), str(r.mask_path or ""), r.group_id] for r in pool],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_losses(
    cfg: EndoFedConfig,
    pool: Sequence[SampleRecord],
    strata: Sequence[str],
    spec: ReferenceSpec,
    epochs: int,
    device: torch.device,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(losses (R, N), in_mask (R, N), info)`` of ``spec.count`` reference models.

    With ``cache_dir``, the per-image losses of a previous call with the same recipe,
    pool and seed are reused (``reference-<fingerprint>.npz``): the audits of several
    arms of one experiment share their reference models.
    """
    in_mask = reference_halves([r.group_id for r in pool], strata, spec.count, spec.seed)
    if (~in_mask).all(axis=1).any() or in_mask.all(axis=1).any():
        raise ValueError(
            f"the candidate pool ({len(pool)} images) is too small to split into "
            "reference halves; audit more images or pass --reference-models 0"
        )
    ref_cfgs = [reference_config(cfg, spec, epochs, j) for j in range(spec.count)]
    info: dict[str, Any] = {
        "count": spec.count, "epochs": epochs, "seed": spec.seed,
        "finetune": ref_cfgs[0].finetune_mode, "preset": cfg.model.preset,
        "train_images": [int(m.sum()) for m in in_mask], "dp": False,
    }
    cached = None
    if cache_dir is not None:
        fp = _fingerprint(ref_cfgs[0], spec, pool)
        cached = Path(cache_dir) / f"reference-{fp}.npz"
        info["cache"] = str(cached)
        if cached.exists():
            try:  # no pickles: np.load refuses object arrays
                with np.load(cached) as z:
                    old_losses, old_mask = z["losses"], z["in_mask"]
                    seconds = float(z["seconds"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                log.warning("reference cache %s unreadable (%s): training again", cached, exc)
            else:
                if old_losses.shape == in_mask.shape and (old_mask == in_mask).all() and \
                        np.isfinite(old_losses).all():
                    info.update(seconds=seconds, reused=True)
                    log.info("reference losses reused from %s", cached)
                    return old_losses, in_mask, info
    losses = np.zeros(in_mask.shape)
    t0 = time.perf_counter()
    bar = tqdm(total=spec.count * epochs, desc="reference models", unit="epoch",
               disable=not progress)
    for j, rcfg in enumerate(ref_cfgs):
        train = [r for r, m in zip(pool, in_mask[j]) if m]
        log.info("reference model %d/%d: %d training images, %d epochs, finetune=%s",
                 j + 1, spec.count, len(train), epochs, rcfg.finetune_mode)
        bar.set_postfix_str(f"model {j + 1}/{spec.count}")
        model = train_reference_model(rcfg, train, device, bar=bar if progress else None,
                                      desc=f"reference {j + 1}/{spec.count}")
        losses[j] = per_image_losses(model, pool, cfg, device)
        del model
    bar.close()
    info.update(seconds=time.perf_counter() - t0, reused=False)
    log.info("%d reference models trained in %.0f s", spec.count, info["seconds"])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(cached, lambda tmp: _save_npz(tmp, losses=losses, in_mask=in_mask,
                                                  seconds=np.float64(info["seconds"])))
    return losses, in_mask, info


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def run_membership_audit(
    model: ImprovedSSD,
    sites: Sequence[AuditSite],
    cfg: EndoFedConfig,
    *,
    references: ReferenceSpec | None = None,
    epochs: int | None = None,
    device: torch.device | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    epsilon: dict[str, float] | None = None,
) -> AuditReport:
    """Loss attack (and, with ``references.count >= 2``, the calibrated attack) per
    site and pooled over the sites.

    ``epochs`` is the reference models' default budget (the audited model's total
    epochs); ``epsilon`` maps a site name to the epsilon it spent (added to its rows;
    the pooled row gets the largest).
    """
    device = device or torch.device("cpu")
    if not sites:
        raise ValueError("no site to audit")
    for s in sites:
        _check_sides(s.name, s.members, s.non_members)
    pool: list[SampleRecord] = []
    site_of: list[str] = []
    labels: list[int] = []
    for s in sites:
        for recs, label in ((s.members, 1), (s.non_members, 0)):
            pool.extend(recs)
            site_of.extend([s.name] * len(recs))
            labels.extend([label] * len(recs))
    y = np.asarray(labels)
    site_arr = np.asarray(site_of)
    target = per_image_losses(model, pool, cfg, device)
    scores: dict[str, np.ndarray] = {"loss": loss_scores(target)}
    ref_info = calib_info = None
    if references is not None and references.count:
        references.validate()
        n_epochs = references.epochs or epochs or cfg.train.epochs
        strata = [f"{site}:{label}" for site, label in zip(site_of, labels)]
        ref, in_mask, ref_info = reference_losses(
            cfg, pool, strata, references, n_epochs, device, cache_dir=cache_dir,
            progress=progress)
        scores["calibrated"], calib = calibrated_scores(target, ref, ~in_mask)
        calib_info = _calibration_dict(calib)
    epsilon = epsilon or {}
    groups: list[tuple[str, np.ndarray]] = [(s.name, site_arr == s.name) for s in sites]
    if len(sites) > 1:
        groups.append((POOLED, np.ones(len(pool), dtype=bool)))
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name, sel in groups:
        eps = epsilon.get(name, epsilon.get(ALL_SITES)) if name != POOLED else (
            max((v for v in epsilon.values() if v is not None and not math.isnan(v)),
                default=None))
        for attack, s in scores.items():
            m: AttackMetrics = attack_metrics(attack, y[sel], s[sel])
            row = {"site": name, **m.as_dict(), "epsilon_spent": eps,
                   "member_loss_mean": float(target[sel & (y == 1)].mean()),
                   "non_member_loss_mean": float(target[sel & (y == 0)].mean())}
            rows.append(row)
            if attack == "loss":
                warnings += [f"{name}: {n}" for n in m.notes]
    return AuditReport(rows=rows, references=ref_info, calibration=calib_info,
                       warnings=warnings)


def _calibration_dict(c: Calibration) -> dict[str, Any]:
    return {"sigma": c.sigma, "global_sigma": c.global_sigma,
            "out_references_per_image": [c.min_out, c.max_out]}


# -- epsilon of the audited model ------------------------------------------------------


def run_epsilon(run_dir: Path) -> tuple[dict[str, float], str]:
    """Epsilon each site spent for the run's model, and where it was read.

    A federated run: the largest ``epsilon-spent`` per site in ``metrics.csv``, else
    the site ledgers under ``state/``; a central DP run: ``metrics.json``'s
    ``privacy.epsilon_spent``, else its ``privacy-ledger.json``, under the key
    :data:`ALL_SITES`. Empty if none is known (no DP).
    """
    csv = run_dir / "metrics.csv"
    if csv.exists():
        df = pd.read_csv(csv)
        if "epsilon-spent" in df.columns:
            sites = df[(df["site"] != "global") & df["epsilon-spent"].notna()]
            if len(sites):
                per = sites.groupby("site")["epsilon-spent"].max()
                return {str(k): float(v) for k, v in per.items()}, "metrics.csv"
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        try:
            privacy = json.loads(metrics.read_text()).get("privacy") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            privacy = {}
        if isinstance(privacy.get("epsilon_spent"), (int, float)):
            return {ALL_SITES: float(privacy["epsilon_spent"])}, "metrics.json"
    out: dict[str, float] = {}
    source = ""
    for path, key in [(p, None) for p in sorted((run_dir / "state").glob(
            "*/privacy-ledger.json"))] + [(run_dir / "privacy-ledger.json", ALL_SITES)]:
        if not path.exists():
            continue
        try:
            summary = read_ledger_summary(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ledger %s unreadable: %s", path, exc)
            continue
        out[key or str(summary["site"])] = float(summary["epsilon_spent"])
        source = str(path.relative_to(run_dir))
    return out, ("state/*/privacy-ledger.json" if len(out) > 1 else source)


# -- outputs ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3, missing: str = "n/e") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def audit_markdown(report: AuditReport) -> str:
    """The audit table (``audit.md``, picked up by the run report)."""
    ref = report.references
    cal = report.calibration
    lines = [
        "Membership-inference attacks on the audited model (members: each site's "
        "training images; non-members: its held-out images). AUC 0.5 and TPR = FPR "
        "mean the attack cannot tell them apart. `n/e`: not estimable, fewer than "
        + " / ".join(f"{min_non_members(f)} non-members for TPR@{fpr_label(f)}"
                     for f in FPR_LEVELS) + ".",
        "",
    ]
    if ref:
        lines += [
            f"Calibrated attack: {ref['count']} reference models ({ref['preset']}, "
            f"finetune={ref['finetune']}, {ref['epochs']} epochs, no DP, seed "
            f"{ref['seed']}; {', '.join(map(str, ref['train_images']))} training images; "
            f"{ref['seconds']:.0f} s{' (reused)' if ref.get('reused') else ''}), "
            f"{cal['sigma']} sigma, score = (mean OUT reference loss - target loss) / "
            "sigma.",
            "",
        ]
    else:
        lines += ["Calibrated attack: not run (`--reference-models 0`).", ""]
    head = ["Site", "Attack", "Members", "Non-members", "AUC",
            *(f"TPR@{fpr_label(f)}FPR" for f in FPR_LEVELS), "Advantage", "Epsilon spent"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        cells = [r["site"], r["attack"], r["members"], r["non_members"], _fmt(r["auc"]),
                 *(_fmt(r[fpr_key(f)]) for f in FPR_LEVELS), _fmt(r["advantage"]),
                 _fmt(r["epsilon_spent"], 2, "-")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if report.warnings:
        lines += ["", *(f"- {w}" for w in report.warnings)]
    return "\n".join(lines) + "\n"


def write_audit(report: AuditReport, out_dir: Path) -> tuple[Path, Path]:
    """``audit.json`` and ``audit.md`` in ``out_dir`` (aggregates only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = atomic_write_json(out_dir / "audit.json", report.as_dict(), indent=1)
    md = out_dir / "audit.md"
    atomic_save(md, lambda tmp: Path(tmp).write_text(audit_markdown(report)))
    return Path(js), md


def write_audit_markdown(results: Sequence[MembershipAudit], out: Path) -> Path:
    """A loss-attack-only table of :func:`membership_inference_audit` results."""
    rows = []
    for r in results:
        rows.append({"site": r.site, "attack": "loss", "members": r.members,
                     "non_members": r.non_members, "auc": r.attack_auc,
                     "advantage": r.attack_advantage, "epsilon_spent": None,
                     **{fpr_key(f): r.tpr_at_fpr.get(f) for f in FPR_LEVELS}})
    report = AuditReport(rows=rows, references=None, calibration=None, warnings=[])
    out.write_text(audit_markdown(report))
    return out
