"""Membership-inference statistics: ROC summaries at low FPR and calibrated attack scores.

Pure numpy (no torch, no model): :mod:`endofed.privacy.audit` computes the losses and
trains the reference models, this module turns losses into attack scores and scores
into the numbers a reviewer reads.

* :func:`attack_metrics`: AUC, advantage and the TPR at a fixed low FPR (1 %, 0.1 %)
  read from the ROC by linear interpolation between its points (Carlini et al. 2022,
  "Membership inference attacks from first principles", report TPR at low FPR
  because an attack that confidently identifies a few members matters even when its
  AUC is near 0.5). A TPR at FPR ``f`` is only estimable with at least ``1/f``
  non-members (one false positive is already FPR ``1/n``); below that it is
  reported as not estimable, never as a number.
* :func:`loss_scores`: the loss-threshold attack (Yeom et al. 2018).
* :func:`calibrated_scores`: offline LiRA / difficulty calibration (Carlini et al.
  2022; Watson et al. 2022, "On the importance of difficulty calibration in
  membership inference attacks"): each example's target loss is compared with its
  loss under reference models that did **not** train on it, so an image that is
  simply easy (low loss everywhere) is no longer mistaken for a member.
* :func:`reference_halves`: the seeded, patient-grouped halves the reference models
  train on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPR_LEVELS: tuple[float, ...] = (0.01, 0.001)
PER_EXAMPLE_SIGMA_MIN_OUT = 4  # OUT references needed for a per-example sigma
SIGMA_FLOOR_FRACTION = 0.1  # a per-example sigma is at least this share of the global one


def min_non_members(fpr: float) -> int:
    """Non-members needed before a TPR at ``fpr`` means anything (``ceil(1 / fpr)``)."""
    return math.ceil(1.0 / fpr - 1e-9)


def fpr_key(fpr: float) -> str:
    """JSON key of the TPR at ``fpr``: ``tpr_at_fpr_0.01``, ``tpr_at_fpr_0.001``."""
    return f"tpr_at_fpr_{fpr:g}"


def fpr_label(fpr: float) -> str:
    """``0.01`` -> ``"1%"``, ``0.001`` -> ``"0.1%"``."""
    return f"{fpr * 100:g}%"


def tpr_at_fpr(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
               fpr: float) -> float:
    """TPR of the ROC (higher score = member) at false-positive rate ``fpr``.

    Linear interpolation between the ROC's points (a threshold randomised between two
    neighbouring ones achieves it); where the ROC rises vertically at exactly ``fpr``
    the highest TPR there is taken. Does not check estimability (see
    :func:`attack_metrics`).
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("tpr_at_fpr needs both members (1) and non-members (0)")
    fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    i = int(np.searchsorted(fprs, fpr, side="right")) - 1  # last point with FPR <= fpr
    if fprs[i] == fpr or i == len(fprs) - 1:
        return float(tprs[i])
    w = (fpr - fprs[i]) / (fprs[i + 1] - fprs[i])
    return float(tprs[i] + w * (tprs[i + 1] - tprs[i]))


@dataclass
class AttackMetrics:
    """One attack on one set of members and non-members."""

    attack: str
    members: int
    non_members: int
    auc: float
    advantage: float  # max(TPR - FPR) over thresholds
    tpr_at_fpr: dict[float, float | None] = field(default_factory=dict)  # None: not estimable
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Flat JSON row: ``tpr_at_fpr_0.01`` etc. (``None`` = not estimable)."""
        d = asdict(self)
        levels = d.pop("tpr_at_fpr")
        d.update({fpr_key(f): v for f, v in levels.items()})
        return d


def attack_metrics(
    attack: str,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    fprs: Sequence[float] = FPR_LEVELS,
) -> AttackMetrics:
    """AUC, advantage and TPR at each of ``fprs`` (``None`` with a note when fewer than
    ``1/fpr`` non-members make it not estimable)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.isfinite(s).all():
        raise ValueError("attack scores must be finite (a loss was nan or inf)")
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"the attack needs members and non-members; got {n_pos} and {n_neg}"
        )
    roc_fpr, roc_tpr, _ = roc_curve(y, s)
    out = AttackMetrics(attack=attack, members=n_pos, non_members=n_neg,
                        auc=float(roc_auc_score(y, s)),
                        advantage=float(np.max(roc_tpr - roc_fpr)))
    missing = []
    for f in fprs:
        if n_neg < min_non_members(f):
            out.tpr_at_fpr[f] = None
            missing.append(f)
        else:
            out.tpr_at_fpr[f] = tpr_at_fpr(y, s, f)
    if missing:
        out.notes.append(
            " and ".join(f"TPR@{fpr_label(f)}FPR" for f in missing)
            + f" not estimable: {n_neg} non-members, "
            + " / ".join(str(min_non_members(f)) for f in missing) + " needed"
        )
    return out


