"""Additive evaluation state: sum per-site states, get exact global metrics.

:class:`MetricAccumulator` keeps only *sums* (counts and histograms) in a
``dict[str, np.ndarray]``. Two accumulators built with the same constructor
arguments merge by adding their arrays, so a federated server that sums the states
returned by the sites gets the same :meth:`MetricAccumulator.compute` output as one
pass over the pooled data (exact up to the score-bin width for AP and AUC).

Conventions and definitions (see also ``docs/ARCHITECTURE.md``):

* Detection labels are ``1..K`` (``K = len(class_names)``); image-level classes are
  ``0..K`` with ``0 = "normal"``. Boxes are XYXY, detections and targets in the same
  pixel frame.
* ``map50`` / ``map``: COCO bbox AP (101-point interpolation, greedy matching by
  descending score, at most ``max_detections`` per image and class, area "all") at
  IoU 0.5 and averaged over IoU 0.50:0.05:0.95, mean over classes with ground truth.
* Image-level prediction = ``argmax(image_probs)``; ``confusion_matrix`` has rows =
  true class, columns = predicted class.
* ``accuracy``: share of images whose predicted class equals the true class (``K+1``
  classes). ``f1``: macro F1 over the *lesion* classes ``1..K`` that occur (true or
  predicted); for a binary lesion/normal task it is the lesion F1. ``f1_lesion``,
  ``sensitivity``, ``specificity``: binary lesion-vs-normal (sensitivity = lesion
  images predicted as any lesion class; specificity = normal images predicted normal).
* ``auc``: macro one-vs-rest AUC over the image classes that have both positives and
  negatives; for ``K == 1`` it is the lesion class' AUC. ``auc_lesion``: AUC of
  lesion vs normal with score ``1 - p(normal)``.
* Localisation (paper table 6): for each ground-truth lesion, the best IoU with any
  detection of the same class with score ``>= loc_score_threshold`` (default 0.5, a
  "shown to the endoscopist" decision); the share of lesions with best IoU ``>= t``
  for each ``t`` in ``loc_thresholds``, overall, per morphology and per class. Lesions
  with unknown morphology (``-1``) count in the overall row and, when
  ``morphology_names`` is given, in an ``"unknown"`` row.
* Segmentation: per-image Dice / IoU of ``mask_prob >= 0.5`` (an image whose truth and
  prediction are both empty scores 1.0), averaged over images (``dice``, ``iou``),
  over images with a non-empty truth only (``dice_lesion``, ``iou_lesion``) and pooled
  over all pixels (``dice_pooled``, ``iou_pooled``).
* ``latency_ms``: mean per-image inference time over the batches that reported one
  (``update(latency_ms=...)`` takes the batch total).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from endofed.shared.metrics.classification import (
    auc_from_histograms,
    binary_lesion_metrics,
    per_class_from_confusion,
    roc_from_histograms,
)
from endofed.shared.metrics.detection import (
    average_precision_from_histograms,
    box_iou,
    greedy_match,
    score_bins,
)
from endofed.shared.metrics.segmentation import dice_iou, mask_counts

logger = logging.getLogger(__name__)

NORMAL_NAME = "normal"
UNKNOWN_MORPHOLOGY = "unknown"
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(x) for x in np.round(np.linspace(0.5, 0.95, 10), 2)
)
DEFAULT_LOC_THRESHOLDS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)

State = dict[str, np.ndarray]


def _to_numpy(x: Any) -> np.ndarray:
    """Torch tensor (any device, any float dtype) or array-like to a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _nan_mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


