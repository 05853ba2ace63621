"""Membership-inference statistics: TPR at low FPR, the calibrated (LiRA-style) attack,
reference halves, and the full audit with real reference models."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from endofed.privacy.audit import (
    ALL_SITES,
    AuditSite,
    ReferenceSpec,
    per_image_losses,
    run_epsilon,
    run_membership_audit,
)
from endofed.privacy.membership import (
    attack_metrics,
    calibrated_scores,
    loss_scores,
    reference_halves,
    tpr_at_fpr,
)
from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.engine import Trainer
from endofed.shared.model import build_model


class _Plant:
    """Unpickling this writes ``marker`` (proof that a pickle ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# 10 non-members scored 0..9; members 9.5, 8.5, 5 (tied with a non-member), 5, 2.5.
NON = np.arange(10.0)
MEM = np.array([9.5, 8.5, 5.0, 5.0, 2.5])
LABELS = np.r_[np.ones(5), np.zeros(10)]
SCORES = np.r_[MEM, NON]


def test_tpr_at_fpr_is_the_roc_read_by_hand():
    # ROC by hand: (0, .2) (.1, .2) (.1, .4) (.2, .4) (.3, .4) (.4, .4) then the tie at 5
    # moves both at once to (.5, .8); (.5, .8) ... (.7, .8) (.7, 1.0) ... (1, 1).
    assert tpr_at_fpr(LABELS, SCORES, 0.0) == pytest.approx(0.2)
    assert tpr_at_fpr(LABELS, SCORES, 0.05) == pytest.approx(0.2)
    assert tpr_at_fpr(LABELS, SCORES, 0.1) == pytest.approx(0.4)  # top of the vertical step
    assert tpr_at_fpr(LABELS, SCORES, 0.45) == pytest.approx(0.6)  # halfway along the tie
    assert tpr_at_fpr(LABELS, SCORES, 0.7) == pytest.approx(1.0)
    assert tpr_at_fpr(LABELS, SCORES, 1.0) == pytest.approx(1.0)


def test_tpr_at_fpr_equals_sklearn_roc_interpolation():
    rng = np.random.default_rng(0)
    n_neg, n_pos = 1234, 300  # 1 % and 0.1 % of 1234 fall between ROC points
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    s = np.r_[rng.normal(0.7, 1, n_pos), rng.normal(0, 1, n_neg)]
    fpr, tpr, _ = roc_curve(y, s)
    for f in (0.01, 0.001, 0.05, 0.3):
        assert tpr_at_fpr(y, s, f) == pytest.approx(float(np.interp(f, fpr, tpr)), abs=1e-12)
    m = attack_metrics("loss", y, s)
    assert m.auc == pytest.approx(roc_auc_score(y, s))
    assert m.advantage == pytest.approx(float(np.max(tpr - fpr)))
    assert m.tpr_at_fpr[0.01] == pytest.approx(float(np.interp(0.01, fpr, tpr)))
    assert m.tpr_at_fpr[0.001] == pytest.approx(float(np.interp(0.001, fpr, tpr)))
    assert m.notes == []
    row = m.as_dict()
    assert row["tpr_at_fpr_0.01"] == m.tpr_at_fpr[0.01] and row["non_members"] == n_neg


def test_tpr_at_low_fpr_is_not_estimable_with_few_non_members():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(50), np.zeros(999)]
    s = rng.normal(size=len(y))
    m = attack_metrics("loss", y, s)
    assert m.tpr_at_fpr[0.001] is None  # 999 < 1000 non-members
    assert m.tpr_at_fpr[0.01] is not None  # >= 100
    assert m.notes == ["TPR@0.1%FPR not estimable: 999 non-members, 1000 needed"]
    m = attack_metrics("loss", LABELS, SCORES)
    assert m.tpr_at_fpr == {0.01: None, 0.001: None}
    assert "10 non-members, 100 / 1000 needed" in m.notes[0]
    y = np.r_[np.ones(5), np.zeros(1000)]
    assert attack_metrics("loss", y, np.arange(1005.0)).tpr_at_fpr[0.001] is not None
    with pytest.raises(ValueError, match="members and non-members"):
        attack_metrics("loss", np.ones(3), np.zeros(3))


