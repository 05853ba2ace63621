"""The image-level operating point: which lesion probability makes a "lesion" verdict.

The accumulator keeps, for image class 0 (normal), the histogram of ``p(normal)`` over
the normal images (``cls_pos_hist[0]``) and over the lesion images
(``cls_neg_hist[0]``). An image's *lesion probability* is ``1 - p(normal)`` (the
highest lesion-class score, :func:`endofed.shared.model.postprocess.image_probabilities`).
A threshold ``t`` on it is a bin edge ``t = 1 - j / bins`` and the verdict is

    lesion  <=>  score bin of p(normal) < j   (i.e. lesion probability > t)

so the sensitivity and specificity of every candidate threshold are read off the
histograms exactly, and a threshold chosen from the sum of several sites' histograms is
exactly the one the pooled images would give. With ``t = 0.5`` the verdict is the
``argmax`` one the confusion matrix uses (ties go to normal).

Rules (:mod:`endofed.shared.config.threshold_rule`):

* ``youden``: maximise ``sensitivity + specificity - 1``; ties go to the highest
  threshold (as the first maximum of ``sklearn.metrics.roc_curve``'s descending
  thresholds);
* ``sensitivity:X``: the highest threshold whose sensitivity is ``>= X`` (screening:
  miss at most ``1 - X`` of the lesion images, with as few false alarms as possible);
* ``specificity:X``: the lowest threshold whose specificity is ``>= X``;
* ``fixed:T``: ``T`` snapped to the nearest bin edge.

A rule that needs a class the data lacks (no lesion images for ``sensitivity:X``, no
normal images for ``specificity:X``, either for ``youden``) falls back to 0.5 and says
so in :attr:`OperatingPoint.note`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from endofed.shared.config.threshold_rule import parse_threshold_rule
from endofed.shared.metrics.detection import score_bins as _score_bins

log = logging.getLogger(__name__)

#: Threshold of a checkpoint written before operating points were stored.
DEFAULT_THRESHOLD = 0.5
#: Histogram resolution assumed for such a checkpoint (the accumulator's default).
DEFAULT_SCORE_BINS = 1000


@dataclass(frozen=True)
class OperatingPoint:
    """A lesion / no-lesion decision rule and how it performs on the data it came from.

    Attributes:
        rule: the rule that chose it (``youden``, ``sensitivity:0.95``, ...).
        threshold: lesion probability (``1 - p(normal)``) above which an image is a
            lesion image; a multiple of ``1 / score_bins``.
        sensitivity, specificity: at ``threshold`` on the histograms it was chosen
            from (``nan`` without lesion / normal images).
        num_positive, num_negative: lesion and normal images in those histograms.
        score_bins: histogram resolution.
        note: why the rule could not be applied (then ``threshold`` is 0.5), else "".
    """

    rule: str
    threshold: float
    sensitivity: float
    specificity: float
    num_positive: int
    num_negative: int
    score_bins: int
    note: str = ""

    @property
    def cut(self) -> int:
        """``j``: images whose ``p(normal)`` bin is below it are lesion images."""
        return int(round((1.0 - self.threshold) * self.score_bins))

    def is_lesion(self, p_normal: Any) -> np.ndarray:
        """Boolean verdict per image from ``p(normal)`` (column 0 of ``image_probs``)."""
        return _score_bins(np.asarray(p_normal, dtype=np.float64), self.score_bins) < self.cut

    def to_dict(self) -> dict[str, Any]:
        """Plain Python, fit for a checkpoint's ``extra`` and for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OperatingPoint:
        """Inverse of :meth:`to_dict`; ``None`` rates (JSON's ``nan``) read as ``nan``."""

        def rate(key: str) -> float:
            value = d.get(key)
            return float("nan") if value is None else float(value)

        return cls(
            rule=str(d.get("rule", "fixed")),
            threshold=float(d["threshold"]),
            sensitivity=rate("sensitivity"),
            specificity=rate("specificity"),
            num_positive=int(d.get("num_positive") or 0),
            num_negative=int(d.get("num_negative") or 0),
            score_bins=int(d.get("score_bins") or DEFAULT_SCORE_BINS),
            note=str(d.get("note") or ""),
        )


