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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from endofed.shared.metrics.classification import NORMAL_NAME
from endofed.shared.metrics.classification_counts import (
    classification_metrics,
    count_image_classes,
)
from endofed.shared.metrics.detection_counts import count_class_detections, detection_metrics
from endofed.shared.metrics.inputs import parse_boxes, parse_image_classes
from endofed.shared.metrics.localization import (
    UNKNOWN_MORPHOLOGY,
    count_class_localization,
    localization_table,
)
from endofed.shared.metrics.scalars import flat_scalars
from endofed.shared.metrics.segmentation_counts import count_masks, segmentation_metrics
from endofed.shared.metrics.state import (
    AdditiveState,
    State,
    empty_state,
    state_to_arrays,
    sum_states,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_LOC_THRESHOLDS",
    "NORMAL_NAME",
    "UNKNOWN_MORPHOLOGY",
    "MetricAccumulator",
    "State",
    "flat_scalars",
    "state_to_arrays",
    "sum_states",
]

logger = logging.getLogger(__name__)

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(x) for x in np.round(np.linspace(0.5, 0.95, 10), 2)
)
DEFAULT_LOC_THRESHOLDS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)


class MetricAccumulator(AdditiveState):
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

    All constructor arguments must match for states to be merged (``merge``, ``+``,
    ``from_state``: :class:`~endofed.shared.metrics.state.AdditiveState`).
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

    # ------------------------------------------------------------- layout
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
        """Zero state with this accumulator's shapes (layout: :mod:`.state`)."""
        return empty_state(
            num_classes=self.num_classes,
            num_iou_thresholds=self.iou_thresholds.size,
            score_bins=self.score_bins,
            num_morphologies=len(self.morphology_names),
            num_loc_thresholds=self.loc_thresholds.size,
        )

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

    def _update_image_detection(self, det: Mapping[str, Any], tgt: Mapping[str, Any]) -> None:
        """AP counts and localisation counts of one image, class by class."""
        d_boxes, d_labels, d_scores, _ = parse_boxes(det, "detection", True, self.class_names)
        g_boxes, g_labels, _, g_morph = parse_boxes(tgt, "target", False, self.class_names)
        assert d_scores is not None and g_morph is not None
        for ci in range(self.num_classes):
            dm = d_labels == ci + 1
            gm = g_labels == ci + 1
            if not dm.any() and not gm.any():
                continue
            boxes, scores, gts = d_boxes[dm], d_scores[dm], g_boxes[gm]
            count_class_detections(
                self._state, ci, boxes, scores, gts,
                iou_thresholds=self.iou_thresholds,
                num_bins=self.score_bins,
                max_detections=self.max_detections,
            )  # fmt: skip
            if gts.shape[0]:
                self._count_localization(ci, boxes, scores, gts, g_morph[gm])

    def _count_localization(
        self, ci: int, boxes: np.ndarray, scores: np.ndarray, gts: np.ndarray, morph: np.ndarray
    ) -> None:
        unknown = count_class_localization(
            self._state, ci, boxes, scores, gts, morph,
            score_threshold=self.loc_score_threshold,
            loc_thresholds=self.loc_thresholds,
            num_morphologies=len(self.morphology_names),
        )  # fmt: skip
        if unknown and not self._warned_morphology:
            self._warned_morphology = True
            logger.warning(
                "MetricAccumulator: morphology index >= %d (morphology_names=%s) "
                "counted as unknown",
                len(self.morphology_names),
                self.morphology_names,
            )

    def _update_classification(self, image_probs: Any, image_labels: Any) -> int:
        probs, labels = parse_image_classes(image_probs, image_labels, self.image_class_names)
        return count_image_classes(self._state, probs, labels, self.score_bins)

    def _update_segmentation(self, mask_prob: Any, mask_true: Any) -> int:
        return count_masks(self._state, mask_prob, mask_true, self.mask_threshold)

    # ---------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """All metrics as a dict (see the module docstring); ``nan`` where undefined."""
        st = self._state
        out: dict[str, Any] = {"num_images": int(st["num_images"])}
        out.update(detection_metrics(st, self.class_names, self.iou_thresholds))
        out.update(classification_metrics(st, self.image_class_names))
        out["localization"] = localization_table(
            st,
            class_names=self.class_names,
            morphology_names=self.morphology_names,
            loc_thresholds=self.loc_thresholds,
            score_threshold=self.loc_score_threshold,
        )
        out.update(segmentation_metrics(st))
        n_lat = int(st["latency_images"])
        out["latency_ms"] = float(st["latency_sum_ms"]) / n_lat if n_lat else float("nan")
        return out