def test_calibrated_scores_match_a_hand_computation():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    # two references on complementary halves: each example has exactly one OUT loss
    ref = np.array([[9.0, 2.5, 9.0, 6.0],
                    [1.5, 9.0, 5.0, 9.0]])
    out = np.array([[False, True, False, True],
                    [True, False, True, False]])
    scores, calib = calibrated_scores(target, ref, out)
    out_losses = np.array([1.5, 2.5, 5.0, 6.0])
    sigma = np.std(out_losses)  # one OUT each: the global spread of the OUT losses
    assert calib.sigma == "global" and calib.min_out == calib.max_out == 1
    assert calib.global_sigma == pytest.approx(sigma)
    np.testing.assert_allclose(scores, (out_losses - target) / sigma)

    # two OUT references each: mean OUT loss, sigma = sqrt(mean per-example variance)
    ref2 = np.array([[2.0, 3.0], [4.0, 7.0], [0.0, 0.0]])
    out2 = np.array([[True, True], [True, True], [False, False]])
    s2, c2 = calibrated_scores(np.array([1.0, 1.0]), ref2, out2)
    var = np.array([2.0, 8.0])  # ddof=1: (2-3)^2+(4-3)^2 = 2; (3-5)^2+(7-5)^2 = 8
    np.testing.assert_allclose(s2, (np.array([3.0, 5.0]) - 1.0) / np.sqrt(var.mean()))
    assert c2.sigma == "global"

    # four OUT references each: per-example Gaussian
    ref4 = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 14.0], [4.0, 14.0]])
    s4, c4 = calibrated_scores(np.array([0.0, 8.0]), ref4, np.ones((4, 2), bool))
    sd = np.array([np.std([1, 2, 3, 4], ddof=1), np.std([10, 10, 14, 14], ddof=1)])
    np.testing.assert_allclose(s4, (np.array([2.5, 12.0]) - [0.0, 8.0]) / sd)
    assert c4.sigma == "per-example"
    with pytest.raises(ValueError, match="did not train on it"):
        calibrated_scores(target, ref, np.zeros_like(out))


def test_calibrated_attack_beats_the_loss_attack_when_difficulty_varies():
    """Easy images have a low loss everywhere; the loss attack takes them for members.
    Comparing with the loss of models that never saw the image removes that."""
    rng = np.random.default_rng(7)
    n = 4000
    member = rng.random(n) < 0.5
    difficulty = rng.uniform(0.5, 5.0, n)  # per-image loss of a model that never saw it
    target = difficulty - 0.5 * member + rng.normal(0, 0.1, n)  # training lowers the loss
    in_mask = reference_halves(list(range(n)), member.tolist(), 2, seed=0)
    ref = difficulty + rng.normal(0, 0.1, (2, n))
    ref = np.where(in_mask, ref - 0.5, ref)  # a reference fits what it trained on, too
    y = member.astype(int)
    loss = attack_metrics("loss", y, loss_scores(target))
    calibrated = attack_metrics("calibrated", y, calibrated_scores(target, ref, ~in_mask)[0])
    assert loss.auc < 0.65
    assert calibrated.auc > 0.95
    assert calibrated.tpr_at_fpr[0.01] > 0.5 > 0.2 > loss.tpr_at_fpr[0.01]


def test_reference_halves_are_complementary_patient_grouped_and_seeded():
    groups = [f"p{i // 3}" for i in range(60)]  # 20 patients of 3 images
    strata = ["a:1" if i < 30 else "a:0" for i in range(60)]
    masks = reference_halves(groups, strata, 4, seed=3)
    assert masks.shape == (4, 60)
    assert (masks[0] ^ masks[1]).all() and (masks[2] ^ masks[3]).all()
    assert (~masks).sum(axis=0).min() == 2  # every image is OUT for two references
    for m in masks:
        for p in set(groups):
            sides = {bool(m[i]) for i, g in enumerate(groups) if g == p}
            assert len(sides) == 1  # a patient is IN or OUT as a whole
        for lo, hi in ((0, 30), (30, 60)):
            assert abs(int(m[lo:hi].sum()) - 15) <= 3  # each stratum split about evenly
    np.testing.assert_array_equal(masks, reference_halves(groups, strata, 4, seed=3))
    assert not np.array_equal(masks, reference_halves(groups, strata, 4, seed=4))
    odd = reference_halves(groups, strata, 3, seed=3)
    assert (~odd).sum(axis=0).min() >= 1
    with pytest.raises(ValueError, match=">= 2 reference models"):
        reference_halves(groups, strata, 1, seed=0)


@pytest.fixture
def tiny_audit(tmp_path):
    """A tiny model overfit on 8 of 16 synthetic images (two sites)."""
    cfg = EndoFedConfig.from_mapping(
        {"preset": "tiny", "image-size": 64, "batch-size": 4, "augment": False,
         "learning-rate": 0.01, "local-epochs": 3, "threads": 1, "weights-path": "none"}
    )
    sites = []
    for k in range(2):
        write_site(tmp_path / f"s{k}", n_images=8, seed=20 + k, size=(96, 96))
        recs = harmonize_labels(scan_site(tmp_path / f"s{k}"), cfg.data.class_names).records
        sites.append(AuditSite(f"s{k}", recs[:4], recs[4:]))
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    members = [r for s in sites for r in s.members]
    Trainer(model, cfg.train, device=torch.device("cpu"), progress=False).fit(
        loader_for(dataset_for(members, cfg, train=False), cfg, shuffle=True), epochs=15)
    return model, sites, cfg


