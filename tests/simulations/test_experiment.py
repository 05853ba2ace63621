"""Research grid: same split for every arm, results/summary files, resume, device shift.

One module-scoped tiny grid (central only, 2 synthetic hospitals, 2 rounds, 64 px)
is extended by the resume test (local arm, through the CLI) and by the slow test
(a real Flower simulation of the fedavg arm, 1-3 minutes on a loaded CPU).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from endofed.cli import main as cli_main
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.site import load_sample, scan_site
from endofed.simulations.experiment import (
    ExperimentError,
    ExperimentSpec,
    flower_site_names,
    materialize_sites,
    parse_arms,
    parse_dp,
    run_experiment,
)

SITES, ROUNDS, SEED = 2, 2, 0
EXPECTED_COLUMNS = [
    "arm", "dp", "seed", "model", "eval_site", "map50", "map", "dice", "iou", "auc",
    "sensitivity", "specificity", "accuracy", "f1", "epsilon", "num_images",
]
CLI_ARGS = [
    "--sites", str(SITES), "--images-per-site", "6", "--image-size", "64",
    "--batch-size", "4", "--rounds", str(ROUNDS), "--local-epochs", "1", "--preset", "tiny",
    "--seeds", str(SEED), "--dp", "none", "--no-progress", "--threads", "1",
]


def tiny_spec(out, **kw) -> ExperimentSpec:
    base = dict(out=out, sites=SITES, images_per_site=6, image_size=64, batch_size=4,
                rounds=ROUNDS, local_epochs=1, preset="tiny", seeds=[SEED], dp=[0.0],
                extra_config={"threads": 1}, progress=False, timeout=900)
    base.update(kw)
    return ExperimentSpec(**base)


def manifest_val_counts(out) -> dict[str, int]:
    counts = {}
    for m in sorted((out / "sites").glob("*/manifest.csv")):
        df = pd.read_csv(m)
        counts[m.parent.name] = int(df[df["split"] == "val"]["image"].nunique())
    return counts


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A finished central-only grid (the cheap arm); other tests extend it."""
    out = tmp_path_factory.mktemp("experiment")
    result = run_experiment(tiny_spec(out, arms=parse_arms(["central"])))
    return out, result


def test_results_have_one_row_per_eval_site_on_the_materialised_val_splits(grid):
    out, result = grid
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == EXPECTED_COLUMNS
    assert result.ran == ["central_none_0"] and result.skipped == []
    sub = df[df["arm"] == "central"].set_index("eval_site")
    assert sorted(sub.index) == ["pooled", "site_1", "site_2"]
    assert (sub["dp"] == "none").all() and (sub["seed"] == SEED).all()
    assert (sub["model"] == "global").all()
    for col in ("map50", "map", "dice", "iou", "sensitivity", "accuracy", "f1"):
        assert sub[col].between(0, 1).all(), col
    val = manifest_val_counts(out)
    assert sum(val.values()) > 0
    for site, n in val.items():
        assert sub.loc[site, "num_images"] == n
    assert sub.loc["pooled", "num_images"] == sum(val.values())


def test_central_gets_the_federated_epoch_budget(grid):
    out, _ = grid
    history = json.loads((out / "arms" / "central_none_0" / "train_history.json").read_text())
    assert len(history) == ROUNDS * 1  # rounds x local-epochs


def test_summary_and_plots_written(grid):
    out, result = grid
    summary = (out / "summary.md").read_text()
    assert "| central | none | 1 |" in summary
    assert "mAP@0.5" in summary and "Dice" in summary
    assert "| site_1 |" in summary and "| site_2 |" in summary
    assert result.plots and all(p.stat().st_size > 0 for p in result.plots)
    assert (out / "plots" / "per_site_map50.png").exists()
    for p in result.plots:
        assert p.name in summary


def test_interrupted_grid_resumes_without_rerunning_finished_arms(grid, capsys):
    out, _ = grid
    central = out / "done" / "central_none_0.json"
    before = central.stat().st_mtime_ns
    code = cli_main(["simulate", *CLI_ARGS, "--arms", "central,local", "--out", str(out)])
    assert code == 0
    assert central.stat().st_mtime_ns == before
    assert "ran 1 arm(s), 1 already done" in capsys.readouterr().out
    assert (out / "done" / "local_none_0.json").exists()
    df = pd.read_csv(out / "results.csv")
    local = df[df["arm"] == "local"]
    # each hospital's local model is evaluated on every hospital and the pool
    assert sorted(local["model"].unique()) == ["site_1", "site_2"]
    assert len(local) == SITES * (SITES + 1)
    assert len(df[df["arm"] == "central"]) == SITES + 1
    assert "| local | none | 1 |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_federated_arm_uses_the_same_split_and_budget(grid):
    """A real Flower simulation (about 1-3 min here) added to the finished grid."""
    out, _ = grid
    central = out / "done" / "central_none_0.json"
    before = central.stat().st_mtime_ns
    result = run_experiment(tiny_spec(out, arms=parse_arms(["central", "fedavg"])))
    assert "fedavg_none_0" in result.ran and "central_none_0" in result.skipped
    assert central.stat().st_mtime_ns == before
    metrics = pd.read_csv(out / "runs" / "fedavg_none_0" / "metrics.csv")
    assert set(metrics["round"]) == set(range(1, ROUNDS + 1))
    val = manifest_val_counts(out)
    merged = metrics[(metrics["site"] == "global") & (metrics["round"] == ROUNDS)].iloc[0]
    # the clients evaluated on exactly the val images of the central evaluation
    assert int(merged["num_images"]) == sum(val.values())
    df = pd.read_csv(out / "results.csv")
    fed = df[df["arm"] == "fedavg"].set_index("eval_site")
    assert sorted(fed.index) == ["pooled", "site_1", "site_2"]
    assert fed.loc["pooled", "num_images"] == sum(val.values())
    assert (out / "plots" / "rounds_map50.png").stat().st_size > 0
    assert "| fedavg | none | 1 |" in (out / "summary.md").read_text()


