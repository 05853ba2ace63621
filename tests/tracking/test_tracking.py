"""Experiment tracking (``--track mlflow|tensorboard``) on real runs, read back with the
backends' own readers and compared with the files EndoFed writes itself.

* central ``endofed train --track tensorboard``: the event files' scalars (TensorBoard's
  EventAccumulator) equal ``train_history.json``, epoch by epoch;
* a real Flower simulation (tiny preset, 2 synthetic sites, 2 rounds, 64 px) with
  ``tracking = "mlflow"``: MlflowClient on the sqlite store returns the run config as
  params and every numeric ``metrics.csv`` cell as the metric ``<site>/<column>`` at
  step ``round``, plus the report and model artifacts;
* the grid (``endofed simulate --track mlflow``) keeps one store in ``--out``;
* bad values and a missing backend are one line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from endofed.cli import main
from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.config.choices import TRACKERS
from endofed.shared.config.scope import check_node_keys
from endofed.shared.data.synthetic import write_sites
from endofed.shared.metrics import tracking
from endofed.simulations.experiment_spec import ExperimentSpec
from endofed.simulations.federated import run_simulation

TINY = ["--preset", "tiny", "--image-size", "64", "--batch-size", "4", "--threads", "1",
        "-c", "amp=false", "-c", "val-fraction=0.34"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_sites(root, sites=1, images_per_site=12, seed=0, size=64)
    return root / "site_1"


def _mlflow_client(store: Path):
    from mlflow.tracking import MlflowClient

    db = store / tracking.MLFLOW_DB
    assert db.is_file(), f"no MLflow store at {db}"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


# --- central + TensorBoard ---------------------------------------------------------


def test_central_tensorboard_scalars_equal_train_history(site, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "central"
    code = main(["train", str(site), "--out", str(out), "--epochs", "2", *TINY,
                 "--track", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    history = json.loads((out / "train_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    expected: dict[str, dict[int, float]] = {}
    for row in history:
        for key, value in row.items():
            if key in ("epoch", "best") or not isinstance(value, int | float):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            expected.setdefault(key, {})[row["epoch"]] = float(value)
    assert {"loss", "val_map50", "val_dice", "val_op_threshold"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, by_epoch in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == by_epoch.keys(), tag
        for step, value in by_epoch.items():  # event files hold float32
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)
    # settings as text; TensorBoard keeps no artifacts, and no MLflow store was made
    assert "settings/text_summary" in acc.Tags()["tensors"]
    assert not (out / "mlruns").exists()


def test_central_mlflow_resume_continues_the_same_run(site, tmp_path):
    from endofed.simulations.central import train_central

    out = tmp_path / "central"
    base = {"preset": "tiny", "image-size": 64, "batch-size": 4, "threads": 1, "amp": False,
            "val-fraction": 0.34, "tracking": "mlflow", "lr-schedule": "constant",
            "warmup-steps": 0}
    train_central(EndoFedConfig.from_mapping({**base, "local-epochs": 1}), [site], out,
                  progress=False)
    train_central(EndoFedConfig.from_mapping({**base, "local-epochs": 2}), [site], out,
                  progress=False)
    client = _mlflow_client(out / "mlruns")
    exp = client.get_experiment_by_name("endofed")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "a resumed central run must continue its MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "central"
    history = json.loads((out / "train_history.json").read_text())
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_map50")}
    assert got == {r["epoch"]: pytest.approx(r["val_map50"]) for r in history}
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert names == {"model/model.pt"}
    assert run.data.params["preset"] == "tiny" and run.data.params["tracking"] == "mlflow"


# --- federated simulation + MLflow ---------------------------------------------------

RUN_CONFIG = {
    "preset": "tiny", "image-size": 64, "batch-size": 4, "local-epochs": 1,
    "synthetic-images-per-site": 10, "threads": 1, "num-server-rounds": 2, "seed": 3,
    "amp": False, "tracking": "mlflow",
}


@pytest.fixture(scope="module")
def mlflow_federation(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = run_simulation(RUN_CONFIG, num_sites=2, runs_dir=runs, run_name="tracked",
                            timeout=900)
    return result.run_dir


@pytest.mark.slow  # a real 2-round simulation (about 75 s)
def test_simulation_mlflow_params_and_round_metrics_equal_metrics_csv(mlflow_federation):
    run_dir = mlflow_federation
    client = _mlflow_client(run_dir / "mlruns")
    exp = client.get_experiment_by_name("endofed")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["kind"] == "federated" and tags["strategy"] == "fedavg"
    assert tags[tracking.RUN_DIR_TAG] == str(run_dir.resolve())
    assert tags["study-id"] == json.loads((run_dir / "study.json").read_text())["study-id"]
    params = run.data.params
    for key, value in RUN_CONFIG.items():
        want = str(value).lower() if isinstance(value, bool) else str(value)
        assert params[key].lower() == want.lower(), key
    assert params["run-name"] == "tracked" and params["strategy"] == "fedavg"

    df = pd.read_csv(run_dir / "metrics.csv")
    assert set(df["site"]) == {"global", "site_1", "site_2"} and set(df["round"]) == {1, 2}
    expected: dict[str, dict[int, float]] = {}
    for _, row in df.iterrows():
        for col in df.columns[2:]:
            value = pd.to_numeric(row[col], errors="coerce")
            if pd.notna(value) and math.isfinite(float(value)):
                # MLflow keys allow letters, digits and _-. /: 'loc@0.5' is 'loc_0.5'
                name = f"{row['site']}/{col}".replace("@", "_")
                expected.setdefault(name, {})[int(row["round"])] = float(value)
    assert {"global/map50", "global/dice", "site_1/train-loss", "global/sites-aggregated"} \
        <= set(expected)
    assert set(run.data.metrics) == set(expected)
    for key, by_round in expected.items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(by_round, rel=1e-9, abs=1e-12), key
    assert expected["global/sites-aggregated"] == {1: 2.0, 2: 2.0}

    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/metrics.csv", "report/rounds.png"} <= report
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/final_model.pt" in model
    local = client.download_artifacts(run.info.run_id, "report/metrics.csv",
                                      str(run_dir / "_dl"))
    assert Path(local).read_bytes() == (run_dir / "metrics.csv").read_bytes()


# --- the grid -----------------------------------------------------------------------


def test_grid_keeps_one_store_with_one_tagged_run_per_arm_and_seed(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["simulate", "--out", str(out), "--arms", "central,local", "--sites", "2",
            "--rounds", "1", "--preset", "tiny", "--image-size", "64",
            "--images-per-site", "8", "--batch-size", "4", "--seeds", "0,1",
            "--threads", "1", "--no-progress"]
    code = main([*argv, "--track", "mlflow"])
    assert code == 0, capsys.readouterr().err
    client = _mlflow_client(out / "mlruns")
    exp = client.get_experiment_by_name(out.name)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"central_none_0", "central_none_1", "local_none_0", "local_none_1"}
    for name, run in runs.items():
        arm, _, seed = name.split("_")
        assert run.data.tags["arm"] == arm and run.data.tags["seed"] == seed, name
        assert run.data.tags["kind"] == arm and run.info.status == "FINISHED"
    # the grid's evaluation of each model is in its run, equal to results.csv
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 3 + 2 * 2 * 3  # central: 1 model, local: 2; 3 eval sites
    for _, row in results.iterrows():
        run = runs[f"{row['arm']}_none_{row['seed']}"]
        prefix = "eval" if row["model"] == "global" else f"eval/{row['model']}"
        for metric in ("map50", "dice", "num_images"):
            if pd.notna(row[metric]):
                got = run.data.metrics[f"{prefix}/{row['eval_site']}/{metric}"]
                assert got == pytest.approx(float(row[metric])), (row["arm"], metric)
    local = runs["local_none_0"].data.metrics
    assert {"site_1/loss", "site_2/loss"} <= set(local)
    # tracking is not a setting that changes results: the grid resumes without it
    settings = json.loads((out / "experiment.json").read_text())
    assert "tracking" not in settings["extra_config"]
    assert main(argv) == 0, capsys.readouterr().err


def test_grid_federated_arms_get_the_grid_store(tmp_path):
    spec = ExperimentSpec(out=tmp_path, extra_config={"tracking": "tensorboard"})
    mapping = spec.base_mapping(0)
    assert mapping["tracking-dir"] == str(tmp_path.resolve())
    assert tracking.store_dir("tensorboard", tmp_path / "runs" / "fedavg_none_0",
                              tmp_path, "fedavg_none_0") \
        == tmp_path / "tensorboard" / "fedavg_none_0"
    assert "tracking-dir" not in ExperimentSpec(out=tmp_path).base_mapping(0)


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["train", "DATA", "--out", "OUT"],
    ["simulate", "--out", "OUT"],
    ["demo", "--out", "OUT"],
])
def test_unknown_track_value_is_one_line(command, site, tmp_path, capsys):
    argv = [str(site) if a == "DATA" else str(tmp_path / "o") if a == "OUT" else a
            for a in command]
    code = main([*argv, "--track", "mlfow"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "'mlfow'" in err and "mlflow" in err and "tensorboard" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_missing_backend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(tracking.TrackingError) as exc:
        tracking.open_tracker("mlflow", Path("unused"), run_name="x")
    message = str(exc.value)
    assert "\n" not in message and "pip install endofed[tracking]" in message
    assert isinstance(exc.value, ConfigError)  # a user error: exit 2 on the CLI


def test_config_key_is_strict_and_the_coordinators():
    assert set(TRACKERS) == set(tracking.BACKENDS)
    assert EndoFedConfig.from_mapping({}).federation.tracking == "none"
    with pytest.raises(ConfigError, match="tracking"):
        EndoFedConfig.from_mapping({"tracking": "wandb"})
    with pytest.raises(ConfigError, match="coordinator"):
        check_node_keys(["tracking"])
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    import tomllib

    config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert config["tracking"] == "none" and config["tracking-dir"] == ""


def test_round_scalars_skip_text_and_empty_cells():
    rows = [{"round": 3, "site": "global", "map50": 0.5, "sites-aggregated": 2},
            {"round": 3, "site": "st mary's", "train-loss": float("nan"), "declined": True,
             "reason": "budget"}]
    assert tracking.round_scalars(rows) == {
        "global/map50": 0.5, "global/sites-aggregated": 2.0, "st mary_s/declined": 1.0,
    }
