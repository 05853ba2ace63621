"""``endofed predict`` / ``endofed evaluate`` use the threshold stored in the checkpoint."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from endofed.cli import main
from endofed.shared.build import dataset_for, loader_for, model_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.synthetic import write_site
from endofed.shared.inference import Predictor
from endofed.shared.metrics.operating_point import OperatingPoint
from endofed.shared.model import save_checkpoint
from endofed.simulations.central import pooled_records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consumers")
    site = tmp / "site"
    write_site(site, n_images=8, seed=4, size=64)
    cfg = EndoFedConfig.from_mapping({"preset": "tiny", "image-size": 64, "threads": 1,
                                      "class-names": "lesion"})
    torch.manual_seed(0)
    model = model_for(cfg).eval()
    old = save_checkpoint(tmp / "old.pt", model, extra={"class_names": ["lesion"]})
    # lesion probabilities and labels of the site's images, outside the code under test
    records = pooled_records([site], cfg)
    q, labels = [], []
    with torch.no_grad():
        for batch in loader_for(dataset_for(records, cfg, train=False), cfg, shuffle=False):
            q.append(1.0 - model.postprocess(model(batch.images)).image_probs[:, 0].numpy())
            labels.append(batch.image_labels.numpy())
    q = np.concatenate(q).astype(np.float64)
    # a bin edge strictly inside the spread, so some images fall on either side
    t = float(np.floor(np.median(q) * 1000) / 1000)
    point = OperatingPoint(rule="sensitivity:0.9", threshold=t, sensitivity=0.9,
                           specificity=0.5, num_positive=9, num_negative=9, score_bins=1000)
    new = save_checkpoint(tmp / "new.pt", model, extra={"class_names": ["lesion"],
                                                        "operating_point": point.to_dict()})
    return tmp, site, old, new, t, q, np.concatenate(labels) > 0


def test_old_checkpoint_falls_back_to_half_with_a_warning(setup, caplog):
    tmp, site, old, *_ = setup
    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_checkpoint(old, device=torch.device("cpu"))
    assert "old.pt" in caplog.text and "0.5" in caplog.text
    image = np.full((64, 64, 3), 120, np.uint8)
    pred = predictor.predict(image)
    assert pred.threshold == 0.5 and pred.threshold_rule == "default"
    assert pred.lesion == (pred.lesion_probability > 0.5)


def test_predict_uses_the_stored_threshold(setup):
    tmp, site, _, new, t, q, _ = setup
    out = tmp / "pred"
    assert main(["predict", str(new), str(site / "images"), "--out", str(out), "--no-overlay",
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["operating_point"]["threshold"] == t
    assert summary["operating_point"]["rule"] == "sensitivity:0.9"
    records = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "summary.json"]
    assert len(records) == summary["images"] > 0
    assert all(r["threshold"] == t and r["threshold_rule"] == "sensitivity:0.9" for r in records)
    for r in records:
        if abs(r["lesion_probability"] - t) > 1e-3:  # clear of rounding in the JSON
            assert r["lesion"] == (r["lesion_probability"] > t)
    # the images split around the median: the verdict is not constant
    assert 0 < summary["lesion_images"] < summary["images"]
    # (the dataset path and the predictor may resize differently: allow one image)
    assert summary["lesion_images"] == pytest.approx(int((q > t).sum()), abs=1)


def test_evaluate_reports_rates_at_the_stored_threshold(setup, capsys):
    tmp, site, _, new, t, q, lesion = setup
    out = tmp / "eval"
    assert main(["evaluate", str(new), str(site), "--out", str(out), "--device", "cpu"]) == 0
    op = json.loads((out / "metrics.json").read_text())["operating_point"]
    assert op["threshold"] == pytest.approx(t) and op["rule"] == "sensitivity:0.9"
    verdict = q > t + 1e-12
    if lesion.any():
        assert op["sensitivity"] == pytest.approx(verdict[lesion].mean())
    if (~lesion).any():
        assert op["specificity"] == pytest.approx((~verdict[~lesion]).mean())
    assert (op["num_positive"], op["num_negative"]) == (int(lesion.sum()), int((~lesion).sum()))
    report = (out / "report.md").read_text()
    assert "## Image-level operating point" in report and "`sensitivity:0.9`" in report
    assert f"lesion probability > {t:g}" in capsys.readouterr().out