def loss_scores(target_losses: np.ndarray) -> np.ndarray:
    """Loss-threshold attack: a lower loss means "member"."""
    return -np.asarray(target_losses, dtype=float)


@dataclass
class Calibration:
    """How :func:`calibrated_scores` normalised: ``global`` or ``per-example`` sigma."""

    sigma: str
    global_sigma: float
    min_out: int
    max_out: int


def calibrated_scores(
    target_losses: np.ndarray, reference_losses: np.ndarray, out_mask: np.ndarray
) -> tuple[np.ndarray, Calibration]:
    """Offline LiRA / difficulty-calibrated score of each example (higher = member).

    ``reference_losses`` is ``(R, N)``: each reference model's loss on each example;
    ``out_mask[r, n]`` says reference ``r`` did *not* train on example ``n``. With
    ``mu(n)`` the mean OUT reference loss of example ``n``::

        score(n) = (mu(n) - target_loss(n)) / sigma(n)

    ``sigma(n)`` is the example's own standard deviation over its OUT references when
    every example has at least :data:`PER_EXAMPLE_SIGMA_MIN_OUT` of them (floored at
    :data:`SIGMA_FLOOR_FRACTION` of the global sigma); otherwise one global sigma:
    the root mean per-example variance over OUT references when each example has at
    least two, else the standard deviation of the OUT losses over the examples. A
    global sigma does not change the ranking: the attack is then the difference
    ``mu(n) - target_loss(n)`` (Watson et al.'s difficulty calibration).
    """
    target = np.asarray(target_losses, dtype=float)
    ref = np.asarray(reference_losses, dtype=float)
    out = np.asarray(out_mask, dtype=bool)
    if ref.ndim != 2 or ref.shape != out.shape or ref.shape[1] != len(target):
        raise ValueError(
            f"reference losses {ref.shape} and OUT mask {out.shape} must be "
            f"(references, {len(target)} examples)"
        )
    n_out = out.sum(axis=0)
    if len(target) == 0 or n_out.min() < 1:
        raise ValueError("every example needs at least one reference model that did not "
                         "train on it (and there must be examples)")
    ref_out = np.where(out, ref, np.nan)
    mu = np.nanmean(ref_out, axis=0)
    if n_out.min() >= 2:
        var = np.nanvar(ref_out, axis=0, ddof=1)
        global_sigma = float(np.sqrt(np.mean(var)))
    else:
        var = None
        global_sigma = float(np.std(ref[out]))
    global_sigma = global_sigma if global_sigma > 0 else 1.0
    if n_out.min() >= PER_EXAMPLE_SIGMA_MIN_OUT and var is not None:
        sigma = np.maximum(np.sqrt(var), SIGMA_FLOOR_FRACTION * global_sigma)
        kind = "per-example"
    else:
        sigma = np.full_like(mu, global_sigma)
        kind = "global"
    calib = Calibration(sigma=kind, global_sigma=global_sigma,
                        min_out=int(n_out.min()), max_out=int(n_out.max()))
    return (mu - target) / sigma, calib


def reference_halves(
    groups: Sequence[Hashable], strata: Sequence[Hashable], count: int, seed: int
) -> np.ndarray:
    """``(count, N)`` IN masks of ``count`` reference models over ``N`` examples.

    References come in complementary pairs: pair ``i`` draws a seeded half of the
    examples and reference ``2i`` trains on it, ``2i + 1`` on the rest, so every
    example is OUT for ``floor(count / 2)`` references or more. Halves keep whole
    groups (a patient's images are IN or OUT together) and balance each stratum
    (site x member) between the two sides.
    """
    if count < 2:
        raise ValueError(f"the calibrated attack needs >= 2 reference models, got {count}")
    n = len(groups)
    if len(strata) != n:
        raise ValueError(f"{n} groups but {len(strata)} strata")
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, n), dtype=bool)
    by_stratum: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(dict)
    for i, (g, s) in enumerate(zip(groups, strata)):
        by_stratum[s].setdefault(g, []).append(i)
    for pair in range((count + 1) // 2):
        side_a = np.zeros(n, dtype=bool)
        for s in sorted(by_stratum, key=repr):
            members = by_stratum[s]
            keys = sorted(members, key=repr)
            sizes = [0, 0]
            for j in rng.permutation(len(keys)):
                idx = members[keys[int(j)]]
                side = 0 if sizes[0] <= sizes[1] else 1
                if sizes[0] == sizes[1]:
                    side = int(rng.integers(2))
                sizes[side] += len(idx)
                if side == 0:
                    side_a[idx] = True
        masks[2 * pair] = side_a
        if 2 * pair + 1 < count:
            masks[2 * pair + 1] = ~side_a
    return masks
