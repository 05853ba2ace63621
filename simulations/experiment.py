"""Research grid: central vs local-only vs federated (x DP) on one fixed split.

Every arm of an experiment trains on the **same virtual hospitals** with the **same
train/val split** and the **same training budget**, and every final model is
evaluated here, in one process, by the same code on each hospital's validation
split (plus their union, ``pooled``, and an optional held-out hospital):

* ``central``: ``rounds x local-epochs`` epochs on the pooled training data.
* ``local``: each hospital alone, ``rounds x local-epochs`` epochs on its own
  training data; each of the K local models is evaluated on every hospital.
* federated arms (``fedavg``, ``fedprox``, ``fedadam``, ``fedmedian``, ... any
  strategy of :mod:`server.strategies`): a real Flower simulation of ``rounds``
  rounds of ``local-epochs`` epochs per hospital, optionally with per-site DP-SGD
  (``dp-epsilon``); ``arm+prep`` runs it with the site preprocessing enabled.

The hospitals are materialised once per experiment directory: the data folders are
pooled, split into K sites by :func:`shared.data.partition.partition`, each site is
split patient-aware into train/val, and each site is written as a folder with a
``manifest.csv`` (absolute image paths and a ``split`` column) -- optionally with
device-shifted copies of its images. The federated runs read exactly those folders
(run config ``data-path`` = the site folders, ``partition=source``), the central
and local arms scan the same folders, so the split cannot drift between arms.

The grid is resumable: each finished (arm, dp, seed) writes
``done/<arm>_<dp>_<seed>.json`` with its result rows and is never re-run; an
interrupted central/local arm resumes from its epoch checkpoint and an interrupted
federated arm from its last round (same run name).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.labels import harmonize_labels
from endofed.shared.data.layouts._base import MANIFEST_NAME
from endofed.shared.data.partition import partition
from endofed.shared.data.sample import SampleRecord
from endofed.shared.data.site import load_sample, scan_site
from endofed.shared.data.split import split_records
from endofed.shared.engine import Trainer, configure_threads, evaluate, resolve_device
from endofed.shared.metrics import MetricAccumulator, flat_scalars
from endofed.shared.model import build_model, load_model_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

#: Metrics reported per row of ``results.csv`` (``flat_scalars`` keys).
METRICS: tuple[str, ...] = (
    "map50", "map", "dice", "iou", "auc", "sensitivity", "specificity", "accuracy", "f1",
)
#: Columns of ``results.csv``.
COLUMNS: tuple[str, ...] = (
    "arm", "dp", "seed", "model", "eval_site", *METRICS, "epsilon", "num_images",
)
POOLED = "pooled"
HOLDOUT = "holdout"
CENTRAL, LOCAL, FEDERATED = "central", "local", "federated"
PREP_SUFFIX = "+prep"
_SETTINGS_FILE = "experiment.json"


class ExperimentError(ValueError):
    """The experiment cannot run as asked; the message says why and how to fix it."""


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Arm:
    """One way of training: ``kind`` central/local/federated, its strategy and prep."""

    name: str
    kind: str
    strategy: str = ""
    preprocess: bool = False


def parse_arms(names: Iterable[str], *, preprocess_ablation: bool = False) -> list[Arm]:
    """``["central", "fedavg", "fedprox+prep"]`` -> arms; the ablation adds ``X+prep``
    for every federated arm ``X``."""
    try:
        from endofed.server.strategies import STRATEGIES
        strategies = set(STRATEGIES)
    except ImportError:  # pragma: no cover - server package always ships with simulations
        strategies = {"fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian"}
    arms: list[Arm] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        base, prep = (name[: -len(PREP_SUFFIX)], True) if name.endswith(PREP_SUFFIX) else (
            name, False)
        if base in (CENTRAL, LOCAL):
            arm = Arm(name, base, preprocess=prep)
        elif base in strategies:
            arm = Arm(name, FEDERATED, strategy=base, preprocess=prep)
        else:
            raise ExperimentError(
                f"unknown arm {raw!r}: expected central, local or a strategy "
                f"({', '.join(sorted(strategies))}), optionally with '{PREP_SUFFIX}'"
            )
        if arm not in arms:
            arms.append(arm)
        if preprocess_ablation and arm.kind == FEDERATED and not prep:
            extra = Arm(name + PREP_SUFFIX, FEDERATED, strategy=base, preprocess=True)
            if extra not in arms:
                arms.append(extra)
    if not arms:
        raise ExperimentError("no arm given (e.g. --arms central,local,fedavg)")
    return arms


def parse_dp(values: Iterable[str | float]) -> list[float]:
    """``["none", "8", "1"]`` -> ``[0.0, 8.0, 1.0]`` (``0`` = no DP)."""
    out: list[float] = []
    for v in values:
        s = str(v).strip().lower()
        if not s:
            continue
        if s in ("none", "off", "inf", "0"):
            eps = 0.0
        else:
            try:
                eps = float(s)
            except ValueError:
                raise ExperimentError(f"--dp values are 'none' or epsilons > 0, got {v!r}") \
                    from None
            if not eps > 0 or math.isinf(eps):
                raise ExperimentError(f"--dp epsilon must be > 0 (or 'none'), got {v!r}")
        if eps not in out:
            out.append(eps)
    return out or [0.0]


def dp_label(eps: float) -> str:
    """``0`` -> ``"none"``, ``8.0`` -> ``"8"``."""
    return "none" if eps <= 0 else f"{eps:g}"


@dataclass
class ExperimentSpec:
    """Everything that defines an experiment grid (see the module docstring)."""

    out: Path
    data: list[Path] | None = None  # None: synthetic hospitals
    sites: int = 3
    partition: str = "iid"
    arms: list[Arm] = field(default_factory=lambda: parse_arms(["central", "local", "fedavg"]))
    dp: list[float] = field(default_factory=lambda: [0.0])
    rounds: int = 5
    local_epochs: int = 1
    preset: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    holdout_site: Path | None = None
    device_shift: bool = False
    images_per_site: int = 24
    image_size: int = 128
    batch_size: int = 8
    limit_images: int = 0
    split_seed: int = 0
    val_fraction: float = 0.2
    extra_config: dict[str, Any] = field(default_factory=dict)
    num_cpus_per_client: float = 1.0
    timeout: float | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.sites < 1:
            raise ExperimentError(f"--sites must be >= 1, got {self.sites}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ExperimentError("--rounds and --local-epochs must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ExperimentError(f"val fraction must be in (0, 1), got {self.val_fraction}")
        if not self.seeds:
            raise ExperimentError("no seed given (e.g. --seeds 0,1,2)")
        if any(a.kind == FEDERATED for a in self.arms) and self.sites < 2:
            raise ExperimentError("federated arms need --sites >= 2")
        for p in [*(self.data or []), *([self.holdout_site] if self.holdout_site else [])]:
            if not Path(p).is_dir():
                raise ExperimentError(f"data folder {p} does not exist")

    def settings(self) -> dict[str, Any]:
        """What fixes the hospitals and the training budget (must not change on resume)."""
        return {
            "data": [str(Path(p).resolve()) for p in self.data] if self.data else "synthetic",
            "sites": self.sites,
            "partition": self.partition,
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "preset": self.preset,
            "holdout_site": str(Path(self.holdout_site).resolve()) if self.holdout_site else None,
            "device_shift": self.device_shift,
            "images_per_site": self.images_per_site if not self.data else None,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "limit_images": self.limit_images,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "extra_config": {k: str(v) for k, v in sorted(self.extra_config.items())},
        }

    def base_mapping(self, seed: int, *, preprocess: bool = False) -> dict[str, Any]:
        """The kebab-case run config shared by every arm of ``seed``."""
        return {
            **self.extra_config,
            "preset": self.preset,
            "image-size": self.image_size,
            "batch-size": self.batch_size,
            "local-epochs": self.local_epochs,
            "val-fraction": self.val_fraction,
            "split-seed": self.split_seed,
            "seed": seed,
            "preprocess": preprocess,
        }

    def config(self, seed: int, *, preprocess: bool = False, **overrides: Any) -> EndoFedConfig:
        return EndoFedConfig.from_mapping(
            {**self.base_mapping(seed, preprocess=preprocess), **overrides}
        )


# ----------------------------------------------------------------------------- hospitals


@dataclass
class VirtualSite:
    """One materialised hospital: its folder and its fixed train/val records."""

    name: str
    path: Path
    train: list[SampleRecord]
    val: list[SampleRecord]

    @property
    def records(self) -> list[SampleRecord]:
        return [*self.train, *self.val]


def _source_folders(spec: ExperimentSpec) -> list[Path]:
    if spec.data:
        return [Path(p).resolve() for p in spec.data]
    from endofed.shared.data.synthetic import write_sites

    root = (spec.out / "source" / "synthetic").resolve()
    folders = [root / f"site_{i + 1}" for i in range(spec.sites)]
    if not all((f / MANIFEST_NAME).exists() for f in folders):
        log.info("writing %d synthetic hospitals of %d images to %s",
                 spec.sites, spec.images_per_site, root)
        write_sites(root, sites=spec.sites, images_per_site=spec.images_per_site,
                    seed=spec.split_seed, size=max(spec.image_size, 128))
    return folders


def _scan(path: Path, cfg: EndoFedConfig) -> list[SampleRecord]:
    index = harmonize_labels(scan_site(path), cfg.data.class_names)
    if index.report.problems:
        log.warning("%s: %d files skipped", path, len(index.report.problems))
    return index.records


def _limited(records: list[SampleRecord], limit: int, seed: int) -> list[SampleRecord]:
    if limit <= 0 or len(records) <= limit:
        return records
    keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[int(i)] for i in keep]


def _write_site(
    site_dir: Path,
    records: Sequence[SampleRecord],
    split_of: Mapping[str, str],
    class_names: Sequence[str],
    *,
    shift: tuple[Any, int, int] | None = None,
) -> None:
    """Write ``site_dir/manifest.csv`` (one row per box) for ``records``.

    With ``shift = (profile, seed, site_index)`` the images are device-shifted copies
    written to ``site_dir/images``; otherwise the manifest points at the originals.
    COCO polygon/RLE masks are decoded to ``site_dir/masks``.
    """
    import cv2

    from endofed.simulations.device_shift import apply_device_profile, profile_rng

    site_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k, r in enumerate(records):
        stem = f"{k:05d}_{Path(r.image_path).stem}"
        image = str(Path(r.image_path).resolve())
        mask = str(Path(r.mask_path).resolve()) if r.mask_path else ""
        sample = None
        if shift is not None:
            profile, seed, site_index = shift
            sample = load_sample(r)
            shifted = apply_device_profile(sample.image, profile,
                                           profile_rng(seed, site_index, k))
            out = site_dir / "images" / f"{stem}.png"
            out.parent.mkdir(exist_ok=True)
            if not cv2.imwrite(str(out), cv2.cvtColor(shifted, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {out}")
            image = f"images/{out.name}"  # relative: the folder is renamed into place
        if not mask and r.segmentation:
            sample = sample or load_sample(r)
            out = site_dir / "masks" / f"{stem}.png"
            out.parent.mkdir(exist_ok=True)
            if not cv2.imwrite(str(out), sample.mask.astype(np.uint8) * 255):
                raise OSError(f"could not write {out}")
            mask = f"masks/{out.name}"
        common = {
            "image": image, "mask": mask, "split": split_of[str(r.image_path)],
            "patient_id": r.meta.patient_id or "", "lesion_id": r.meta.lesion_id or "",
        }
        if len(r.boxes) == 0:
            rows.append({**common, "label": "normal", "xmin": "", "ymin": "", "xmax": "",
                         "ymax": "", "morphology": ""})
        for j, (box, label) in enumerate(zip(r.boxes, r.labels)):
            morph = r.meta.morphologies[j] if j < len(r.meta.morphologies) else ""
            rows.append({**common, "label": class_names[int(label) - 1],
                         "xmin": repr(float(box[0])), "ymin": repr(float(box[1])),
                         "xmax": repr(float(box[2])), "ymax": repr(float(box[3])),
                         "morphology": morph or ""})
    cols = ["image", "mask", "label", "xmin", "ymin", "xmax", "ymax", "morphology", "split",
            "patient_id", "lesion_id"]
    pd.DataFrame(rows, columns=cols).to_csv(site_dir / MANIFEST_NAME, index=False)


def materialize_sites(spec: ExperimentSpec, cfg: EndoFedConfig) -> list[VirtualSite]:
    """Create (once) and load the experiment's K hospitals under ``out/sites``.

    Sites are numbered by decreasing size, so ``site_i`` is also Flower's partition
    ``i - 1`` under ``partition=source`` (checked by :func:`flower_site_names`).
    """
    root = spec.out / "sites"
    if not (root / "sites.json").exists():
        records: list[SampleRecord] = []
        for folder in _source_folders(spec):
            records.extend(_limited(_scan(folder, cfg), spec.limit_images, spec.split_seed))
        parts = partition(records, spec.partition, spec.sites, seed=spec.split_seed)
        order = sorted(range(len(parts)), key=lambda i: -len(parts[i]))  # stable
        tmp = spec.out / ".sites.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        profiles = None
        if spec.device_shift:
            from endofed.simulations.device_shift import site_profiles

            profiles = site_profiles(spec.sites, spec.split_seed)
        info: dict[str, Any] = {"sites": []}
        for new, old in enumerate(order):
            part = parts[old]
            split = split_records(part, (1 - spec.val_fraction, spec.val_fraction),
                                  seed=spec.split_seed)
            split_of = {str(r.image_path): side for side, rs in split.items() for r in rs}
            name = f"site_{new + 1}"
            shift = (profiles[new], spec.split_seed, new) if profiles else None
            _write_site(tmp / name, part, split_of, cfg.data.class_names, shift=shift)
            info["sites"].append({
                "name": name, "train": len(split["train"]), "val": len(split["val"]),
                "device_profile": dataclasses.asdict(profiles[new]) if profiles else None,
            })
        (tmp / "sites.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        log.info("materialised %d hospitals in %s: %s", spec.sites, root,
                 [(s["name"], s["train"], s["val"]) for s in info["sites"]])
    info = json.loads((root / "sites.json").read_text())
    sites = []
    for entry in info["sites"]:
        path = (root / entry["name"]).resolve()
        recs = _scan(path, cfg)
        sites.append(VirtualSite(
            entry["name"], path,
            train=[r for r in recs if r.meta.split == "train"],
            val=[r for r in recs if r.meta.split == "val"],
        ))
    return sites


def flower_site_names(sites: Sequence[VirtualSite]) -> dict[str, str]:
    """Flower's ``site_{pid+1}`` -> our site name, as the ClientApp resolves them
    (run config ``data-path`` = the site folders, ``partition=source``)."""
    union = [r for s in sites for r in s.records]
    parts = partition(union, "source", len(sites))
    mapping = {}
    for pid, part in enumerate(parts):
        names = {r.meta.site for r in part}
        if len(names) != 1:
            raise ExperimentError(f"partition {pid} mixes site folders {sorted(names)}")
        mapping[f"site_{pid + 1}"] = names.pop()
    return mapping


# ----------------------------------------------------------------------------- evaluation


class SiteEvaluator:
    """Evaluate any model on each hospital's val split, their union and a holdout."""

    def __init__(self, sites: Sequence[VirtualSite], holdout: list[SampleRecord] | None,
                 device: torch.device, progress: bool = False) -> None:
        self.sites = list(sites)
        self.holdout = holdout
        self.device = device
        self.progress = progress
        self._datasets: dict[tuple[bool, str], Any] = {}

    def _dataset(self, cfg: EndoFedConfig, name: str, records: list[SampleRecord]):
        key = (bool(cfg.preprocess.preprocess), name)
        if key not in self._datasets:
            self._datasets[key] = dataset_for(records, cfg, train=False)
        return self._datasets[key]

    def __call__(self, model: torch.nn.Module, cfg: EndoFedConfig) -> dict[str, dict[str, float]]:
        """``{site name | "pooled" | "holdout": flat metrics}``."""
        model = model.to(self.device)
        kwargs = {"class_names": list(cfg.data.class_names),
                  "morphology_names": list(cfg.data.morphology_names)}
        out: dict[str, dict[str, float]] = {}
        pooled = MetricAccumulator(**kwargs)
        targets = [(s.name, s.val) for s in self.sites]
        if self.holdout is not None:
            targets.append((HOLDOUT, self.holdout))
        for name, records in targets:
            acc = MetricAccumulator(**kwargs)
            if records:
                loader = loader_for(self._dataset(cfg, name, records), cfg, shuffle=False)
                evaluate(model, loader, acc, device=self.device, progress=self.progress,
                         desc=f"eval {name}")
            out[name] = flat_scalars(acc.compute())
            if name != HOLDOUT:
                pooled.merge(acc)
        out[POOLED] = flat_scalars(pooled.compute())
        return out