def test_changed_settings_are_refused(grid):
    out, _ = grid
    with pytest.raises(ExperimentError, match="rounds"):
        run_experiment(tiny_spec(out, rounds=ROUNDS + 1, arms=parse_arms(["central"])))


def test_materialised_sites_are_stable_and_match_flower_partitions(tmp_path):
    spec = tiny_spec(tmp_path, sites=3, images_per_site=8, partition="iid")
    cfg = spec.config(0)
    sites = materialize_sites(spec, cfg)
    assert [s.name for s in sites] == ["site_1", "site_2", "site_3"]
    assert all(len(s.val) > 0 and len(s.train) > 0 for s in sites)
    sizes = [len(s.records) for s in sites]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == 24
    # train and val never share a patient
    for s in sites:
        assert not {r.group_id for r in s.train} & {r.group_id for r in s.val}
    # the ClientApp's `partition=source` over the site folders gives site i to node i
    assert flower_site_names(sites) == {f"site_{i}": f"site_{i}" for i in (1, 2, 3)}
    # a second call reuses the folders: same records, same split
    again = materialize_sites(spec, cfg)
    for a, b in zip(sites, again):
        assert [r.image_path for r in a.val] == [r.image_path for r in b.val]
        assert [r.image_path for r in a.train] == [r.image_path for r in b.train]


def test_device_shift_changes_colours_not_annotations(tmp_path):
    plain = materialize_sites(tiny_spec(tmp_path / "plain", images_per_site=4), tiny_spec(
        tmp_path).config(0))
    spec = tiny_spec(tmp_path / "shift", images_per_site=4, device_shift=True)
    shifted = materialize_sites(spec, spec.config(0))
    means = []
    for a, b in zip(plain, shifted):
        assert len(a.records) == len(b.records)
        for ra, rb in zip(a.records, b.records):
            assert rb.image_path != ra.image_path and rb.image_path.parent.name == "images"
            np.testing.assert_allclose(ra.boxes, rb.boxes)
            sa, sb = load_sample(ra), load_sample(rb)
            assert sa.image.shape == sb.image.shape
            np.testing.assert_array_equal(sa.mask, sb.mask)
            assert np.abs(sa.image.astype(int) - sb.image.astype(int)).mean() > 1.0
        means.append(np.mean([load_sample(r).image.reshape(-1, 3).mean(0)
                              for r in b.records], axis=0))
    # the two hospitals got different camera colour profiles
    assert np.abs(means[0] - means[1]).max() > 1.0


def test_arm_and_dp_parsing():
    arms = parse_arms(["central", "fedavg", "FedProx"], preprocess_ablation=True)
    assert [a.name for a in arms] == ["central", "fedavg", "fedavg+prep", "fedprox",
                                      "fedprox+prep"]
    assert [a.kind for a in arms] == ["central", "federated", "federated", "federated",
                                      "federated"]
    assert arms[2].preprocess and not arms[1].preprocess and arms[2].strategy == "fedavg"
    with pytest.raises(ExperimentError, match="unknown arm 'fedfoo'"):
        parse_arms(["fedfoo"])
    assert parse_dp(["none", "8", "1"]) == [0.0, 8.0, 1.0]
    with pytest.raises(ExperimentError):
        parse_dp(["-1"])


def test_holdout_hospital_is_evaluated_on_all_its_images_outside_the_pool(tmp_path):
    import torch

    from endofed.shared.data.synthetic import write_site
    from endofed.shared.model import build_model
    from endofed.simulations.experiment import SiteEvaluator

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


def test_utility_vs_epsilon_plot_only_with_dp_runs(tmp_path):
    from endofed.simulations.experiment import write_plots

    def rows(arm, dp, map50):
        return [{"arm": arm, "dp": dp, "seed": 0, "model": "global", "eval_site": site,
                 "map50": map50, "dice": 0.5, "epsilon": float("nan")}
                for site in ("site_1", "pooled")]

    plain = pd.DataFrame(rows("central", "none", 0.6) + rows("fedavg", "none", 0.5))
    names = [p.name for p in write_plots(tmp_path, plain, [], ["central", "fedavg"])]
    assert "utility_vs_epsilon.png" not in names
    assert "per_site_map50.png" in names
    with_dp = pd.concat([plain, pd.DataFrame(rows("fedavg", "8", 0.4) + rows("fedavg", "1", 0.2))])
    names = [p.name for p in write_plots(tmp_path, with_dp, [], ["central", "fedavg"])]
    assert "utility_vs_epsilon.png" in names
    assert (tmp_path / "plots" / "utility_vs_epsilon.png").stat().st_size > 0