def lesion_histograms(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(lesion_hist, normal_hist)`` of ``p(normal)`` from an accumulator state."""
    normal = np.asarray(state["cls_pos_hist"][0], dtype=np.int64)
    lesion = np.asarray(state["cls_neg_hist"][0], dtype=np.int64)
    return lesion, normal


def _rates(lesion: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at every cut ``j = 0..bins`` (index = ``j``)."""
    n_pos, n_neg = int(lesion.sum()), int(normal.sum())
    tp = np.concatenate([[0], np.cumsum(lesion)])  # lesion images with bin < j
    fp = np.concatenate([[0], np.cumsum(normal)])  # normal images with bin < j
    nan = np.full(tp.shape, np.nan)
    sens = tp / n_pos if n_pos else nan
    spec = (n_neg - fp) / n_neg if n_neg else nan
    return sens, spec


def _point(
    rule: str, j: int, lesion: np.ndarray, normal: np.ndarray, note: str = ""
) -> OperatingPoint:
    bins = lesion.shape[0]
    sens, spec = _rates(lesion, normal)
    return OperatingPoint(
        rule=rule,
        threshold=(bins - j) / bins,
        sensitivity=float(sens[j]),
        specificity=float(spec[j]),
        num_positive=int(lesion.sum()),
        num_negative=int(normal.sum()),
        score_bins=bins,
        note=note,
    )


def choose_from_histograms(
    lesion_hist: np.ndarray, normal_hist: np.ndarray, rule: str = "youden"
) -> OperatingPoint:
    """Apply ``rule`` to ``p(normal)`` histograms of lesion and normal images.

    Raises :class:`~endofed.shared.config.ConfigError` for a malformed rule.
    """
    lesion = np.asarray(lesion_hist, dtype=np.int64).reshape(-1)
    normal = np.asarray(normal_hist, dtype=np.int64).reshape(-1)
    if lesion.shape != normal.shape or lesion.size < 2:
        raise ValueError(
            f"choose_from_histograms: histograms of shapes {lesion.shape} and "
            f"{normal.shape}; expected two equal lengths >= 2"
        )
    kind, target = parse_threshold_rule(rule)
    label = kind if target is None else f"{kind}:{target:g}"
    bins = lesion.size
    n_pos, n_neg = int(lesion.sum()), int(normal.sum())
    sens, spec = _rates(lesion, normal)
    fallback = int(round((1.0 - DEFAULT_THRESHOLD) * bins))
    if kind == "fixed":
        assert target is not None
        return _point(label, int(round((1.0 - target) * bins)), lesion, normal)
    missing = []
    if kind in ("youden", "sensitivity") and n_pos == 0:
        missing.append("lesion")
    if kind in ("youden", "specificity") and n_neg == 0:
        missing.append("normal")
    if missing:
        note = f"no {' or '.join(missing)} images: threshold {DEFAULT_THRESHOLD} kept"
        return _point(label, fallback, lesion, normal, note)
    eps = 1e-12  # rates are ratios of integers: compare with a tolerance, not bit-exact
    if kind == "youden":
        j_stat = sens + spec - 1.0
        j = int(np.flatnonzero(j_stat >= j_stat.max() - eps)[0])
    elif kind == "sensitivity":
        j = int(np.flatnonzero(sens >= target - eps)[0])  # sens rises with j
    else:
        j = int(np.flatnonzero(spec >= target - eps)[-1])  # spec falls with j
    return _point(label, j, lesion, normal)


def choose_operating_point(state: Mapping[str, np.ndarray], rule: str = "youden") -> OperatingPoint:
    """Apply ``rule`` to an accumulator state (one site's or the sum of several)."""
    lesion, normal = lesion_histograms(state)
    return choose_from_histograms(lesion, normal, rule)


def at_threshold(
    state: Mapping[str, np.ndarray], threshold: float, *, rule: str | None = None
) -> OperatingPoint:
    """Sensitivity and specificity of a given threshold on a state's histograms.

    ``rule`` is the label to keep (e.g. the rule a checkpoint's threshold came from);
    the threshold is snapped to the state's nearest bin edge.
    """
    lesion, normal = lesion_histograms(state)
    point = choose_from_histograms(lesion, normal, f"fixed:{float(threshold)!r}")
    if rule is not None:
        point = OperatingPoint(**{**point.to_dict(), "rule": str(rule)})
    return point


def from_checkpoint_extra(extra: Mapping[str, Any] | None, *, origin: str = "") -> OperatingPoint:
    """The operating point a checkpoint stores, or 0.5 (with a warning) for an old one."""
    stored = (extra or {}).get("operating_point")
    if isinstance(stored, Mapping) and "threshold" in stored:
        try:
            point = OperatingPoint.from_dict(stored)
            if math.isfinite(point.threshold) and 0.0 <= point.threshold <= 1.0:
                return point
        except (TypeError, ValueError):
            pass
        log.warning("%s: unreadable operating point %r", origin or "checkpoint", stored)
    log.warning(
        "%s stores no image-level operating point (written before thresholds were "
        "calibrated); using lesion probability > %.1f", origin or "checkpoint",
        DEFAULT_THRESHOLD,
    )
    return default_operating_point("checkpoint without an operating point")


def default_operating_point(note: str = "no calibrated threshold") -> OperatingPoint:
    """Lesion probability > 0.5 (the argmax verdict), with unknown rates."""
    nan = float("nan")
    return OperatingPoint(
        rule="default", threshold=DEFAULT_THRESHOLD, sensitivity=nan, specificity=nan,
        num_positive=0, num_negative=0, score_bins=DEFAULT_SCORE_BINS, note=note,
    )
