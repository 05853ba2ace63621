"""Validation of :meth:`MetricAccumulator.update` inputs: boxes and image classes.

Torch tensors (any device) or numpy arrays in; float64 / int64 numpy arrays out, or a
``ValueError`` that says which input is wrong and how.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from endofed.shared.metrics.state import to_numpy


def parse_boxes(
    d: Mapping[str, Any], what: str, with_scores: bool, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(boxes (N, 4), labels (N,), scores | None, morphology | None)`` of one image.

    Detections (``with_scores``) carry ``scores``; targets carry an optional
    ``morphology`` (``-1`` = unknown) and lose their label-``0`` padding rows. Labels
    must be in ``1..K`` (``K = len(class_names)``).
    """
    try:
        boxes = to_numpy(d["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = to_numpy(d["labels"]).astype(np.int64).reshape(-1)
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
        scores = to_numpy(d["scores"]).astype(np.float64).reshape(-1)
        if scores.shape[0] != labels.shape[0]:
            raise ValueError(
                f"MetricAccumulator.update: {what} has {labels.shape[0]} labels but "
                f"{scores.shape[0]} scores"
            )
    else:
        if d.get("morphology") is not None:
            morph = to_numpy(d["morphology"]).astype(np.int64).reshape(-1)
            if morph.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"MetricAccumulator.update: {what} has {labels.shape[0]} labels but "
                    f"{morph.shape[0]} morphology entries"
                )
        else:
            morph = np.full(labels.shape[0], -1, dtype=np.int64)
        keep = labels != 0  # padding
        boxes, labels, morph = boxes[keep], labels[keep], morph[keep]
    k = len(class_names)
    bad = (labels < 1) | (labels > k)
    if bad.any():
        raise ValueError(
            f"MetricAccumulator.update: {what} labels must be in 1..{k} "
            f"(class_names={list(class_names)}), got {np.unique(labels[bad]).tolist()}"
        )
    return boxes, labels, scores, morph


def parse_image_classes(
    image_probs: Any, image_labels: Any, image_class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (B, K + 1) float64, labels (B,) int64)``; labels in ``0..K``."""
    probs = to_numpy(image_probs).astype(np.float64)
    labels = to_numpy(image_labels).astype(np.int64).reshape(-1)
    k1 = len(image_class_names)
    if probs.ndim != 2 or probs.shape[1] != k1:
        raise ValueError(
            f"MetricAccumulator.update: image_probs must be (B, {k1}) for classes "
            f"{list(image_class_names)}, got {tuple(probs.shape)}"
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
    return probs, labels
