"""Research grid: same split for every arm, results/summary files, resume.

One module-scoped tiny grid (central only, 2 synthetic hospitals, 2 rounds, 64 px)
is extended by the resume test (local arm, through the CLI) and by the slow test
(a real Flower simulation of the fedavg arm, 1-3 minutes on a loaded CPU).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from endofed.cli import main as cli_main
from endofed.simulations.experiment import run_experiment
from endofed.simulations.experiment_spec import ExperimentError, parse_arms

SITES, ROUNDS, SEED = 2, 2, 0  # the tiny_spec fixture's (conftest.py)
EXPECTED_COLUMNS = [
    "arm", "dp", "seed", "model", "eval_site", "map50", "map", "dice_lesion", "dice", "iou", "auc",
    "sensitivity", "specificity", "accuracy", "f1", "epsilon", "num_images",
]
CLI_ARGS = [
    "--sites", str(SITES), "--images-per-site", "6", "--image-size", "64",
    "--batch-size", "4", "--rounds", str(ROUNDS), "--local-epochs", "1", "--preset", "tiny",
    "--seeds", str(SEED), "--dp", "none", "--no-progress", "--threads", "1",
]


def manifest_val_counts(out) -> dict[str, int]:
    counts = {}
    for m in sorted((out / "sites").glob("*/manifest.csv")):
        df = pd.read_csv(m)
        counts[m.parent.name] = int(df[df["split"] == "val"]["image"].nunique())
    return counts


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_spec):
    """A finished central-only grid (the cheap arm); other tests extend it."""
    out = tmp_path_factory.mktemp("experiment")
    spec = tiny_spec(out, arms=parse_arms(["central"]))
    assert (spec.sites, spec.rounds, spec.seeds) == (SITES, ROUNDS, [SEED])
    result = run_experiment(spec)
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
def test_federated_arm_uses_the_same_split_and_budget(grid, tiny_spec):
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


def test_changed_settings_are_refused(grid, tiny_spec):
    out, _ = grid
    with pytest.raises(ExperimentError, match="rounds"):
        run_experiment(tiny_spec(out, rounds=ROUNDS + 1, arms=parse_arms(["central"])))


def test_a_bad_strategy_knob_fails_before_any_arm_runs(tmp_path, tiny_spec):
    """fedprox without proximal-mu is refused up front, and nothing is written."""
    from endofed.shared.config import ConfigError

    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="proximal-mu"):
        run_experiment(tiny_spec(out, arms=parse_arms(["central", "fedprox"])))
    assert not out.exists()
