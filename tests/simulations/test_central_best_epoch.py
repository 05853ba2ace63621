"""Central training keeps the best epoch by validation mAP@0.5 and calibrates its threshold."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from endofed.shared.build import loader_for, train_val_datasets
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.synthetic import write_sites
from endofed.shared.engine import evaluate
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.model import load_model_checkpoint, read_checkpoint
from endofed.simulations.central import best_epoch, pooled_records, train_central

NAN = float("nan")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([NAN, 0.3, 0.5, 0.5, NAN], 3),  # nan never wins; a tie keeps the earlier epoch
        ([0.4, 0.2, 0.1], 1),
        ([None, None], 2),  # nothing finite (no ground-truth boxes): the last epoch
        ([None, 0.0, None], 2),
    ],
)
def test_best_epoch_rule(values, expected):
    rows = {e: {"val_map50": v} for e, v in enumerate(values, start=1)}
    assert best_epoch(rows) == expected


def test_model_pt_is_the_best_epoch_with_its_operating_point(tmp_path, caplog):
    write_sites(tmp_path / "data", sites=1, images_per_site=12, seed=0, size=64)
    site = tmp_path / "data" / "site_1"
    cfg = EndoFedConfig.from_mapping({
        "preset": "tiny", "image-size": 64, "batch-size": 4, "local-epochs": 3,
        "threads": 1, "amp": False, "val-fraction": 0.5, "augment": False,
        "threshold-rule": "sensitivity:0.9",
    })
    out = tmp_path / "central"
    with caplog.at_level(logging.INFO, logger="endofed.shared.engine.trainer"):
        result = train_central(cfg, [site], out, progress=False)
    # one epoch per fit call: the log counts against the whole run and does not read
    # as a resume after an interruption
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert [ln.split(":")[0] for ln in lines if " epoch " in ln] == [
        "central epoch 1/3", "central epoch 2/3", "central epoch 3/3"]
    assert not any("resuming" in ln for ln in lines)

    history = json.loads((out / "train_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    values = [NAN if r["val_map50"] is None else r["val_map50"] for r in history]
    finite = [v for v in values if not math.isnan(v)]
    expected = values.index(max(finite)) + 1 if finite else 3
    assert [r["best"] for r in history] == [e == expected for e in (1, 2, 3)]

    extra = read_checkpoint(result.model_path)["extra"]
    assert extra["epoch"] == expected == result.metrics["best_epoch"]
    op = extra["operating_point"]
    assert op["rule"] == "sensitivity:0.9"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["operating_point"]["threshold"] == op["threshold"]

    # Re-evaluate model.pt on the validation split, outside the code under test.
    _, val_set = train_val_datasets(pooled_records([site], cfg), cfg)
    model = load_model_checkpoint(result.model_path).eval()
    acc = MetricAccumulator(class_names=list(cfg.data.class_names),
                            morphology_names=list(cfg.data.morphology_names))
    evaluate(model, loader_for(val_set, cfg, shuffle=False), acc, device=torch.device("cpu"))
    again = acc.compute()["map50"]
    best_value = values[expected - 1]
    assert (math.isnan(again) and math.isnan(best_value)) or again == pytest.approx(best_value)

    p_normal, labels = [], []
    with torch.no_grad():
        for batch in loader_for(val_set, cfg, shuffle=False):
            post = model.postprocess(model(batch.images))
            p_normal.append(post.image_probs[:, 0].numpy())
            labels.append(batch.image_labels.numpy())
    q = 1.0 - np.concatenate(p_normal).astype(np.float64)
    lesion = np.concatenate(labels) > 0
    assert lesion.any(), "the validation split needs lesion images"
    t = op["threshold"]

    def sensitivity(threshold):
        return float((q[lesion] > threshold + 1e-9).mean())

    assert op["sensitivity"] == pytest.approx(sensitivity(t)) and sensitivity(t) >= 0.9
    if t < 1.0:  # the next bin edge up would miss too many lesion images
        assert sensitivity(t + 1.0 / op["score_bins"]) < 0.9
    if not lesion.all():
        assert op["specificity"] == pytest.approx(float((q[~lesion] <= t + 1e-9).mean()))

    # Resuming a finished run trains nothing and keeps the same best epoch and threshold.
    again_result = train_central(cfg, [site], out, progress=False)
    assert again_result.metrics["best_epoch"] == expected
    assert read_checkpoint(again_result.model_path)["extra"]["operating_point"] == op
