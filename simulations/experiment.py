"""Research grid: central vs local-only vs federated (x DP) on one fixed split.

Every arm of an experiment trains on the **same virtual hospitals**
(:mod:`~endofed.simulations.virtual_sites`) with the **same train/val split** and
the **same training budget**, and every final model is evaluated by one
:class:`~endofed.simulations.site_evaluator.SiteEvaluator`:

* ``central``: ``rounds x local-epochs`` epochs on the pooled training data.
* ``local``: each hospital alone, ``rounds x local-epochs`` epochs on its own
  training data; each of the K local models is evaluated on every hospital.
* federated arms (``fedavg``, ``fedprox``, ``fedadam``, ``fedmedian``, ... any
  strategy of :mod:`endofed.server.strategies`): a real Flower simulation of
  ``rounds`` rounds of ``local-epochs`` epochs per hospital, optionally with per-site
  DP-SGD (``dp-epsilon``); ``arm+prep`` runs it with the site preprocessing enabled.
  The runs read the site folders (run config ``data-path`` = the site folders,
  ``partition=source``).

The grid is resumable: each finished (arm, dp, seed) writes
``done/<arm>_<dp>_<seed>.json`` with its result rows and is never re-run; an
interrupted central/local arm resumes from its epoch checkpoint and an interrupted
federated arm from its last round (same run name). ``experiment.json`` holds the
settings that fix the hospitals and the budget; a resume with other settings is
refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from flwr.app import ArrayRecord
from tqdm.auto import tqdm

from endofed.server.strategies import build_strategy
from endofed.shared.build import dataset_for, loader_for, model_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.engine import Trainer, configure_threads, resolve_device
from endofed.shared.metrics.tracking import metric_name, open_tracker, scalar
from endofed.shared.model import load_model_checkpoint, save_checkpoint
from endofed.shared.util.atomic import atomic_write_json
from endofed.simulations.central import pooled_records, train_central
from endofed.simulations.experiment_plots import write_plots
from endofed.simulations.experiment_results import result_rows, results_frame, write_results_csv
from endofed.simulations.experiment_spec import (
    FEDERATED,
    ExperimentError,
    ExperimentSpec,
    Job,
    dp_label,
    grid,
)
from endofed.simulations.experiment_summary import write_summary
from endofed.simulations.federated import run_simulation
from endofed.simulations.site_evaluator import POOLED, SiteEvaluator
from endofed.simulations.virtual_sites import VirtualSite, flower_site_names, materialize_sites

log = logging.getLogger(__name__)

SETTINGS_FILE = "experiment.json"


@dataclass
class ExperimentResult:
    """A finished (or resumed) grid: its table, summary, plots and what ran now."""

    out_dir: Path
    results: pd.DataFrame
    summary_path: Path
    plots: list[Path]
    ran: list[str]
    skipped: list[str]


def check_settings(spec: ExperimentSpec) -> None:
    """Record ``spec.settings()`` in ``out``, or refuse a resume with other settings."""
    path = spec.out / SETTINGS_FILE
    settings = spec.settings()
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ExperimentError(
                f"{spec.out} holds an experiment with other settings ("
                + "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                + "): results would not be comparable; use another --out"
            )
    else:
        atomic_write_json(path, settings, indent=1)


def _marker(spec: ExperimentSpec, job: Job) -> Path:
    """``done/<job key>.json``: the job's result rows; its existence means done."""
    return spec.out / "done" / f"{job.key}.json"


