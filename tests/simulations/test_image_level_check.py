"""Image-level check: figures by hand / sklearn, a real tiny model end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from endofed.shared.config import EndoFedConfig
from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.same_source import CropLoader, plan_crops
from endofed.shared.data.site import scan_site
from endofed.shared.data.split import split_records
from endofed.shared.model import build_model, save_checkpoint
from endofed.simulations.image_level_check import (
    checkpoint_threshold,
    image_level_check,
    image_level_figures,
    load_model_and_threshold,
)

SIZE = 64


def test_figures_by_hand_and_against_sklearn() -> None:
    lesion = [0.9, 0.6, 0.5, 0.2]
    normal = [0.7, 0.5, 0.1]
    scores = np.array(lesion + normal)
    positive = np.array([True] * 4 + [False] * 3)
    got = image_level_figures(scores, positive, 0.5)
    # lesion iff score > 0.5: lesions 0.9, 0.6 found, 0.5 and 0.2 missed; normal 0.7 flagged
    assert (got["tp"], got["fn"], got["tn"], got["fp"]) == (2, 2, 2, 1)
    assert got["sensitivity"] == 0.5
    assert got["specificity"] == pytest.approx(2 / 3)
    # 12 (lesion, normal) pairs: 3 + 2 + (1 + a tie) + 1 = 7.5 ordered correctly
    assert got["auc"] == pytest.approx(7.5 / 12)
    assert got["auc"] == pytest.approx(roc_auc_score(positive, scores))
    assert np.isnan(image_level_figures(scores[:4], positive[:4], 0.5)["specificity"])


def test_threshold_is_read_from_the_checkpoint(tmp_path: Path) -> None:
    model = build_model(preset="tiny", num_classes=1, image_size=SIZE, weights_path="none")
    with_op = save_checkpoint(tmp_path / "a.pt", model,
                              extra={"operating_point": {"rule": "youden", "threshold": 0.37}})
    without = save_checkpoint(tmp_path / "b.pt", model)
    assert load_model_and_threshold(with_op)[1] == pytest.approx(0.37)
    assert load_model_and_threshold(without)[1] is None
    assert checkpoint_threshold({"operating_point": {"threshold": 1.5}}) is None
    assert checkpoint_threshold({"operating_point": {"threshold": "x"}}) is None


def _sites(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    lesion_dir, normal_dir = root / "lesion", root / "normal"
    for d in (lesion_dir / "images", lesion_dir / "masks", normal_dir / "images"):
        d.mkdir(parents=True)
    for i in range(10):
        image = rng.integers(70, 210, (96, 112, 3), dtype=np.uint8)
        mask = np.zeros((96, 112), np.uint8)
        cv2.circle(mask, (int(rng.integers(20, 92)), int(rng.integers(20, 76))), 11, 255, -1)
        image[mask > 0] = (200, 60, 60)
        cv2.imwrite(str(lesion_dir / "images" / f"l{i}.png"), image[..., ::-1])
        cv2.imwrite(str(lesion_dir / "masks" / f"l{i}.png"), mask)
        normal = rng.integers(90, 230, (64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(normal_dir / "images" / f"n{i}.png"), normal)
    return lesion_dir, normal_dir


@torch.no_grad()
def _reference_scores(model, dataset: DetectionDataset) -> tuple[np.ndarray, np.ndarray]:
    """One image at a time, straight through forward + postprocess."""
    model.eval()
    scores, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        probs = model.postprocess(model(item[0][None])).image_probs
        scores.append(1.0 - float(probs[0, 0]))
        labels.append(int(item[5]) > 0)
    return np.array(scores), np.array(labels)


def test_check_on_a_real_tiny_model_matches_a_direct_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=SIZE, weights_path="none")
    lesion_dir, normal_dir = _sites(tmp_path)
    lesion = scan_site(lesion_dir).records
    normal = scan_site(normal_dir).records
    cfg = EndoFedConfig.from_mapping({"image-size": SIZE, "batch-size": 4,
                                      "val-fraction": 0.5, "split-seed": 3})

    # reference: the held-out half, scored image by image
    val = split_records(lesion + normal, fractions=(0.5, 0.5), seed=3)["val"]
    lesion_ids = {id(r) for r in lesion}
    lesion_val = [r for r in val if id(r) in lesion_ids]
    normal_val = [r for r in val if id(r) not in lesion_ids]
    assert lesion_val and normal_val
    cross_ds = DetectionDataset(lesion_val + normal_val, image_size=SIZE, train=False)
    cross_s, cross_y = _reference_scores(model, cross_ds)
    plan = plan_crops(lesion_val, seed=11)
    crop_ds = DetectionDataset(plan.records, image_size=SIZE, train=False, loader=CropLoader())
    same_s, same_y = _reference_scores(model, crop_ds)
    assert plan.used_frames >= 2
    assert same_y.tolist() == [True, False] * plan.used_frames
    t = float(np.median(np.concatenate([cross_s, same_s])))  # both verdicts occur

    out = image_level_check(model, lesion, normal, cfg, threshold=t, seed=11,
                            avoid_overlays=False)
    assert out["threshold"] == t
    assert out["split"]["lesion_val_images"] == len(lesion_val)
    assert out["split"]["normal_val_images"] == len(normal_val)
    for key, s, y in (("cross_source", cross_s, cross_y), ("same_source", same_s, same_y)):
        got = out[key]
        assert got["num_lesion"] == int(y.sum()) and got["num_normal"] == int((~y).sum())
        assert got["tp"] == int(((s > t) & y).sum()) and got["tn"] == int(((s <= t) & ~y).sum())
        assert got["sensitivity"] == pytest.approx((s[y] > t).mean(), abs=1e-6)
        assert got["specificity"] == pytest.approx((s[~y] <= t).mean(), abs=1e-6)
        assert got["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert got["auc_binned"] == pytest.approx(roc_auc_score(y, s), abs=0.05)
    crops = out["same_source"]["crops"]
    assert crops["frames"] == len(lesion_val)
    assert crops["used_frames"] == plan.used_frames
    assert crops["used_frames"] + sum(crops["skipped"].values()) == crops["frames"]

    # without a threshold it is 0.5; split=False evaluates every record
    everything = image_level_check(model, lesion, normal, cfg, split=False, seed=11,
                                   avoid_overlays=False)
    assert everything["threshold"] == 0.5
    assert everything["split"]["lesion_val_images"] == len(lesion)
    assert everything["cross_source"]["num_normal"] == len(normal)
