"""Centralized baseline: pool site folders, split patient-aware, train and evaluate."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from endofed.shared.build import loader_for, model_for, train_val_datasets
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.sample import SampleRecord
from endofed.shared.data.site import scan_site
from endofed.shared.engine import Trainer, configure_threads, evaluate, resolve_device
from endofed.shared.metrics import MetricAccumulator, flat_scalars
from endofed.shared.metrics.report import write_evaluation_report
from endofed.shared.model import save_checkpoint

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
    """Train on the pooled data for ``cfg.train.epochs`` and evaluate on the held-out part.

    Writes ``out_dir/model.pt``, ``checkpoints/last.pt`` (resumable), ``metrics.json``,
    ``report.md`` and plots.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if records is None:
        records = pooled_records(data_paths, cfg)
    train_set, val_set = train_val_datasets(records, cfg)
    log.info("central: %d train / %d val images, preset %s on %s",
             len(train_set), len(val_set), cfg.model.preset, device)
    model = model_for(cfg).to(device)
    trainer = Trainer(model, cfg.train, device=device, progress=progress)
    result = trainer.fit(
        loader_for(train_set, cfg, shuffle=True),
        checkpoint_dir=out_dir / "checkpoints",
        resume=resume,
        desc="central",
    )
    acc = MetricAccumulator(
        class_names=list(cfg.data.class_names),
        morphology_names=list(cfg.data.morphology_names),
    )
    if len(val_set):
        evaluate(model, loader_for(val_set, cfg, shuffle=False), acc, device=device,
                 progress=progress)
    metrics = acc.compute()
    model_path = out_dir / "model.pt"
    save_checkpoint(model_path, model, extra={"class_names": list(cfg.data.class_names)})
    history = [
        {"epoch": e.epoch + 1, "loss": e.loss, "cls": e.cls, "reg": e.reg, "seg": e.seg,
         "images_per_s": e.images_per_second}
        for e in result.epochs
    ]
    (out_dir / "train_history.json").write_text(json.dumps(history, indent=1))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_mapping(), indent=1, default=str))
    write_evaluation_report(
        metrics, out_dir, title=f"EndoFed central training ({cfg.model.preset})",
        extra_sections={
            "Data": f"{len(train_set)} training / {len(val_set)} validation images "
                    f"from {', '.join(str(p) for p in data_paths) or 'given records'}",
            "Training": f"{cfg.train.epochs} epochs in {result.seconds:.0f} s",
        },
    )
    log.info("central: %s", {k: round(v, 4) for k, v in flat_scalars(metrics).items()
                              if k in ("map50", "dice", "auc", "sensitivity", "specificity")})
    return CentralResult(out_dir, model_path, metrics, result.seconds,
                         len(train_set), len(val_set))
