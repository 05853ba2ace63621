"""One evaluation per model: each hospital's val split, their pool, a held-out hospital."""

from __future__ import annotations

import torch

from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.model import build_model
from endofed.simulations.site_evaluator import SiteEvaluator
from endofed.simulations.virtual_sites import materialize_sites


def test_holdout_hospital_is_evaluated_on_all_its_images_outside_the_pool(tmp_path, tiny_spec):
    holdout_dir = tmp_path / "holdout"
    write_site(holdout_dir, n_images=5, seed=7, site_index=5, size=(128, 128))
    spec = tiny_spec(tmp_path / "exp", images_per_site=6, holdout_site=holdout_dir)
    cfg = spec.config(0)
    sites = materialize_sites(spec, cfg)
    holdout = harmonize_labels(scan_site(holdout_dir), cfg.data.class_names).records
    torch.manual_seed(0)
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    evaluator = SiteEvaluator(sites, holdout, torch.device("cpu"))
    metrics = evaluator(model, cfg)
    assert set(metrics) == {"site_1", "site_2", "pooled", "holdout"}
    assert metrics["holdout"]["num_images"] == 5
    n_val = sum(len(s.val) for s in sites)
    assert metrics["pooled"]["num_images"] == n_val
    assert sum(metrics[s.name]["num_images"] for s in sites) == n_val