def collect_results(spec: ExperimentSpec, jobs: Sequence[Job]) -> pd.DataFrame:
    """The result rows of every finished job of ``jobs``, in grid order."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        if _marker(spec, job).exists():
            rows += json.loads(_marker(spec, job).read_text())["rows"]
    return results_frame(rows)


def check_strategies(spec: ExperimentSpec) -> None:
    """Build every federated arm's strategy once, so a bad knob (fedprox without
    ``proximal-mu``) fails before the first arm runs, not inside a ServerApp hours later."""
    for arm in spec.arms:
        if arm.kind == FEDERATED:
            build_strategy(spec.config(spec.seeds[0], strategy=arm.strategy), ArrayRecord())


def run_experiment(spec: ExperimentSpec) -> ExperimentResult:
    """Run (or resume) the grid and write ``results.csv``, ``summary.md`` and plots."""
    spec.out = Path(spec.out).resolve()
    spec.validate()
    check_strategies(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    check_settings(spec)
    base_cfg = spec.config(spec.seeds[0])
    sites = materialize_sites(spec, base_cfg)
    if any(a.kind == FEDERATED for a in spec.arms):
        mapping = flower_site_names(sites)
        if any(k != v for k, v in mapping.items()):
            log.warning("Flower site names differ from folder names: %s", mapping)
    holdout = pooled_records([Path(spec.holdout_site)], base_cfg) if spec.holdout_site else None
    configure_threads(base_cfg.train.threads)
    evaluator = SiteEvaluator(sites, holdout, resolve_device(base_cfg.train.device))
    runner = ArmRunner(spec, sites, evaluator)
    (spec.out / "done").mkdir(exist_ok=True)

    jobs = grid(spec)
    ran, skipped = [], []
    bar = tqdm(jobs, desc="experiment", unit="arm", disable=not spec.progress)
    for i, job in enumerate(bar):
        marker = _marker(spec, job)
        bar.set_postfix_str(job.key)
        if marker.exists():
            log.info("[%d/%d] %s: done already (%s)", i + 1, len(jobs), job.key, marker.name)
            skipped.append(job.key)
            continue
        log.info("[%d/%d] %s: running", i + 1, len(jobs), job.key)
        t0 = time.perf_counter()
        result = runner.run(job)
        seconds = time.perf_counter() - t0
        atomic_write_json(marker, {"arm": job.arm.name, "dp": dp_label(job.dp),
                                   "seed": job.seed, "seconds": seconds, **result},
                          indent=1, default=float)
        pooled = next(r for r in result["rows"] if r["eval_site"] == POOLED)
        log.info("[%d/%d] %s: done in %.0f s, pooled map50 %.4f dice %.4f auc %.4f",
                 i + 1, len(jobs), job.key, seconds, pooled["map50"], pooled["dice"],
                 pooled["auc"])
        ran.append(job.key)
        write_results_csv(spec.out / "results.csv", collect_results(spec, jobs))
    bar.close()

    df = collect_results(spec, jobs)
    write_results_csv(spec.out / "results.csv", df)
    markers = [json.loads(_marker(spec, j).read_text()) for j in jobs]
    plots = write_plots(spec.out, df, markers, [a.name for a in spec.arms])
    summary = write_summary(spec, df, plots, sites)
    return ExperimentResult(spec.out, df, summary, plots, ran, skipped)


def finished_run(run_dir: Path, rounds: int) -> bool:
    """Whether the federated run in ``run_dir`` reached ``rounds`` and saved its model."""
    metrics = run_dir / "metrics.csv"
    if not ((run_dir / "final_model.pt").exists() and metrics.exists()):
        return False
    df = pd.read_csv(metrics)
    return bool(len(df)) and int(df["round"].max()) >= rounds


def rounds_with_updates(run_dir: Path) -> int:
    """How many rounds of the run in ``run_dir`` aggregated at least one site's update."""
    df = pd.read_csv(run_dir / "metrics.csv")
    if "sites-aggregated" not in df.columns:
        return 0
    aggregated = pd.to_numeric(df.loc[df["site"] == "global", "sites-aggregated"],
                               errors="coerce").fillna(0)
    return int((aggregated > 0).sum())


def epsilon_spent(run_dir: Path) -> float:
    """Largest epsilon any site spent by the last round (``nan`` if not reported)."""
    df = pd.read_csv(run_dir / "metrics.csv")
    if "epsilon-spent" not in df.columns:
        return float("nan")
    sites = df[df["site"] != "global"]
    return float(sites["epsilon-spent"].max()) if len(sites) else float("nan")


