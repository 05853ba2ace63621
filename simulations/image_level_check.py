"""Image-level lesion / no-lesion figures that a source shortcut cannot fake.

Kvasir-SEG polyp frames against the normal-frames set (256 x 256 crops of another
origin, no overlays) are separable by source alone, so an image-level AUC of 1.0 there
says little. :func:`image_level_check` reports the same figures twice on the
validation split that training held out (``split_records`` with the run's
``val-fraction`` / ``split-seed``, as :func:`~endofed.shared.build.train_val_datasets`):

* ``cross_source``: the lesion images of the lesion site(s) against the normal images;
* ``same_source``: a lesion crop and an equally sized lesion-free crop of each lesion
  frame of the split (:mod:`endofed.shared.data.same_source`), so both classes share
  device, colour, resolution and overlays.

An image's lesion score is ``1 - p(normal)`` of the model's ``image_probs``; it is a
lesion verdict when the score is *above* the threshold (ties go to normal, as in the
argmax confusion matrix at 0.5). The threshold is the caller's, else the checkpoint's
``extra["operating_point"]["threshold"]``, else 0.5. Images go through the existing
evaluator and :class:`~endofed.shared.metrics.MetricAccumulator` (its binned
``auc_lesion`` is reported beside the exact AUC of the per-image scores).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endofed.shared.build import loader_for, sample_loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.same_source import CropConfig, CropLoader, plan_crops
from endofed.shared.data.sample import Sample, SampleRecord
from endofed.shared.data.split import split_records
from endofed.shared.engine import evaluate
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.model import ImprovedSSD, load_model_checkpoint, read_checkpoint
from endofed.shared.preprocessing import ClassicalDetector, OverlayDetector

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5

__all__ = [
    "DEFAULT_THRESHOLD",
    "OverlayAvoid",
    "checkpoint_threshold",
    "image_level_check",
    "image_level_figures",
    "load_model_and_threshold",
    "score_images",
    "val_records",
]


def checkpoint_threshold(extra: Mapping[str, Any] | None) -> float | None:
    """``extra["operating_point"]["threshold"]`` when a checkpoint stores a usable one."""
    point = (extra or {}).get("operating_point")
    if not isinstance(point, Mapping) or "threshold" not in point:
        return None
    try:
        t = float(point["threshold"])
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and 0.0 <= t <= 1.0 else None


def load_model_and_threshold(path: str | Path) -> tuple[ImprovedSSD, float | None]:
    """The checkpoint's model and its stored operating threshold (``None`` if absent)."""
    return load_model_checkpoint(path), checkpoint_threshold(read_checkpoint(path).get("extra"))


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney; ties count one half); ``nan`` without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")
    ties = np.searchsorted(order, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def image_level_figures(
    scores: np.ndarray, positive: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Counts, sensitivity, specificity and AUC of lesion scores (lesion iff score > t)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(positive, bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    pred = s > threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    nan = float("nan")
    return {
        "num_lesion": tp + fn,
        "num_normal": tn + fp,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "auc": _auc(s, y),
    }  # fmt: skip


class _ScoreTap:
    """Forwards ``update`` to a :class:`MetricAccumulator` and keeps each image's score."""

    def __init__(self, accumulator: MetricAccumulator) -> None:
        self.accumulator = accumulator
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, **kwargs: Any) -> None:
        self.accumulator.update(**kwargs)
        probs = np.asarray(kwargs["image_probs"], np.float64)
        self.scores.append(1.0 - probs[:, 0])
        self.labels.append(np.asarray(kwargs["image_labels"]).reshape(-1) > 0)


def score_images(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    cfg: EndoFedConfig,
    *,
    device: torch.device,
    progress: bool = False,
    desc: str = "image-level",
) -> tuple[np.ndarray, np.ndarray, MetricAccumulator]:
    """Per-image lesion scores and lesion flags of ``dataset`` (dataset order), and the
    filled accumulator."""
    acc = MetricAccumulator(class_names=list(cfg.data.class_names),
                            morphology_names=list(cfg.data.morphology_names))
    tap = _ScoreTap(acc)
    if len(dataset):
        evaluate(model, loader_for(dataset, cfg, shuffle=False), tap, device=device,
                 progress=progress, desc=desc)
    if not tap.scores:
        return np.zeros(0), np.zeros(0, bool), acc
    return np.concatenate(tap.scores), np.concatenate(tap.labels), acc


class OverlayAvoid:
    """``sample -> bool mask`` of overlay boxes that crops must avoid, from an overlay
    detector (default: the classical one).

    ``types`` defaults to the panels (``box``: e.g. the scope-position box in the
    lower-left corner). ``text`` is left out by default: on Kvasir frames the
    classical detector also marks specular highlights as text (about a dozen boxes a
    frame), which leaves too few frames with a clean crop pair.
    """

    def __init__(self, detector: OverlayDetector | None = None, margin: int = 4,
                 types: tuple[str, ...] = ("box",)) -> None:
        self.detector = detector or ClassicalDetector()
        self.margin = int(margin)
        self.types = tuple(types)

    def __call__(self, sample: Sample) -> np.ndarray:
        h, w = sample.height, sample.width
        out = np.zeros((h, w), bool)
        m = self.margin
        for box in self.detector(sample.image).boxes:
            if box.type not in self.types:
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
            out[max(0, y0 - m):min(h, y1 + m), max(0, x0 - m):min(w, x1 + m)] = True
        return out


def val_records(
    records: Sequence[SampleRecord], cfg: EndoFedConfig
) -> list[SampleRecord]:
    """The validation side of the run's patient-aware split of the pooled ``records``
    (``split_records`` with ``val-fraction`` / ``split-seed``, as training split them).

    With ``val-fraction`` 0 nothing was held out: every record is returned, with a
    warning (the figures are then training-set figures)."""
    val = cfg.data.val_fraction
    if val <= 0:
        log.warning("val-fraction is 0: the model trained on every image; checking all")
        return list(records)
    return split_records(list(records), fractions=(1.0 - val, val),
                         seed=cfg.data.split_seed)["val"]


def _rounded(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def image_level_check(
    model: torch.nn.Module,
    lesion_records: Sequence[SampleRecord],
    normal_records: Sequence[SampleRecord],
    cfg: EndoFedConfig,
    *,
    threshold: float | None = None,
    seed: int = 0,
    crop_config: CropConfig = CropConfig(),
    avoid_overlays: bool = True,
    split: bool = True,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-source and same-source image-level figures on the validation split.

    Args:
        model: the improved SSD (or a wrapper of one).
        lesion_records, normal_records: the records of the lesion site(s) and of the
            normal site(s), labelled with the run's classes (``pooled_records``).
        cfg: the run's config (image size, batch size, classes, ``val-fraction``,
            ``split-seed``, preprocessing).
        threshold: lesion iff ``1 - p(normal) > threshold``; default 0.5.
        seed: crop seed (:func:`~endofed.shared.data.same_source.plan_crops`).
        crop_config: crop rules.
        avoid_overlays: crops avoid the panel boxes the classical overlay detector
            finds (:class:`OverlayAvoid`).
        split: evaluate the validation split of the pooled records (as training
            held it out); ``False`` evaluates every record given.
        device: default CPU.
    """
    device = device or torch.device("cpu")
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    pooled = list(lesion_records) + list(normal_records)
    chosen = val_records(pooled, cfg) if split else pooled
    chosen_ids = {id(r) for r in chosen}
    lesion_val = [r for r in lesion_records if id(r) in chosen_ids and len(r.labels)]
    normal_val = [r for r in normal_records if id(r) in chosen_ids and not len(r.labels)]
    loader = sample_loader_for(cfg)

    def dataset(records: Sequence[SampleRecord], load: Any) -> DetectionDataset:
        return DetectionDataset(
            list(records), image_size=cfg.data.image_size, train=False,
            max_boxes=cfg.data.max_boxes, morphology_names=list(cfg.data.morphology_names),
            loader=load,
        )  # fmt: skip

    scores, labels, acc = score_images(model, dataset(lesion_val + normal_val, loader), cfg,
                                       device=device, progress=progress, desc="cross-source")
    cross = image_level_figures(scores, labels, t)
    cross["auc_binned"] = float(acc.compute()["auc_lesion"])

    plan = plan_crops(lesion_val, seed=seed, config=crop_config, loader=loader,
                      avoid=OverlayAvoid() if avoid_overlays else None)
    scores, labels, acc = score_images(model, dataset(plan.records, CropLoader(loader)), cfg,
                                       device=device, progress=progress, desc="same-source")
    same = image_level_figures(scores, labels, t)
    same["auc_binned"] = float(acc.compute()["auc_lesion"])
    same["crops"] = plan.counts()
    return {
        "threshold": t,
        "split": {
            "val_fraction": cfg.data.val_fraction if split else None,
            "split_seed": cfg.data.split_seed if split else None,
            "lesion_val_images": len(lesion_val),
            "normal_val_images": len(normal_val),
        },
        "crop_seed": int(seed),
        "cross_source": _rounded(cross),
        "same_source": {**_rounded({k: v for k, v in same.items() if k != "crops"}),
                        "crops": same["crops"]},
    }