def _rows(arm: str, dp: str, seed: int, model: str, metrics: Mapping[str, Mapping[str, float]],
          epsilon: float = float("nan")) -> list[dict[str, Any]]:
    rows = []
    for eval_site, m in metrics.items():
        row: dict[str, Any] = {"arm": arm, "dp": dp, "seed": seed, "model": model,
                               "eval_site": eval_site}
        row.update({k: float(m.get(k, float("nan"))) for k in METRICS})
        row["epsilon"] = epsilon
        row["num_images"] = int(m.get("num_images", 0) or 0)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- arms


@dataclass
class Job:
    arm: Arm
    dp: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arm.name}_{dp_label(self.dp)}_{self.seed}"

    @property
    def run_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.key)


def grid(spec: ExperimentSpec) -> list[Job]:
    """All jobs: federated arms x dp x seeds; central/local once per seed (no DP)."""
    jobs = []
    for seed in spec.seeds:
        for arm in spec.arms:
            for eps in (spec.dp if arm.kind == FEDERATED else [0.0]):
                jobs.append(Job(arm, eps, seed))
    return jobs


class _Runner:
    def __init__(self, spec: ExperimentSpec, sites: list[VirtualSite],
                 evaluator: SiteEvaluator) -> None:
        self.spec = spec
        self.sites = sites
        self.evaluate = evaluator

    def arm_dir(self, job: Job) -> Path:
        return self.spec.out / "arms" / job.run_name

    def budget_config(self, job: Job) -> EndoFedConfig:
        """Central/local: all ``rounds x local-epochs`` epochs in one go."""
        return self.spec.config(job.seed, preprocess=job.arm.preprocess,
                                **{"local-epochs": self.spec.rounds * self.spec.local_epochs})

    def central(self, job: Job) -> dict[str, Any]:
        from endofed.simulations.central import train_central

        cfg = self.budget_config(job)
        records = [r for s in self.sites for r in s.records]
        result = train_central(cfg, [s.path for s in self.sites], self.arm_dir(job),
                               records=records, resume=True, progress=self.spec.progress)
        model = load_model_checkpoint(result.model_path)
        rows = _rows(job.arm.name, dp_label(0), job.seed, "global", self.evaluate(model, cfg))
        return {"rows": rows, "run_dir": str(result.out_dir)}

    def local(self, job: Job) -> dict[str, Any]:
        cfg = self.budget_config(job)
        configure_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        rows: list[dict[str, Any]] = []
        for site in self.sites:
            d = self.arm_dir(job) / site.name
            path = d / "model.pt"
            if not path.exists():
                torch.manual_seed(cfg.train.seed)
                model = build_model(
                    preset=cfg.model.preset, num_classes=len(cfg.data.class_names),
                    image_size=cfg.data.image_size, weights_path=cfg.model.weights_path,
                    finetune=cfg.model.finetune,
                ).to(device)
                train_set = dataset_for(site.train, cfg, train=True)
                log.info("local %s: %d training images, %d epochs", site.name,
                         len(train_set), cfg.train.epochs)
                Trainer(model, cfg.train, device=device, progress=self.spec.progress).fit(
                    loader_for(train_set, cfg, shuffle=True), checkpoint_dir=d / "checkpoints",
                    resume=True, desc=f"local {site.name}",
                )
                save_checkpoint(path, model, extra={"class_names": list(cfg.data.class_names)})
            model = load_model_checkpoint(path)
            rows += _rows(job.arm.name, dp_label(0), job.seed, site.name,
                          self.evaluate(model, cfg))
        return {"rows": rows, "run_dir": str(self.arm_dir(job))}

    def federated(self, job: Job) -> dict[str, Any]:
        from endofed.simulations.federated import run_simulation

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
        if not _finished_run(run_dir, spec.rounds):
            run_simulation(run_config, num_sites=k, runs_dir=runs_dir, run_name=job.run_name,
                           num_cpus_per_client=spec.num_cpus_per_client, timeout=spec.timeout)
        cfg = spec.config(job.seed, preprocess=job.arm.preprocess)
        model = load_model_checkpoint(run_dir / "final_model.pt")
        eps = _epsilon_spent(run_dir) if job.dp > 0 else float("nan")
        rows = _rows(job.arm.name, dp_label(job.dp), job.seed, "global",
                     self.evaluate(model, cfg), epsilon=eps)
        return {"rows": rows, "run_dir": str(run_dir)}


