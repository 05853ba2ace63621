"""``endofed train -c dp-epsilon=8`` trains with DP-SGD through the privacy entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from endofed.cli import main
from endofed.privacy.accounting import compute_epsilon
from endofed.shared.build import model_for, train_val_datasets
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.synthetic import write_sites
from endofed.shared.engine.trainer import ResumeError
from endofed.simulations.central import pooled_records, train_central

COMMON = ["--preset", "tiny", "--image-size", "64", "--batch-size", "4", "--threads", "1",
          "--epochs", "1", "-c", "val-fraction=0.34", "-c", "seed=5"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_sites(root, sites=1, images_per_site=12, seed=0, size=64)
    return root / "site_1"


@pytest.fixture(scope="module")
def runs(site, tmp_path_factory) -> dict[str, Path]:
    """One epoch with dp-epsilon=8 and the same command without DP."""
    root = tmp_path_factory.mktemp("runs")
    out = {"dp": root / "dp", "plain": root / "plain"}
    assert main(["train", str(site), "--out", str(out["dp"]), *COMMON,
                 "-c", "dp-epsilon=8", "-c", "dp-batch-size=4"]) == 0
    assert main(["train", str(site), "--out", str(out["plain"]), *COMMON]) == 0
    return out


def _model(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def test_dp_epsilon_trains_with_dp_sgd_and_reports_epsilon(runs, site):
    out = runs["dp"]
    history = json.loads((out / "train_history.json").read_text())
    assert len(history) == 1
    spent = history[0]["epsilon_spent"]
    assert 0 < spent <= 8.0

    # The ledger in --out booked the epoch; its charge, recomputed with the accountant
    # directly, is the epsilon the history reports.
    ledger = json.loads((out / "privacy-ledger.json").read_text())
    assert ledger["site"] == "central" and ledger["epsilon_target"] == 8.0
    (entry,) = ledger["rounds"]
    assert entry["status"] == "done" and entry["steps"] >= 1
    assert entry["noise_multiplier"] > 0.3  # calibrated noise, not a plain SGD step
    # Expected logical batch 4 (dp-batch-size): q = 1 / round(N / 4).
    cfg = EndoFedConfig.from_mapping({"image-size": 64, "val-fraction": 0.34})
    n = len(train_val_datasets(pooled_records([site], cfg), cfg)[0])
    assert n >= 6 and entry["sample_rate"] == pytest.approx(1 / round(n / 4))
    again = compute_epsilon([(entry["noise_multiplier"], entry["sample_rate"], entry["steps"])],
                            delta=1e-5, accountant="prv")
    assert spent == pytest.approx(again, rel=1e-6)
    assert history[0]["dp_noise_multiplier"] == entry["noise_multiplier"]

    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    assert privacy["epsilon_spent"] == pytest.approx(spent)
    assert privacy["grad_sample_module"] == "GradSampleModule"
    assert privacy["finetune"] == "local"  # finetune=auto resolves to local under DP
    assert "epsilon spent" in (out / "report.md").read_text()


def test_dp_model_differs_from_the_plain_run_and_keeps_the_body_frozen(runs):
    dp, plain = _model(runs["dp"]), _model(runs["plain"])
    assert dp.keys() == plain.keys()
    heads = [k for k in dp if not k.startswith("backbone.body.") and dp[k].is_floating_point()]
    assert any(not torch.equal(dp[k], plain[k]) for k in heads)
    # finetune local: the backbone body is the seeded initial model's, untouched by DP-SGD.
    cfg = EndoFedConfig.from_mapping({"preset": "tiny", "image-size": 64, "dp-epsilon": 8})
    torch.manual_seed(5)
    initial = model_for(cfg).state_dict()
    body = [k for k in dp if k.startswith("backbone.body.")]
    assert body and all(torch.equal(dp[k], initial[k]) for k in body)
    assert not all(torch.equal(plain[k], initial[k]) for k in body)


def test_resume_with_other_dp_settings_is_refused(runs, site):
    out = runs["dp"]
    ledger_before = (out / "privacy-ledger.json").read_text()
    cfg = EndoFedConfig.from_mapping({
        "preset": "tiny", "image-size": 64, "batch-size": 4, "threads": 1, "local-epochs": 2,
        "val-fraction": 0.34, "seed": 5, "dp-epsilon": 4, "dp-batch-size": 4,
    })
    with pytest.raises(ResumeError, match=r"dp-sgd\.dp-epsilon 8\.0 \(checkpoint\) vs 4\.0"):
        train_central(cfg, [site], out, progress=False)
    plain = cfg.replace(privacy=EndoFedConfig.from_mapping({}).privacy)
    with pytest.raises(ResumeError, match="--no-resume"):
        train_central(plain, [site], out, progress=False)
    assert (out / "privacy-ledger.json").read_text() == ledger_before  # nothing charged