class MetricAccumulator:
    """Accumulate detection, classification, localisation and mask statistics.

    Args:
        class_names: the ``K`` lesion class names (detection labels ``1..K``).
        morphology_names: names indexed by ``targets[i]["morphology"]``.
        score_bins: histogram resolution for detection scores and image probabilities.
        iou_thresholds: IoU thresholds for AP (``map`` averages over them; 0.5 must be
            one of them for ``map50``).
        loc_thresholds: IoU thresholds of the localisation table.
        loc_score_threshold: minimum detection score to count for localisation.
        max_detections: detections kept per image and class for AP (COCO: 100).
        mask_threshold: probability threshold of the predicted mask.

    All constructor arguments must match for states to be merged.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        morphology_names: Sequence[str] = (),
        score_bins: int = 1000,
        iou_thresholds: Sequence[float] | np.ndarray = DEFAULT_IOU_THRESHOLDS,
        loc_thresholds: Sequence[float] = DEFAULT_LOC_THRESHOLDS,
        loc_score_threshold: float = 0.5,
        max_detections: int = 100,
        mask_threshold: float = 0.5,
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("MetricAccumulator: class_names must name at least one class")
        if NORMAL_NAME in self.class_names:
            raise ValueError(
                f"MetricAccumulator: {NORMAL_NAME!r} is image class 0 and must not be in "
                f"class_names {self.class_names}"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"MetricAccumulator: duplicate class names {self.class_names}")
        self.morphology_names = [str(m) for m in morphology_names]
        if int(score_bins) < 2:
            raise ValueError(f"MetricAccumulator: score_bins must be >= 2, got {score_bins}")
        self.score_bins = int(score_bins)
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
        if self.iou_thresholds.size == 0:
            raise ValueError("MetricAccumulator: iou_thresholds is empty")
        self.loc_thresholds = np.asarray(loc_thresholds, dtype=np.float64).reshape(-1)
        self.loc_score_threshold = float(loc_score_threshold)
        self.max_detections = int(max_detections)
        self.mask_threshold = float(mask_threshold)
        self._state: State = self.empty_state()
        self._warned_morphology = False

    # ------------------------------------------------------------------ state
    @property
    def num_classes(self) -> int:
        """Number of lesion classes ``K``."""
        return len(self.class_names)

    @property
    def image_class_names(self) -> list[str]:
        """Image-level class names ``["normal", *class_names]``."""
        return [NORMAL_NAME, *self.class_names]

    def ctor_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, to build a compatible accumulator."""
        return {
            "class_names": list(self.class_names),
            "morphology_names": list(self.morphology_names),
            "score_bins": self.score_bins,
            "iou_thresholds": self.iou_thresholds.tolist(),
            "loc_thresholds": self.loc_thresholds.tolist(),
            "loc_score_threshold": self.loc_score_threshold,
            "max_detections": self.max_detections,
            "mask_threshold": self.mask_threshold,
        }

    def empty_state(self) -> State:
        """Zero state with this accumulator's shapes."""
        k, t, b = self.num_classes, self.iou_thresholds.size, self.score_bins
        m, lt = len(self.morphology_names) + 1, self.loc_thresholds.size
        i64, f64 = np.int64, np.float64
        return {
            "num_images": np.zeros((), i64),
            # detection
            "det_images": np.zeros((), i64),
            "det_tp": np.zeros((k, t, b), i64),
            "det_fp": np.zeros((k, t, b), i64),
            "det_num_gt": np.zeros((k,), i64),
            # image-level classification
            "cls_images": np.zeros((), i64),
            "cls_confusion": np.zeros((k + 1, k + 1), i64),
            "cls_pos_hist": np.zeros((k + 1, b), i64),
            "cls_neg_hist": np.zeros((k + 1, b), i64),
            # localisation (last morphology row = unknown)
            "loc_hits_morph": np.zeros((m, lt), i64),
            "loc_total_morph": np.zeros((m,), i64),
            "loc_iou_sum_morph": np.zeros((m,), f64),
            "loc_hits_class": np.zeros((k, lt), i64),
            "loc_total_class": np.zeros((k,), i64),
            "loc_iou_sum_class": np.zeros((k,), f64),
            # segmentation
            "seg_images": np.zeros((), i64),
            "seg_dice_sum": np.zeros((), f64),
            "seg_iou_sum": np.zeros((), f64),
            "seg_pos_images": np.zeros((), i64),
            "seg_pos_dice_sum": np.zeros((), f64),
            "seg_pos_iou_sum": np.zeros((), f64),
            "seg_tp": np.zeros((), i64),
            "seg_fp": np.zeros((), i64),
            "seg_fn": np.zeros((), i64),
            # latency
            "latency_sum_ms": np.zeros((), f64),
            "latency_images": np.zeros((), i64),
        }

    def state(self) -> State:
        """A copy of the additive state (string keys, int64/float64 arrays)."""
        return {k: v.copy() for k, v in self._state.items()}

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._state = self.empty_state()

    def _check_state(self, state: Mapping[str, Any], origin: str) -> State:
        expected = self.empty_state()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{origin}: metric state keys do not match (missing {missing}, unexpected "
                f"{extra}); was it built by a different MetricAccumulator version?"
            )
        out: State = {}
        for key, ref in expected.items():
            arr = _to_numpy(state[key])
            if arr.shape != ref.shape:
                raise ValueError(
                    f"{origin}: metric state {key!r} has shape {arr.shape}, expected "
                    f"{ref.shape}; class_names/morphology_names/score_bins/thresholds "
                    "must be identical to merge states"
                )
            out[key] = arr.astype(ref.dtype, copy=True)
        return out

    def merge(self, other: MetricAccumulator | Mapping[str, Any]) -> MetricAccumulator:
        """Add another accumulator (or its state) into this one in place; returns self."""
        if isinstance(other, MetricAccumulator):
            if other.ctor_kwargs() != self.ctor_kwargs():
                raise ValueError(
                    "MetricAccumulator.merge: accumulators were built with different "
                    f"arguments: {self.ctor_kwargs()} vs {other.ctor_kwargs()}"
                )
            other_state = other._state
        else:
            other_state = self._check_state(other, "MetricAccumulator.merge")
        for key in self._state:
            self._state[key] = self._state[key] + other_state[key]
        return self

    def __add__(self, other: MetricAccumulator) -> MetricAccumulator:
        out = MetricAccumulator(**self.ctor_kwargs())
        out.merge(self)
        out.merge(other)
        return out

    def __iadd__(self, other: MetricAccumulator) -> MetricAccumulator:
        return self.merge(other)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **ctor_kwargs: Any) -> MetricAccumulator:
        """Rebuild an accumulator from a state and the constructor arguments it used."""
        acc = cls(**ctor_kwargs)
        acc._state = acc._check_state(state, "MetricAccumulator.from_state")
        return acc

    # ----------------------------------------------------------------- update
    def update(
        self,
        *,
        detections: Sequence[Mapping[str, Any]] | None = None,
        targets: Sequence[Mapping[str, Any]] | None = None,
        image_probs: Any | None = None,
        image_labels: Any | None = None,
        mask_prob: Any | None = None,
        mask_true: Any | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        """Add one batch. Torch tensors (any device) or numpy arrays are accepted.

        Args:
            detections: per image ``{"boxes": (N, 4), "labels": (N,), "scores": (N,)}``.
            targets: per image ``{"boxes": (G, 4), "labels": (G,)}`` and optionally
                ``"morphology": (G,)`` (index into ``morphology_names``, ``-1`` unknown).
                Label ``0`` entries are treated as padding and dropped.
            image_probs: ``(B, K + 1)`` image-class probabilities (column 0 = normal).
            image_labels: ``(B,)`` true image classes ``0..K``.
            mask_prob, mask_true: ``(B, 1, H, W)`` or ``(B, H, W)``.
            latency_ms: total inference time of this batch in milliseconds.

        Each group (detections+targets, image_probs+image_labels, masks) is optional
        but must come as a pair.
        """
        sizes: list[int] = []
        if (detections is None) != (targets is None):
            raise ValueError("MetricAccumulator.update: pass detections and targets together")
        if (image_probs is None) != (image_labels is None):
            raise ValueError("MetricAccumulator.update: pass image_probs and image_labels together")
        if (mask_prob is None) != (mask_true is None):
            raise ValueError("MetricAccumulator.update: pass mask_prob and mask_true together")

        if detections is not None and targets is not None:
            if len(detections) != len(targets):
                raise ValueError(
                    f"MetricAccumulator.update: {len(detections)} detection dicts but "
                    f"{len(targets)} target dicts"
                )
            for det, tgt in zip(detections, targets):
                self._update_image_detection(det, tgt)
            self._state["det_images"] += len(detections)
            sizes.append(len(detections))

        if image_probs is not None and image_labels is not None:
            sizes.append(self._update_classification(image_probs, image_labels))

        if mask_prob is not None and mask_true is not None:
            sizes.append(self._update_segmentation(mask_prob, mask_true))

        if len(set(sizes)) > 1:
            raise ValueError(
                f"MetricAccumulator.update: inconsistent batch sizes {sizes} "
                "(detections / image_probs / masks)"
            )
        batch = sizes[0] if sizes else 0
        self._state["num_images"] += batch
        if latency_ms and latency_ms > 0 and batch > 0:
            self._state["latency_sum_ms"] += float(latency_ms)
            self._state["latency_images"] += batch

    def update_batch(
        self,
        batch: Any,
        *,
        detections: Sequence[Mapping[str, Any]],
        image_probs: Any | None = None,
        mask_prob: Any | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        """Convenience: targets, image labels and masks from a ``shared.data.collate.Batch``."""
        self.update(
            detections=detections,
            targets=batch.targets(),
            image_probs=image_probs,
            image_labels=batch.image_labels if image_probs is not None else None,
            mask_prob=mask_prob,
            mask_true=batch.masks if mask_prob is not None else None,
            latency_ms=latency_ms,
        )

    def _parse_boxes(
        self, d: Mapping[str, Any], what: str, with_scores: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        try:
            boxes = _to_numpy(d["boxes"]).astype(np.float64).reshape(-1, 4)
            labels = _to_numpy(d["labels"]).astype(np.int64).reshape(-1)
        except KeyError as exc:
            raise ValueError(f"MetricAccumulator.update: {what} dict lacks key {exc}") from None
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"MetricAccumulator.update: {what} has {boxes.shape[0]} boxes but "
                f"{labels.shape[0]} labels"
            )
        scores = morph = None
        if with_scores:
            if "scores" not in d:
                raise ValueError(f"MetricAccumulator.update: {what} dict lacks key 'scores'")
            scores = _to_numpy(d["scores"]).astype(np.float64).reshape(-1)
            if scores.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"MetricAccumulator.update: {what} has {labels.shape[0]} labels but "
                    f"{scores.shape[0]} scores"
                )
        else:
            if d.get("morphology") is not None:
                morph = _to_numpy(d["morphology"]).astype(np.int64).reshape(-1)
                if morph.shape[0] != labels.shape[0]:
                    raise ValueError(
                        f"MetricAccumulator.update: {what} has {labels.shape[0]} labels but "
                        f"{morph.shape[0]} morphology entries"
                    )
            else:
                morph = np.full(labels.shape[0], -1, dtype=np.int64)
            keep = labels != 0  # padding
            boxes, labels, morph = boxes[keep], labels[keep], morph[keep]
        k = self.num_classes
        bad = (labels < 1) | (labels > k)
        if bad.any():
            raise ValueError(
                f"MetricAccumulator.update: {what} labels must be in 1..{k} "
                f"(class_names={self.class_names}), got {np.unique(labels[bad]).tolist()}"
            )
        return boxes, labels, scores, morph

    def _update_image_detection(self, det: Mapping[str, Any], tgt: Mapping[str, Any]) -> None:
        d_boxes, d_labels, d_scores, _ = self._parse_boxes(det, "detection", True)
        g_boxes, g_labels, _, g_morph = self._parse_boxes(tgt, "target", False)
        assert d_scores is not None and g_morph is not None
        st = self._state
        n_morph = len(self.morphology_names)
        for c in range(1, self.num_classes + 1):
            ci = c - 1
            dm = d_labels == c
            gm = g_labels == c
            n_gt = int(gm.sum())
            if not dm.any() and n_gt == 0:
                continue
            st["det_num_gt"][ci] += n_gt
            boxes_c, scores_c = d_boxes[dm], d_scores[dm]
            order = np.argsort(-scores_c, kind="mergesort")[: self.max_detections]
            boxes_c, scores_c = boxes_c[order], scores_c[order]
            gts = g_boxes[gm]
            ious = box_iou(boxes_c, gts)
            if boxes_c.shape[0]:
                tp = greedy_match(ious, self.iou_thresholds)  # (T, D)
                bins = score_bins(scores_c, self.score_bins)
                for ti in range(self.iou_thresholds.size):
                    st["det_tp"][ci, ti] += np.bincount(bins[tp[ti]], minlength=self.score_bins)
                    st["det_fp"][ci, ti] += np.bincount(bins[~tp[ti]], minlength=self.score_bins)
            if n_gt:
                # Localisation: all detections of the class above the score threshold.
                confident = d_scores[dm] >= self.loc_score_threshold
                loc_ious = box_iou(d_boxes[dm][confident], gts)
                best = loc_ious.max(axis=0) if loc_ious.shape[0] else np.zeros(n_gt, np.float64)
                hits = best[:, None] >= self.loc_thresholds[None, :] - 1e-12  # (G, L)
                morph = g_morph[gm]
                rows = np.where((morph >= 0) & (morph < n_morph), morph, n_morph)
                if n_morph and not self._warned_morphology and np.any(morph >= n_morph):
                    self._warned_morphology = True
                    logger.warning(
                        "MetricAccumulator: morphology index >= %d (morphology_names=%s) "
                        "counted as unknown",
                        n_morph,
                        self.morphology_names,
                    )
                np.add.at(st["loc_hits_morph"], rows, hits.astype(np.int64))
                np.add.at(st["loc_total_morph"], rows, 1)
                np.add.at(st["loc_iou_sum_morph"], rows, best)
                st["loc_hits_class"][ci] += hits.sum(axis=0)
                st["loc_total_class"][ci] += n_gt
                st["loc_iou_sum_class"][ci] += float(best.sum())

    def _update_classification(self, image_probs: Any, image_labels: Any) -> int:
        probs = _to_numpy(image_probs).astype(np.float64)
        labels = _to_numpy(image_labels).astype(np.int64).reshape(-1)
        k1 = self.num_classes + 1
        if probs.ndim != 2 or probs.shape[1] != k1:
            raise ValueError(
                f"MetricAccumulator.update: image_probs must be (B, {k1}) for classes "
                f"{self.image_class_names}, got {tuple(probs.shape)}"
            )
        if probs.shape[0] != labels.shape[0]:
            raise ValueError(
                f"MetricAccumulator.update: image_probs has {probs.shape[0]} rows but "
                f"image_labels has {labels.shape[0]}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= k1):
            raise ValueError(
                f"MetricAccumulator.update: image_labels must be in 0..{k1 - 1}, got "
                f"{np.unique(labels[(labels < 0) | (labels >= k1)]).tolist()}"
            )
        if labels.size == 0:
            return 0
        st = self._state
        pred = np.argmax(np.nan_to_num(probs, nan=-np.inf), axis=1)
        np.add.at(st["cls_confusion"], (labels, pred), 1)
        bins = score_bins(probs, self.score_bins)  # (B, K+1)
        for c in range(k1):
            pos = labels == c
            st["cls_pos_hist"][c] += np.bincount(bins[pos, c], minlength=self.score_bins)
            st["cls_neg_hist"][c] += np.bincount(bins[~pos, c], minlength=self.score_bins)
        st["cls_images"] += labels.shape[0]
        return int(labels.shape[0])

    def _update_segmentation(self, mask_prob: Any, mask_true: Any) -> int:
        tp, fp, fn = mask_counts(_to_numpy(mask_prob), _to_numpy(mask_true), self.mask_threshold)
        dice, iou = dice_iou(tp, fp, fn, empty_value=1.0)
        pos = (tp + fn) > 0
        st = self._state
        st["seg_images"] += tp.shape[0]
        st["seg_dice_sum"] += float(dice.sum())
        st["seg_iou_sum"] += float(iou.sum())
        st["seg_pos_images"] += int(pos.sum())
        st["seg_pos_dice_sum"] += float(dice[pos].sum())
        st["seg_pos_iou_sum"] += float(iou[pos].sum())
        st["seg_tp"] += int(tp.sum())
        st["seg_fp"] += int(fp.sum())
        st["seg_fn"] += int(fn.sum())
        return int(tp.shape[0])

    # ---------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """All metrics as a dict (see the module docstring); ``nan`` where undefined."""
        st = self._state
        nan = float("nan")
        out: dict[str, Any] = {"num_images": int(st["num_images"])}

        # --- detection
        thr = self.iou_thresholds
        ap = np.full((self.num_classes, thr.size), np.nan)
        for ci in range(self.num_classes):
            for ti in range(thr.size):
                ap[ci, ti] = average_precision_from_histograms(
                    st["det_tp"][ci, ti], st["det_fp"][ci, ti], st["det_num_gt"][ci]
                )
        i50 = np.flatnonzero(np.isclose(thr, 0.5))
        ap50 = ap[:, i50[0]] if i50.size else np.full(self.num_classes, np.nan)
        ap_coco = np.array([_nan_mean(row) for row in ap]) if ap.size else ap
        out["map50"] = _nan_mean(ap50.tolist())
        out["map"] = _nan_mean(ap_coco.tolist())
        out["ap_per_class"] = dict(zip(self.class_names, map(float, ap50)))
        out["ap_coco_per_class"] = dict(zip(self.class_names, map(float, ap_coco)))
        out["num_gt_per_class"] = dict(zip(self.class_names, map(int, st["det_num_gt"].tolist())))

        # --- image-level classification
        cm = st["cls_confusion"]
        total = int(cm.sum())
        per = per_class_from_confusion(cm)
        lesion_f1 = [float(v) for v in per["f1"][1:]]
        binary = (
            binary_lesion_metrics(cm)
            if total
            else dict.fromkeys(("sensitivity", "specificity", "precision", "f1"), nan)
        )
        names = self.image_class_names
        out["accuracy"] = float(np.trace(cm)) / total if total else nan
        out["f1"] = _nan_mean(lesion_f1)
        out["f1_lesion"] = binary["f1"]
        out["precision_lesion"] = binary["precision"]
        out["sensitivity"] = binary["sensitivity"]
        out["specificity"] = binary["specificity"]
        out["f1_per_class"] = dict(zip(names, map(float, per["f1"])))
        out["precision_per_class"] = dict(zip(names, map(float, per["precision"])))
        out["recall_per_class"] = dict(zip(names, map(float, per["recall"])))
        out["confusion_matrix"] = cm.astype(int).tolist()
        out["class_names"] = list(names)

        auc_per_class: dict[str, float] = {}
        roc: dict[str, dict[str, Any]] = {}
        for c, name in enumerate(names):
            a = auc_from_histograms(st["cls_pos_hist"][c], st["cls_neg_hist"][c])
            auc_per_class[name] = a
            fpr, tpr = roc_from_histograms(st["cls_pos_hist"][c], st["cls_neg_hist"][c])
            if fpr.size:
                roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": a}
        out["auc_per_class"] = auc_per_class
        out["auc_lesion"] = auc_per_class[NORMAL_NAME]  # AUC(normal, p0) == AUC(lesion, -p0)
        if self.num_classes == 1:
            out["auc"] = auc_per_class[names[1]]
        else:
            out["auc"] = _nan_mean(auc_per_class.values())
        out["roc"] = roc

        # --- localisation
        out["localization"] = self._compute_localization()

        # --- segmentation
        n_seg = int(st["seg_images"])
        n_pos = int(st["seg_pos_images"])
        out["dice"] = float(st["seg_dice_sum"]) / n_seg if n_seg else nan
        out["iou"] = float(st["seg_iou_sum"]) / n_seg if n_seg else nan
        out["dice_lesion"] = float(st["seg_pos_dice_sum"]) / n_pos if n_pos else nan
        out["iou_lesion"] = float(st["seg_pos_iou_sum"]) / n_pos if n_pos else nan
        tp, fp, fn = (int(st[k]) for k in ("seg_tp", "seg_fp", "seg_fn"))
        out["dice_pooled"] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else nan
        out["iou_pooled"] = tp / (tp + fp + fn) if (tp + fp + fn) else nan

        # --- latency
        n_lat = int(st["latency_images"])
        out["latency_ms"] = float(st["latency_sum_ms"]) / n_lat if n_lat else nan
        return out

    def _loc_row(self, hits: np.ndarray, total: int, iou_sum: float) -> dict[str, Any]:
        thr = [float(t) for t in self.loc_thresholds]
        return {
            "total": int(total),
            "hits": {t: int(h) for t, h in zip(thr, hits)},
            "share": {t: (float(h) / total if total else float("nan")) for t, h in zip(thr, hits)},
            "mean_iou": float(iou_sum) / total if total else float("nan"),
        }

    def _compute_localization(self) -> dict[str, Any]:
        st = self._state
        hits_m, total_m = st["loc_hits_morph"], st["loc_total_morph"]
        iou_m = st["loc_iou_sum_morph"]
        per_morph: dict[str, Any] = {}
        for i, name in enumerate(self.morphology_names):
            per_morph[name] = self._loc_row(hits_m[i], int(total_m[i]), float(iou_m[i]))
        if int(total_m[-1]) > 0 and self.morphology_names:
            per_morph[UNKNOWN_MORPHOLOGY] = self._loc_row(
                hits_m[-1], int(total_m[-1]), float(iou_m[-1])
            )
        per_class = {
            name: self._loc_row(
                st["loc_hits_class"][i],
                int(st["loc_total_class"][i]),
                float(st["loc_iou_sum_class"][i]),
            )
            for i, name in enumerate(self.class_names)
        }
        return {
            "thresholds": [float(t) for t in self.loc_thresholds],
            "score_threshold": self.loc_score_threshold,
            "overall": self._loc_row(hits_m.sum(axis=0), int(total_m.sum()), float(iou_m.sum())),
            "per_morphology": per_morph,
            "per_class": per_class,
        }


def _fmt_thr(t: float) -> str:
    return f"{float(t):g}"


def flat_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten :meth:`MetricAccumulator.compute` output into ``{name: float}``.

    Keys: headline scalars (``map50``, ``map``, ``accuracy``, ``f1``, ``sensitivity``,
    ``specificity``, ``auc``, ``dice``, ``iou``, ``latency_ms``, ``num_images``, ...),
    ``ap50/<class>``, ``ap/<class>``, ``auc/<class>``, ``recall/<class>``,
    ``loc@<t>``, ``loc@<t>/<morphology>``, ``loc_iou``. Fit for CSV rows and Flower
    ``MetricRecord``\\ s (which accept ``nan``).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)):
            out[key] = float(value)
    for prefix, key in (
        ("ap50", "ap_per_class"),
        ("ap", "ap_coco_per_class"),
        ("auc", "auc_per_class"),
        ("recall", "recall_per_class"),
        ("f1", "f1_per_class"),
    ):
        for name, value in (metrics.get(key) or {}).items():
            out[f"{prefix}/{name}"] = float(value)
    loc = metrics.get("localization") or {}
    overall = loc.get("overall")
    if overall:
        for t, share in overall["share"].items():
            out[f"loc@{_fmt_thr(t)}"] = float(share)
        out["loc_iou"] = float(overall["mean_iou"])
        out["loc_total"] = float(overall["total"])
    for morph, row in (loc.get("per_morphology") or {}).items():
        for t, share in row["share"].items():
            out[f"loc@{_fmt_thr(t)}/{morph}"] = float(share)
    return out


def state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state as ``{str: int64/float64 ndarray}`` ready for a Flower ``ArrayRecord``."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        arr = _to_numpy(value)
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
        else:
            raise TypeError(f"state_to_arrays: {key!r} has non-numeric dtype {arr.dtype}")
        out[str(key)] = arr.copy(order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def sum_states(states: Iterable[Mapping[str, Any]]) -> State:
    """Element-wise sum of compatible states (e.g. one per site); raises on mismatch."""
    total: State | None = None
    for i, state in enumerate(states):
        arrays = state_to_arrays(state)
        if total is None:
            total = {k: v.copy() for k, v in arrays.items()}
            continue
        if set(arrays) != set(total):
            raise ValueError(
                f"sum_states: state #{i} has keys {sorted(set(arrays) ^ set(total))} "
                "that the others do not"
            )
        for k, v in arrays.items():
            if v.shape != total[k].shape:
                raise ValueError(
                    f"sum_states: state #{i} key {k!r} has shape {v.shape}, "
                    f"expected {total[k].shape}"
                )
            total[k] = total[k] + v
    if total is None:
        raise ValueError("sum_states: no state given")
    return total
