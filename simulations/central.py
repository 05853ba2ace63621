"""Centralized baseline: pool site folders, split patient-aware, train and evaluate."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endofed.shared.build import (
    checkpoint_preprocess,
    loader_for,
    model_for,
    train_val_datasets,
)
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.sample import SampleRecord
from endofed.shared.data.site import scan_site
from endofed.shared.engine import (
    Trainer,
    build_scheduler,
    configure_threads,
    evaluate,
    resolve_device,
)
from endofed.shared.engine.trainer import (
    CHECKPOINT_NAME,
    check_resume_identity,
    model_identity,
    read_resume_state,
)
from endofed.shared.metrics import MetricAccumulator, flat_scalars, json_safe
from endofed.shared.metrics.operating_point import choose_operating_point
from endofed.shared.metrics.report import write_evaluation_report
from endofed.shared.metrics.scalars import improves
from endofed.shared.metrics.tracking import Tracker, epoch_scalars, open_tracker
from endofed.shared.model import save_checkpoint
from endofed.shared.util.atomic import atomic_save, atomic_write_json
from endofed.simulations.central_dp import (
    CentralPrivacy,
    dp_identity,
    new_study_id,
    privacy_section,
)

log = logging.getLogger(__name__)


@dataclass
class CentralResult:
    """Where the central run wrote its outputs, and its headline metrics."""

    out_dir: Path
    model_path: Path
    metrics: dict[str, Any]
    train_seconds: float
    num_train: int
    num_val: int
    privacy: dict[str, Any] | None = None
    """DP-SGD summary (epsilon spent, ledger...) when ``dp-epsilon`` > 0."""


def pooled_records(paths: Sequence[Path], cfg: EndoFedConfig) -> list[SampleRecord]:
    """All usable records of several site folders, labelled with the run's classes."""
    records: list[SampleRecord] = []
    for p in paths:
        index = harmonize_labels(scan_site(p), cfg.data.class_names)
        if index.report.problems:
            log.warning("%s: %d files skipped", p, len(index.report.problems))
        records.extend(index.records)
    return records


