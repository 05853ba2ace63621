"""A real Flower simulation of 3 synthetic hospitals (private SuperLink, Ray runtime).

One module-scoped run of 2 rounds feeds several assertions, so the suite pays for
the federation once: run directory contents, exact server-side metric merging, and
resuming a finished run name with more rounds.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from endofed.client.site import synthetic_site_dir
from endofed.shared.build import loader_for, train_val_datasets
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import scan_site
from endofed.shared.engine import evaluate
from endofed.shared.metrics import MetricAccumulator, flat_scalars
from endofed.shared.model import load_model_checkpoint
from endofed.simulations.federated import run_simulation

RUN_CONFIG = {
    "preset": "tiny",
    "image-size": 64,
    "batch-size": 4,
    "local-epochs": 1,
    "synthetic-images-per-site": 10,
    "threads": 1,
    "num-server-rounds": 2,
    "seed": 3,
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = run_simulation(
        RUN_CONFIG, num_sites=3, runs_dir=runs, run_name="t", timeout=900
    )
    return runs, result.run_dir


def test_run_directory_has_checkpoints_metrics_and_report(federation):
    _, run_dir = federation
    assert (run_dir / "checkpoints" / "round_001.pt").exists()
    assert (run_dir / "checkpoints" / "round_002.pt").exists()
    assert (run_dir / "final_model.pt").exists()
    report = (run_dir / "report.md").read_text()
    assert "mAP@0.5" in report and "rounds.png" in report
    df = pd.read_csv(run_dir / "metrics.csv")
    assert list(df.columns[:2]) == ["round", "site"]
    assert set(df["round"]) == {1, 2}
    assert set(df["site"]) == {"global", "site_1", "site_2", "site_3"}
    for col in ("map50", "dice", "auc", "train-loss", "num_images"):
        assert col in df.columns
    # every site trained in every round and the global row saw all three
    assert (df[df.site == "global"]["sites-aggregated"] == 3).all()


def test_server_merged_metrics_equal_central_metrics_on_union(federation):
    runs, run_dir = federation
    cfg = EndoFedConfig.from_mapping({**RUN_CONFIG, "runs-dir": str(runs)})
    model = load_model_checkpoint(run_dir / "final_model.pt")
    acc = MetricAccumulator(class_names=list(cfg.data.class_names),
                            morphology_names=list(cfg.data.morphology_names))
    n_val = 0
    for pid in range(3):
        site = synthetic_site_dir(cfg, pid)
        index = harmonize_labels(scan_site(site), cfg.data.class_names)
        _, val_set = train_val_datasets(index.records, cfg)
        n_val += len(val_set)
        evaluate(model, loader_for(val_set, cfg, shuffle=False), acc,
                 device=torch.device("cpu"))
    central = flat_scalars(acc.compute())
    df = pd.read_csv(run_dir / "metrics.csv")
    merged = df[(df.site == "global") & (df["round"] == 2)].iloc[0]
    assert int(merged["num_images"]) == n_val > 0
    for key in ("map50", "map", "auc", "dice", "iou", "accuracy", "sensitivity",
                "specificity"):
        a, b = central[key], float(merged[key])
        assert (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b, abs=1e-6), key
    # and the merged value is not just the mean of the site values
    sites = df[(df.site != "global") & (df["round"] == 2)]
    assert len(sites) == 3


def test_same_run_name_resumes_from_last_checkpoint(federation):
    runs, run_dir = federation
    before = pd.read_csv(run_dir / "metrics.csv")
    run_simulation({**RUN_CONFIG, "num-server-rounds": 3}, num_sites=3, runs_dir=runs,
                   run_name="t", timeout=900)
    after = pd.read_csv(run_dir / "metrics.csv")
    assert set(after["round"]) == {1, 2, 3}
    # rounds 1-2 were not re-run: their rows are unchanged and not duplicated
    pd.testing.assert_frame_equal(
        after[after["round"] <= 2].reset_index(drop=True)[before.columns],
        before.reset_index(drop=True),
    )
    assert (run_dir / "checkpoints" / "round_003.pt").exists()


def test_stored_threshold_is_the_one_of_the_pooled_validation_images(federation):
    """final_model.pt carries the operating point of the last round, chosen from the
    merged site histograms: the threshold the pooled validation images give; model_best.pt
    is the round with the best global map50."""
    from endofed.shared.metrics.operating_point import choose_operating_point
    from endofed.shared.metrics.scalars import improves
    from endofed.shared.model import read_checkpoint

    runs, run_dir = federation
    cfg = EndoFedConfig.from_mapping({**RUN_CONFIG, "runs-dir": str(runs)})
    model = load_model_checkpoint(run_dir / "final_model.pt")
    acc = MetricAccumulator(class_names=list(cfg.data.class_names),
                            morphology_names=list(cfg.data.morphology_names))
    for pid in range(3):
        index = harmonize_labels(scan_site(synthetic_site_dir(cfg, pid)), cfg.data.class_names)
        _, val_set = train_val_datasets(index.records, cfg)
        evaluate(model, loader_for(val_set, cfg, shuffle=False), acc,
                 device=torch.device("cpu"))
    pooled = choose_operating_point(acc.state(), cfg.federation.threshold_rule).to_dict()
    final = read_checkpoint(run_dir / "final_model.pt")["extra"]
    stored = final["operating_point"]
    for key in ("rule", "threshold", "num_positive", "num_negative"):
        assert stored[key] == pooled[key], key
    df = pd.read_csv(run_dir / "metrics.csv")
    g = df[df.site == "global"].sort_values("round")
    assert float(g[g["round"] == final["rounds"]]["op_threshold"].iloc[0]) == pytest.approx(
        stored["threshold"])
    best_round, best = None, None
    for r, v in zip(g["round"], g["map50"]):
        if improves(float(v), best):
            best_round, best = int(r), float(v)
    extra = read_checkpoint(run_dir / "model_best.pt")["extra"]
    assert extra["round"] == best_round
    assert "## Saved models" in (run_dir / "report.md").read_text()