def _finished_run(run_dir: Path, rounds: int) -> bool:
    metrics = run_dir / "metrics.csv"
    if not ((run_dir / "final_model.pt").exists() and metrics.exists()):
        return False
    df = pd.read_csv(metrics)
    return bool(len(df)) and int(df["round"].max()) >= rounds


def _epsilon_spent(run_dir: Path) -> float:
    """Largest epsilon any site spent by the last round (``nan`` if not reported)."""
    df = pd.read_csv(run_dir / "metrics.csv")
    if "epsilon-spent" not in df.columns:
        return float("nan")
    sites = df[df["site"] != "global"]
    return float(sites["epsilon-spent"].max()) if len(sites) else float("nan")


# ----------------------------------------------------------------------------- driver


@dataclass
class ExperimentResult:
    out_dir: Path
    results: pd.DataFrame
    summary_path: Path
    plots: list[Path]
    ran: list[str]
    skipped: list[str]


def _check_settings(spec: ExperimentSpec) -> None:
    path = spec.out / _SETTINGS_FILE
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
        path.write_text(json.dumps(settings, indent=1))


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def run_experiment(spec: ExperimentSpec) -> ExperimentResult:
    """Run (or resume) the grid and write ``results.csv``, ``summary.md`` and plots."""
    from tqdm.auto import tqdm

    spec.out = Path(spec.out).resolve()
    spec.validate()
    spec.out.mkdir(parents=True, exist_ok=True)
    _check_settings(spec)
    base_cfg = spec.config(spec.seeds[0])
    sites = materialize_sites(spec, base_cfg)
    if any(a.kind == FEDERATED for a in spec.arms):
        mapping = flower_site_names(sites)
        if any(k != v for k, v in mapping.items()):
            log.warning("Flower site names differ from folder names: %s", mapping)
    holdout = _scan(Path(spec.holdout_site), base_cfg) if spec.holdout_site else None
    configure_threads(base_cfg.train.threads)
    evaluator = SiteEvaluator(sites, holdout, resolve_device(base_cfg.train.device))
    runner = _Runner(spec, sites, evaluator)
    done_dir = spec.out / "done"
    done_dir.mkdir(exist_ok=True)

    jobs = grid(spec)
    ran, skipped = [], []
    bar = tqdm(jobs, desc="experiment", unit="arm", disable=not spec.progress)
    for i, job in enumerate(bar):
        marker = done_dir / f"{job.key}.json"
        bar.set_postfix_str(job.key)
        if marker.exists():
            log.info("[%d/%d] %s: done already (%s)", i + 1, len(jobs), job.key, marker.name)
            skipped.append(job.key)
            continue
        log.info("[%d/%d] %s: running", i + 1, len(jobs), job.key)
        t0 = time.perf_counter()
        result = getattr(runner, job.arm.kind)(job)
        seconds = time.perf_counter() - t0
        _write_json_atomic(marker, {"arm": job.arm.name, "dp": dp_label(job.dp),
                                    "seed": job.seed, "seconds": seconds, **result})
        pooled = next(r for r in result["rows"] if r["eval_site"] == POOLED)
        log.info("[%d/%d] %s: done in %.0f s, pooled map50 %.4f dice %.4f auc %.4f",
                 i + 1, len(jobs), job.key, seconds, pooled["map50"], pooled["dice"],
                 pooled["auc"])
        ran.append(job.key)
        _collect(spec, jobs).to_csv(spec.out / "results.csv", index=False)
    bar.close()

    df = _collect(spec, jobs)
    df.to_csv(spec.out / "results.csv", index=False)
    markers = [json.loads((done_dir / f"{j.key}.json").read_text()) for j in jobs]
    plots = write_plots(spec.out, df, markers, [a.name for a in spec.arms])
    summary = write_summary(spec, df, plots, sites)
    return ExperimentResult(spec.out, df, summary, plots, ran, skipped)