def train_central(
    cfg: EndoFedConfig,
    data_paths: Sequence[Path],
    out_dir: Path,
    *,
    records: Sequence[SampleRecord] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> CentralResult:
    """Train on the pooled data for ``cfg.train.epochs``, validating after every epoch.

    The held-out (validation) part is evaluated after each epoch; ``model.pt`` is the
    epoch with the best validation ``map50`` (ties: the earlier epoch; an epoch whose
    map50 is ``nan``, e.g. no ground-truth boxes, never beats a finite one, and if no
    epoch has a finite map50 the last epoch is kept). Its image-level operating point
    (``threshold-rule`` applied to that epoch's validation histograms) is stored in the
    checkpoint's ``extra["operating_point"]`` and in ``metrics.json``.

    Writes ``out_dir/model.pt``, ``checkpoints/last.pt`` (resumable; with
    ``checkpoints/epochs.json``, ``best.pt`` and ``best_state.npz`` a resumed run keeps
    its per-epoch validation and best epoch), ``train_history.json`` (one row per
    epoch: losses, ``val_map50``, ``val_dice``, ``val_op_threshold``, ``best``),
    ``metrics.json`` (the best epoch's validation metrics), ``report.md`` and plots.

    With ``dp-epsilon`` > 0 it trains with DP-SGD through the federation's privacy entry
    point (:mod:`endofed.simulations.central_dp`): epsilon spent per epoch in
    ``train_history.json``, the total in ``metrics.json["privacy"]`` and the report, and
    the ledger in ``out_dir/privacy-ledger.json``.

    A resume (``checkpoints/last.pt``) must match the model (preset, image size,
    classes, finetune, architecture), the optimiser and the DP settings; otherwise
    :class:`~endofed.shared.engine.trainer.ResumeError` says what differs. It restores
    the random-number state too, so a resumed run ends with the weights of the
    uninterrupted run (``workers=0``; DP noise and sampling are secret by design).

    With ``tracking`` = mlflow / tensorboard (:mod:`endofed.shared.metrics.tracking`)
    the settings, every epoch's ``train_history.json`` row (step = epoch) and, for
    MLflow, the report files and ``model.pt`` go to a tracking run in ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(
        cfg.federation.tracking, out_dir, run_name=out_dir.resolve().name,
        tracking_dir=cfg.federation.tracking_dir,
        tags={"kind": "central", "dp-epsilon": cfg.privacy.epsilon, "seed": cfg.train.seed},
    )
    tracker.log_params(cfg.to_mapping())
    try:
        result = _train_central(cfg, data_paths, out_dir, records=records, resume=resume,
                                progress=progress, tracker=tracker)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.log_artifacts([out_dir / n for n in ("report.md", "metrics.json",
                                                 "train_history.json", "config.json")]
                          + sorted(out_dir.glob("*.png")), subdir="report")
    tracker.log_artifacts([result.model_path], subdir="model")
    tracker.close("FINISHED")
    return result


def _train_central(
    cfg: EndoFedConfig,
    data_paths: Sequence[Path],
    out_dir: Path,
    *,
    records: Sequence[SampleRecord] | None,
    resume: bool,
    progress: bool,
    tracker: Tracker,
) -> CentralResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckdir = out_dir / "checkpoints"
    configure_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if records is None:
        records = pooled_records(data_paths, cfg)
    train_set, val_set = train_val_datasets(records, cfg)
    log.info("central: %d train / %d val images, preset %s on %s",
             len(train_set), len(val_set), cfg.model.preset, device)
    model = model_for(cfg).to(device)
    total = cfg.train.epochs
    extras = {**dp_identity(cfg), "class-names": list(cfg.data.class_names)}
    ckpt = ckdir / CHECKPOINT_NAME
    saved = read_resume_state(ckpt) if resume and ckpt.exists() else None
    if saved is not None:  # refuse another setup before anything trains or is charged
        check_resume_identity(ckpt, saved, {**model_identity(model),
                                            "optimizer": cfg.train.optimizer, **extras})
    done = int(saved["epoch"]) if saved is not None else 0
    private_ctx: CentralPrivacy | None = None
    trainer: Trainer | None = None
    train_loader = loader_for(train_set, cfg, shuffle=True)
    if cfg.privacy.enabled:
        study = (saved.get("extra") or {}).get("dp-study") if saved is not None else None
        private_ctx = CentralPrivacy(cfg, out_dir, train_set, device,
                                     study=str(study or new_study_id()), total_epochs=total)
    else:
        trainer = Trainer(model, cfg.train, device=device, progress=progress, identity=extras)
        trainer.extra["preprocess"] = checkpoint_preprocess(cfg)  # for predict on last.pt
        # The schedule spans all epochs although fit() is called one epoch at a time.
        trainer.scheduler = build_scheduler(
            trainer.optimizer, cfg.train, total * max(1, trainer.steps_per_epoch(train_loader))
        )
    val_loader = loader_for(val_set, cfg, shuffle=False) if len(val_set) else None
    kwargs = {"class_names": list(cfg.data.class_names),
              "morphology_names": list(cfg.data.morphology_names)}
    epochs = _EpochLog(ckdir, fresh=not resume)
    seconds = 0.0
    while done < total:
        loader, privacy_row, private = train_loader, {}, None
        if private_ctx is not None:
            private = private_ctx.epoch(model, done + 1)  # books the epoch in the ledger
            loader = private.loader
            if trainer is None:
                trainer = Trainer(
                    private.module, private.train_config, device=device,
                    optimizer=private.optimizer, on_empty_batch=private.on_empty_batch,
                    progress=progress, loader_rng=False, identity=extras,
                )
                trainer.extra["dp-study"] = private_ctx.study
                trainer.extra["preprocess"] = checkpoint_preprocess(cfg)
                trainer.scheduler = build_scheduler(
                    trainer.optimizer, trainer.config,
                    total * max(1, trainer.steps_per_epoch(loader)),
                )
        assert trainer is not None
        result = trainer.fit(loader, epochs=done + 1, checkpoint_dir=ckdir,
                             resume=resume or done > 0, desc="central", of_epochs=total,
                             announce_resume=done == 0)
        if private_ctx is not None and private is not None:
            privacy_row = private_ctx.finish(private)
        seconds += result.seconds
        done = result.resumed_from_epoch + len(result.epochs)
        if done in epochs.rows:
            continue  # resumed after an epoch whose validation is on record
        acc = MetricAccumulator(**kwargs)
        if val_loader is not None:
            evaluate(model, val_loader, acc, device=device, progress=progress,
                     desc=f"validate {done}")
        stats = next((e for e in result.epochs if e.epoch + 1 == done), None)
        epochs.record(done, stats, acc, model, cfg, extra=privacy_row)
        tracker.log_metrics(epoch_scalars(epochs.rows[done]), step=done)
    best = epochs.best_epoch()
    acc = MetricAccumulator.from_state(epochs.best_state(), **kwargs)
    point = choose_operating_point(acc.state(), cfg.federation.threshold_rule)
    metrics = acc.compute()
    metrics["operating_point"] = {
        **point.to_dict(),
        "chosen_on": f"validation split ({len(val_set)} images), epoch {best} of {total}",
    }
    metrics["best_epoch"] = best
    model_path = out_dir / "model.pt"
    atomic_save(model_path, lambda tmp: shutil.copyfile(ckdir / BEST_MODEL, tmp))
    history = [{**epochs.rows[e], "best": e == best} for e in sorted(epochs.rows)]
    privacy = private_ctx.summary(history) if private_ctx is not None else None
    sections = {}
    if privacy is not None:
        metrics["privacy"] = privacy
        sections["Privacy"] = privacy_section(privacy)
    (out_dir / "train_history.json").write_text(json.dumps(json_safe(history), indent=1))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_mapping(), indent=1, default=str))
    write_evaluation_report(
        metrics, out_dir, title=f"EndoFed central training ({cfg.model.preset})",
        extra_sections={
            "Data": f"{len(train_set)} training / {len(val_set)} validation images "
                    f"from {', '.join(str(p) for p in data_paths) or 'given records'}",
            "Training": f"{total} epochs ({seconds:.0f} s in this process); the model and "
                        f"these metrics are from epoch {best}, the best by validation "
                        "mAP@0.5 (per-epoch values in train_history.json)",
            **sections,
        },
    )
    log.info("central: best epoch %d/%d: %s; operating point %s > %.3f (sens %.3f, spec %.3f)",
             best, total,
             {k: round(v, 4) for k, v in flat_scalars(metrics).items()
              if k in ("map50", "dice", "auc", "sensitivity", "specificity")},
             point.rule, point.threshold, point.sensitivity, point.specificity)
    return CentralResult(out_dir, model_path, metrics, seconds, len(train_set), len(val_set),
                         privacy=privacy)


BEST_MODEL = "best.pt"
BEST_STATE = "best_state.npz"
EPOCHS_FILE = "epochs.json"


def best_epoch(rows: dict[int, dict[str, Any]]) -> int | None:
    """The epoch of ``rows`` (epoch -> row with ``val_map50``) that model selection keeps
    (:func:`endofed.shared.metrics.scalars.improves`)."""
    best: int | None = None
    for e in sorted(rows):
        value = _nan(rows[e].get("val_map50"))
        if best is None or improves(value, _nan(rows[best].get("val_map50"))):
            best = e
    return best


class _EpochLog:
    """Per-epoch validation of a central run, kept beside the trainer's checkpoint.

    ``epochs.json`` holds one row per validated epoch; ``best.pt`` (model + operating
    point) and ``best_state.npz`` (validation accumulator state) hold the best epoch.
    Both best files are written before the row, so a run killed in between validates
    that epoch again when it resumes.
    """

    def __init__(self, ckdir: Path, *, fresh: bool) -> None:
        self.ckdir = ckdir
        self.rows: dict[int, dict[str, Any]] = {}
        path = ckdir / EPOCHS_FILE
        resumable = (ckdir / CHECKPOINT_NAME).exists() and (ckdir / BEST_MODEL).exists()
        if not fresh and resumable and path.exists():
            try:
                self.rows = {int(r["epoch"]): r for r in json.loads(path.read_text())}
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path}: not a list of epoch rows ({exc}); pass "
                                 "--no-resume to start over") from None

    def best_epoch(self) -> int:
        best = best_epoch(self.rows)
        if best is None:
            raise RuntimeError(f"{self.ckdir}: no validated epoch on record")
        return best

    def best_state(self) -> dict[str, np.ndarray]:
        path = self.ckdir / BEST_STATE
        try:  # arrays only: never unpickles objects
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: unreadable validation state ({exc}); pass "
                             "--no-resume to start over") from None

    def record(self, epoch: int, stats: Any, acc: MetricAccumulator, model: torch.nn.Module,
               cfg: EndoFedConfig, extra: dict[str, Any] | None = None) -> None:
        metrics = acc.compute()
        point = choose_operating_point(acc.state(), cfg.federation.threshold_rule)
        row: dict[str, Any] = {"epoch": epoch}
        if stats is not None:
            row.update({"loss": stats.loss, "cls": stats.cls, "reg": stats.reg,
                        "seg": stats.seg, "images_per_s": stats.images_per_second})
        row.update({"val_map50": metrics["map50"], "val_dice": metrics["dice"],
                    "val_auc_lesion": metrics["auc_lesion"],
                    "val_op_threshold": point.threshold,
                    "val_op_sensitivity": point.sensitivity,
                    "val_op_specificity": point.specificity})
        row.update(extra or {})
        before = best_epoch({e: r for e, r in self.rows.items() if e < epoch})
        best_value = None if before is None else _nan(self.rows[before]["val_map50"])
        if improves(float(metrics["map50"]), best_value):
            extra = {"class_names": list(cfg.data.class_names), "epoch": epoch,
                     "val_map50": float(metrics["map50"]),
                     "operating_point": point.to_dict(),
                     "preprocess": checkpoint_preprocess(cfg)}
            save_checkpoint(self.ckdir / BEST_MODEL, model, extra=extra)
            state = acc.state()
            atomic_save(self.ckdir / BEST_STATE, lambda tmp: _save_npz(tmp, state))
        self.rows[epoch] = json_safe(row)
        atomic_write_json(self.ckdir / EPOCHS_FILE, [self.rows[e] for e in sorted(self.rows)],
                          indent=1)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _save_npz(path: Path, state: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **state)