def test_full_audit_with_real_reference_models_is_reproducible_and_computed_as_stated(
        tiny_audit, tmp_path):
    model, sites, cfg = tiny_audit
    spec = ReferenceSpec(count=2, epochs=2, seed=5)
    cache = tmp_path / "cache"
    first = run_membership_audit(model, sites, cfg, references=spec, cache_dir=cache,
                                 progress=False, epsilon={"s0": 3.0, "s1": 4.0})
    assert [(r["site"], r["attack"]) for r in first.rows] == [
        ("s0", "loss"), ("s0", "calibrated"), ("s1", "loss"), ("s1", "calibrated"),
        ("pooled", "loss"), ("pooled", "calibrated")]
    assert first.references["train_images"] == [8, 8] and first.references["reused"] is False
    assert first.references["finetune"] == "global" and first.references["epochs"] == 2
    pooled = {r["attack"]: r for r in first.rows if r["site"] == "pooled"}
    assert pooled["loss"]["members"] == 8 and pooled["loss"]["non_members"] == 8
    assert pooled["loss"]["epsilon_spent"] == 4.0
    assert all(r["tpr_at_fpr_0.01"] is None for r in first.rows)  # 8 non-members

    # by hand from the cached reference losses and the target's own losses
    with np.load(next(cache.glob("reference-*.npz"))) as z:
        ref, in_mask = z["losses"], z["in_mask"]
    pool = [r for s in sites for r in (*s.members, *s.non_members)]
    y = np.array([1] * 4 + [0] * 4 + [1] * 4 + [0] * 4)
    target = per_image_losses(model, pool, cfg, torch.device("cpu"))
    assert roc_auc_score(y, -target) == pytest.approx(pooled["loss"]["auc"])
    mu = np.where(in_mask, np.nan, ref)
    mu = np.nanmean(mu, axis=0)
    sigma = np.std(ref[~in_mask])
    assert roc_auc_score(y, (mu - target) / sigma) == pytest.approx(
        pooled["calibrated"]["auc"])
    s1 = slice(8, 16)
    assert roc_auc_score(y[s1], (mu - target)[s1]) == pytest.approx(
        next(r["auc"] for r in first.rows if r["site"] == "s1" and r["attack"] == "calibrated"))

    again = run_membership_audit(model, sites, cfg, references=spec, cache_dir=cache,
                                 progress=False)
    assert again.references["reused"] is True
    fresh = run_membership_audit(model, sites, cfg, references=spec, progress=False)
    assert fresh.references["reused"] is False
    # a planted pickle in the cache is never unpickled: it is reported and replaced
    marker = tmp_path / "ran"
    cached = next(cache.glob("reference-*.npz"))
    cached.write_bytes(pickle.dumps(_Plant(marker)))
    replanted = run_membership_audit(model, sites, cfg, references=spec, cache_dir=cache,
                                     progress=False)
    assert not marker.exists() and replanted.references["reused"] is False
    pickle.loads(pickle.dumps(_Plant(tmp_path / "proof")))  # the plant is real
    assert (tmp_path / "proof").exists()
    with np.load(cached) as z:
        np.testing.assert_array_equal(z["losses"], ref)
    strip = [{k: v for k, v in r.items() if k != "epsilon_spent"} for r in first.rows]
    for other in (again, fresh, replanted):  # same seed: the same reference models, the same table
        assert [{k: v for k, v in r.items() if k != "epsilon_spent"}
                for r in other.rows] == strip


def test_epsilon_of_a_central_dp_run_covers_every_site(tiny_audit, tmp_path):
    """``train -c dp-epsilon=..`` records ``metrics.json["privacy"]["epsilon_spent"]``;
    every site's rows (and the pooled one) carry it."""
    import json

    run = tmp_path / "central"
    run.mkdir()
    assert run_epsilon(run) == ({}, "")
    (run / "metrics.json").write_text(json.dumps({"map50": 0.1,
                                                  "privacy": {"epsilon_spent": 3.9}}))
    eps, source = run_epsilon(run)
    assert eps == {ALL_SITES: 3.9} and source == "metrics.json"
    model, sites, cfg = tiny_audit
    report = run_membership_audit(model, sites, cfg, epsilon=eps, progress=False)
    assert {r["site"]: r["epsilon_spent"] for r in report.rows} == {
        "s0": 3.9, "s1": 3.9, "pooled": 3.9}
    assert report.references is None and {r["attack"] for r in report.rows} == {"loss"}