def _collect(spec: ExperimentSpec, jobs: Sequence[Job]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for job in jobs:
        marker = spec.out / "done" / f"{job.key}.json"
        if marker.exists():
            rows += json.loads(marker.read_text())["rows"]
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ----------------------------------------------------------------------------- report


def _fmt(mean: float, std: float) -> str:
    if mean != mean:  # nan
        return "–"
    return f"{mean:.3f}" if std != std else f"{mean:.3f} ± {std:.3f}"


def summary_table(df: pd.DataFrame, eval_site: str = POOLED,
                  columns: Sequence[str] = (*METRICS, "epsilon")) -> pd.DataFrame:
    """Mean ± std over seeds per (arm, dp) on ``eval_site`` (local models averaged
    within a seed first)."""
    sub = df[df["eval_site"] == eval_site]
    if sub.empty:
        return pd.DataFrame(columns=["arm", "dp", "seeds", *columns])
    cols = list(columns)
    per_seed = sub.groupby(["arm", "dp", "seed"], sort=False)[cols].mean().reset_index()
    g = per_seed.groupby(["arm", "dp"], sort=False)
    mean, std, n = g[cols].mean(), g[cols].std(), g["seed"].nunique()
    out = pd.DataFrame({"seeds": n})
    for c in cols:
        out[c] = [_fmt(m, s) for m, s in zip(mean[c], std[c])]
    return out.reset_index()


def _markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    sep = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, sep, *body])