class ArmRunner:
    """Train one job's model(s) (resuming what an interrupted run left) and evaluate them.

    Each method returns ``{"rows": result rows, "run_dir": where the run lives}``.
    """

    def __init__(self, spec: ExperimentSpec, sites: list[VirtualSite],
                 evaluator: SiteEvaluator) -> None:
        self.spec = spec
        self.sites = sites
        self.evaluate = evaluator

    def run(self, job: Job) -> dict[str, Any]:
        """Dispatch on the arm's kind: :meth:`central`, :meth:`local` or :meth:`federated`."""
        return getattr(self, job.arm.kind)(job)

    def arm_dir(self, job: Job) -> Path:
        """Folder of a central or local job."""
        return self.spec.out / "arms" / job.run_name

    def budget_config(self, job: Job) -> EndoFedConfig:
        """Central/local: all ``rounds x local-epochs`` epochs in one go."""
        return self.spec.config(job.seed, preprocess=job.arm.preprocess,
                                **{"local-epochs": self.spec.rounds * self.spec.local_epochs})

    def central(self, job: Job) -> dict[str, Any]:
        """One model on the pooled training data of all hospitals."""
        cfg = self.budget_config(job)
        records = [r for s in self.sites for r in s.records]
        result = train_central(cfg, [s.path for s in self.sites], self.arm_dir(job),
                               records=records, resume=True, progress=self.spec.progress)
        model = load_model_checkpoint(result.model_path)
        rows = result_rows(job.arm.name, dp_label(0), job.seed, "global",
                           self.evaluate(model, cfg))
        self.track_results(job, cfg, result.out_dir, rows, kind="central")
        return {"rows": rows, "run_dir": str(result.out_dir)}

    def local(self, job: Job) -> dict[str, Any]:
        """One model per hospital on its own training data, each evaluated everywhere."""
        cfg = self.budget_config(job)
        configure_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        rows: list[dict[str, Any]] = []
        tracker = self.tracker(job, cfg, self.arm_dir(job), kind="local")
        for site in self.sites:
            d = self.arm_dir(job) / site.name
            path = d / "model.pt"
            if not path.exists():
                torch.manual_seed(cfg.train.seed)
                model = model_for(cfg).to(device)
                train_set = dataset_for(site.train, cfg, train=True)
                log.info("local %s: %d training images, %d epochs on %s", site.name,
                         len(train_set), cfg.train.epochs, device)
                fit = Trainer(model, cfg.train, device=device, progress=self.spec.progress).fit(
                    loader_for(train_set, cfg, shuffle=True), checkpoint_dir=d / "checkpoints",
                    resume=True, desc=f"local {site.name}",
                )
                for e in fit.epochs:  # this site's training loss per epoch
                    tracker.log_metrics({f"{metric_name(site.name)}/{k}": v for k, v in (
                        ("loss", e.loss), ("cls", e.cls), ("reg", e.reg), ("seg", e.seg),
                        ("images_per_s", e.images_per_second))}, step=e.epoch + 1)
                save_checkpoint(path, model, extra={"class_names": list(cfg.data.class_names)})
            model = load_model_checkpoint(path)
            rows += result_rows(job.arm.name, dp_label(0), job.seed, site.name,
                                self.evaluate(model, cfg))
        log_results(tracker, rows, step=cfg.train.epochs)
        tracker.close()
        return {"rows": rows, "run_dir": str(self.arm_dir(job))}

    def federated(self, job: Job) -> dict[str, Any]:
        """A Flower simulation with one SuperNode per hospital (resumes its last round)."""
        spec = self.spec
        runs_dir = (spec.out / "runs").resolve()
        run_dir = runs_dir / job.run_name
        k = len(self.sites)
        run_config = {
            **spec.base_mapping(job.seed, preprocess=job.arm.preprocess),
            "strategy": job.arm.strategy,
            "num-server-rounds": spec.rounds,
            "dp-epsilon": job.dp,
            "data-path": ",".join(str(s.path) for s in self.sites),
            "partition": "source",
            "state-dir": str(run_dir / "state"),
            "fraction-train": 1.0,
            "fraction-evaluate": 1.0,
            "min-train-nodes": k,
            "min-evaluate-nodes": k,
            "min-available-nodes": k,
        }
        if not finished_run(run_dir, spec.rounds):
            run_simulation(run_config, num_sites=k, runs_dir=runs_dir, run_name=job.run_name,
                           num_cpus_per_client=spec.num_cpus_per_client, timeout=spec.timeout)
        if rounds_with_updates(run_dir) == 0:
            # Every reply refused or failed: the "final" model is the initial one, and
            # recording it as the arm's result would be a silent failure.
            raise ExperimentError(
                f"{job.run_name}: no site's update was aggregated in any of the "
                f"{spec.rounds} rounds (every reply refused or failed); see "
                f"{run_dir / 'logs'} and the events in {run_dir / 'metrics.csv'}. Delete "
                f"{run_dir} and rerun to retry this arm"
            )
        cfg = spec.config(job.seed, preprocess=job.arm.preprocess)
        model = load_model_checkpoint(run_dir / "final_model.pt")
        eps = epsilon_spent(run_dir) if job.dp > 0 else float("nan")
        rows = result_rows(job.arm.name, dp_label(job.dp), job.seed, "global",
                           self.evaluate(model, cfg), epsilon=eps)
        self.track_results(job, spec.config(job.seed, preprocess=job.arm.preprocess,
                                            **{"dp-epsilon": job.dp}),
                           run_dir, rows, kind="federated")
        return {"rows": rows, "run_dir": str(run_dir)}

    def tracker(self, job: Job, cfg: EndoFedConfig, run_dir: Path, *, kind: str,
                params: bool = True):
        """The job's tracking run (``--track``; a no-op without), tagged with the arm."""
        tracker = open_tracker(
            cfg.federation.tracking, run_dir, run_name=job.run_name,
            tracking_dir=cfg.federation.tracking_dir,
            tags={"kind": kind, "arm": job.arm.name, "dp-epsilon": job.dp, "seed": job.seed},
        )
        if params:
            tracker.log_params(cfg.to_mapping())
        return tracker

    def track_results(self, job: Job, cfg: EndoFedConfig, run_dir: Path,
                      rows: list[dict[str, Any]], *, kind: str) -> None:
        """Add the grid's evaluation of the job's model (its ``results.csv`` rows) to
        the tracking run its training opened (MLflow finds it by the run directory)."""
        if cfg.federation.tracking == "none":
            return
        tracker = self.tracker(job, cfg, run_dir, kind=kind, params=False)  # logged: training
        log_results(tracker, rows, step=self.spec.rounds)
        tracker.close()


def log_results(tracker: Any, rows: list[dict[str, Any]], *, step: int) -> None:
    """``results.csv`` rows as ``eval/<eval site>/<metric>`` (``eval/<model>/...`` for
    a local arm's per-hospital models)."""
    metrics: dict[str, float] = {}
    for row in rows:
        prefix = "eval" if row["model"] == "global" else f"eval/{row['model']}"
        for key, value in row.items():
            number = scalar(value) if key not in ("seed",) else None
            if number is not None:
                metrics[metric_name(f"{prefix}/{row['eval_site']}/{key}")] = number
    tracker.log_metrics(metrics, step=step)