_HEADERS = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]", "dice": "Dice", "iou": "IoU",
            "auc": "AUC", "sensitivity": "Sens.", "specificity": "Spec.",
            "accuracy": "Acc.", "f1": "F1", "epsilon": "ε spent"}


def write_summary(spec: ExperimentSpec, df: pd.DataFrame, plots: Sequence[Path],
                  sites: Sequence[VirtualSite]) -> Path:
    """``summary.md``: settings, hospitals, the pooled table, holdout and per-site tables."""
    lines = [
        "# EndoFed experiment",
        "",
        f"Data: {', '.join(str(p) for p in spec.data) if spec.data else 'synthetic'}; "
        f"{spec.sites} hospitals by `{spec.partition}`"
        + (" with simulated device shift" if spec.device_shift else "")
        + f"; preset `{spec.preset}`, {spec.image_size} px, batch {spec.batch_size}.",
        f"Budget: {spec.rounds} rounds x {spec.local_epochs} local epoch(s) for federated "
        f"arms = {spec.rounds * spec.local_epochs} epochs for central and each local model. "
        f"Seeds: {', '.join(str(s) for s in spec.seeds)}. DP (per site, federated arms "
        "only): " + ", ".join(dp_label(e) for e in spec.dp) + ".",
        "",
        "| hospital | train | val |",
        "|---|---|---|",
        *[f"| {s.name} | {len(s.train)} | {len(s.val)} |" for s in sites],
        "",
        "## Pooled validation (all hospitals' val splits), mean ± std over seeds",
        "",
        "`local` = the mean over the hospitals' local-only models.",
        "",
        _markdown(summary_table(df).rename(columns=_HEADERS)),
        "",
    ]
    if (df["eval_site"] == HOLDOUT).any():
        lines += [f"## Held-out hospital ({spec.holdout_site}), not used in training", "",
                  _markdown(summary_table(df, HOLDOUT).rename(columns=_HEADERS)), ""]
    per_site = df[~df["eval_site"].isin([POOLED, HOLDOUT])]
    if not per_site.empty:
        per_seed = per_site.groupby(["arm", "dp", "eval_site", "seed"], sort=False)["map50"]\
            .mean().reset_index()
        pivot = per_seed.groupby(["arm", "dp", "eval_site"], sort=False)["map50"].mean()\
            .unstack("eval_site").reset_index()
        pivot = pivot.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)
        lines += ["## mAP@0.5 per hospital (mean over seeds)", "", _markdown(pivot), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(spec.out)})" for p in plots]
    path = spec.out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plots(out: Path, df: pd.DataFrame, markers: Sequence[Mapping[str, Any]],
                arm_order: Sequence[str]) -> list[Path]:
    """Metric vs round per federated arm, utility vs epsilon, per-site bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    written: list[Path] = []

    # 1. metric vs round (global rows of each federated run, mean over seeds)
    curves: dict[str, list[pd.DataFrame]] = {}
    for m in markers:
        metrics_csv = Path(m.get("run_dir") or "") / "metrics.csv"
        if m.get("run_dir") and metrics_csv.exists():
            d = pd.read_csv(metrics_csv)
            curves.setdefault(f"{m['arm']} (dp {m['dp']})", []).append(d[d["site"] == "global"])
    for metric in ("map50", "dice", "auc"):
        if not curves:
            break
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, runs in curves.items():
            d = pd.concat(runs)
            if metric in d.columns:
                mean = d.groupby("round")[metric].mean()
                ax.plot(mean.index, mean.values, marker="o", label=label)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("round")
        ax.set_ylabel(_HEADERS.get(metric, metric))
        ax.set_title(f"{_HEADERS.get(metric, metric)} per round (server-merged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, plot_dir / f"rounds_{metric}.png"))

    pooled = df[df["eval_site"] == POOLED]
    present = [m for m in METRICS if m in df.columns]
    seed_mean = pooled.groupby(["arm", "dp", "seed"], sort=False)[present].mean()\
        .groupby(["arm", "dp"], sort=False).mean().reset_index()

    # 2. utility vs epsilon
    dp_rows = seed_mean[seed_mean["dp"] != "none"]
    if not dp_rows.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, arm in enumerate(a for a in arm_order if a in set(dp_rows["arm"])):
            color = f"C{i}"
            d = dp_rows[dp_rows["arm"] == arm].assign(eps=lambda x: x["dp"].astype(float))
            d = d.sort_values("eps")
            ax.plot(d["eps"], d["map50"], marker="o", color=color, label=f"{arm} (DP)")
            base = seed_mean[(seed_mean["arm"] == arm) & (seed_mean["dp"] == "none")]
            if len(base):
                ax.axhline(float(base["map50"].iloc[0]), ls="--", color=color,
                           label=f"{arm} (no DP)")
        central = seed_mean[seed_mean["arm"] == CENTRAL]
        if len(central):
            ax.axhline(float(central["map50"].iloc[0]), ls=":", color="k", label="central")
        ax.set_xscale("log")
        eps_ticks = sorted({float(v) for v in dp_rows["dp"]})
        ax.set_xticks(eps_ticks, [f"{v:g}" for v in eps_ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("target ε per site")
        ax.set_ylabel("mAP@0.5 (pooled val)")
        ax.set_title("Utility vs privacy budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, plot_dir / "utility_vs_epsilon.png"))

    # 3. per-site bars (no DP, mean over seeds and local models)
    sub = df[(df["dp"] == "none") & (df["eval_site"] != POOLED)]
    if not sub.empty:
        site_names = list(dict.fromkeys(sub["eval_site"]))
        arms = [a for a in arm_order if a in set(sub["arm"])]
        for metric in ("map50", "dice"):
            fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(site_names) * max(1, len(arms)) / 2),
                                            4))
            width = 0.8 / max(1, len(arms))
            for i, arm in enumerate(arms):
                vals = sub[sub["arm"] == arm].groupby(["eval_site", "seed"])[metric].mean()\
                    .groupby("eval_site").mean()
                xs = np.arange(len(site_names)) + i * width
                ax.bar(xs, [vals.get(s, np.nan) for s in site_names], width, label=arm)
            top = np.nanmax(sub[metric].to_numpy(float), initial=0.0)
            ax.set_ylim(0, max(0.05, 1.1 * float(top)))
            ax.set_xticks(np.arange(len(site_names)) + width * (len(arms) - 1) / 2)
            ax.set_xticklabels(site_names)
            ax.set_ylabel(_HEADERS[metric])
            ax.set_title(f"{_HEADERS[metric]} per hospital (val split)")
            ax.legend(fontsize=7)
            written.append(_save(fig, plot_dir / f"per_site_{metric}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
