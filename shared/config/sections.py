"""The run's settings by section: data, preprocessing, model, training, federation, site.

Every section is a frozen dataclass whose fields are the Flower keys (see
:mod:`endofed.shared.config.coercion`); ``validate()`` rejects out-of-range values
with a :class:`ConfigError` naming the key. The privacy section lives in
:mod:`endofed.shared.config.privacy`; :class:`~endofed.shared.config.flower.EndoFedConfig`
lists the sections, once.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from endofed.shared.config.choices import (
    FINETUNE_MODES,
    LR_SCHEDULES,
    OPTIMIZERS,
    OVERLAY_DETECTORS,
    PARTITION_SCHEMES,
    STRATEGIES,
    TRACKERS,
    check_choice,
)
from endofed.shared.config.coercion import ConfigError, check_range
from endofed.shared.config.threshold_rule import parse_threshold_rule

#: What a run name may be: it names the folder ``<runs-dir>/<run-name>``, so exactly one
#: path component that cannot climb out (``..``), hide (``.x``) or read as a flag (``-x``).
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_run_name(name: str, *, key: str = "run-name") -> str:
    """``name`` if it is a safe single folder name, else :class:`ConfigError` saying why."""
    if RUN_NAME_PATTERN.fullmatch(name) and name not in (".", ".."):
        return name
    raise ConfigError(
        f"config key '{key}': {name!r} is not a safe folder name; use 1-128 letters, "
        "digits, '_', '.' or '-', starting with a letter, digit or '_' "
        "(no '/', '\\', '..', spaces or control characters)",
        key=key,
    )


def check_label(key: str, value: str) -> None:
    """A free-text name (a site's, a class's) must be printable and one line."""
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ConfigError(
            f"config key '{key}': {value!r} contains control characters", key=key
        )


@dataclass(frozen=True)
class DataConfig:
    """How a site's images become training batches."""

    image_size: int = 128
    batch_size: int = 8
    max_boxes: int = 16
    val_fraction: float = 0.2
    split_seed: int = 0
    augment: bool = True
    workers: int = 0
    # The run's lesion classes (label i+1 = class_names[i]); a site's own class names
    # must be among them, and with a single class every lesion maps to it.
    class_names: tuple[str, ...] = ("lesion",)
    # Morphology vocabulary for the localisation table (unknown ones count as -1).
    morphology_names: tuple[str, ...] = ("protruding", "flat", "depressed", "sessile")

    def validate(self) -> None:
        check_range("image-size", self.image_size, ge=32)
        check_range("batch-size", self.batch_size, ge=1)
        check_range("max-boxes", self.max_boxes, ge=1)
        check_range("val-fraction", self.val_fraction, ge=0, lt=1)
        check_range("workers", self.workers, ge=0)
        if not self.class_names:
            raise ConfigError("config key 'class-names': give at least one class, e.g. lesion")
        for key, names in (("class-names", self.class_names),
                           ("morphology-names", self.morphology_names)):
            if len(set(names)) != len(names):
                raise ConfigError(f"config key '{key}': a name is repeated in {names}", key=key)
            for name in names:
                check_label(key, name)


@dataclass(frozen=True)
class PreprocessConfigRef:
    """Site-level switches for the preprocessing pipeline (paper 2.1.2).

    Mapped onto :class:`shared.preprocessing.PreprocessConfig` by
    :func:`endofed.shared.build.preprocess_config_for`; each stage can be switched off to
    compare with and without it.
    """

    preprocess: bool = False
    preprocess_crop: bool = True
    preprocess_inpaint: bool = True
    preprocess_denoise: bool = True
    preprocess_median: bool = True
    preprocess_wavelet: bool = True
    preprocess_detector: str = "classical"
    preprocess_cache_dir: Path | None = None

    def validate(self) -> None:
        check_choice("preprocess-detector", self.preprocess_detector, OVERLAY_DETECTORS)


@dataclass(frozen=True)
class ModelConfig:
    """Which improved-SSD preset to build and how to fine-tune it."""

    preset: str = "tiny"
    # "auto" (the preset's installed ImageNet weights if it has them), "pretrained"
    # (required), "none" (random) or a weights / checkpoint file.
    weights_path: str = "auto"
    # "global" (everything trains), "local" (the backbone body is frozen), "heads" (only
    # the box/class heads and the mask decoder train: DP after a warm start), or "auto":
    # local under per-site DP (train the new layers on pretrained features, De et al.
    # 2022), global otherwise. See EndoFedConfig.finetune_mode.
    finetune: str = "auto"

    def validate(self) -> None:
        check_choice("finetune", self.finetune, FINETUNE_MODES)
        if not self.preset.strip():
            raise ConfigError("config key 'preset': must not be empty (e.g. lite0)")


@dataclass(frozen=True)
class TrainConfig:
    """The training engine's knobs (shared by central, federated and simulated runs)."""

    epochs: int = field(default=1, metadata={"key": "local-epochs"})
    max_steps: int = 0  # 0 = no cap on steps per epoch
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    # Learning-rate multiplier of a pretrained backbone body (new layers: 1x).
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 10.0  # 0 = off (DP clips per sample instead)
    alpha_seg: float = 1.0
    amp: bool = True  # only ever used on CUDA
    proximal_mu: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0 = leave torch's default

    def validate(self) -> None:
        check_range("local-epochs", self.epochs, ge=1)
        check_range("max-steps", self.max_steps, ge=0, note="0 = no cap")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("learning-rate", self.learning_rate, gt=0)
        check_range("backbone-lr-scale", self.backbone_lr_scale, gt=0, le=1)
        check_range("weight-decay", self.weight_decay, ge=0)
        check_range("momentum", self.momentum, ge=0, lt=1)
        check_choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        check_range("warmup-steps", self.warmup_steps, ge=0)
        check_range("grad-clip", self.grad_clip, ge=0, note="0 = off")
        check_range("alpha-seg", self.alpha_seg, ge=0)
        check_range("proximal-mu", self.proximal_mu, ge=0)
        check_range("threads", self.threads, ge=0, note="0 = all cores")
        if not _DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(
                f"config key 'device': unknown {self.device!r} (use auto, cpu, cuda, "
                "cuda:N or mps)", key="device",
            )


@dataclass(frozen=True)
class FederationConfig:
    """The coordinating center's view of a run."""

    num_server_rounds: int = 3
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    run_name: str = "default"
    runs_dir: Path = Path("runs")
    round_timeout: float = 3600.0
    eval_data_path: Path | None = None
    # How the image-level lesion threshold is chosen on the validation score
    # histograms (endofed.shared.metrics.operating_point): youden, sensitivity:X,
    # specificity:X or fixed:T. Central training and the server both apply it.
    threshold_rule: str = "youden"
    # Server-side optimiser of the strategy (endofed.server.strategies says which
    # strategy reads which key). server-learning-rate: FedAvgM's step and the FedOpt
    # family's eta; server-momentum: FedAvgM; server-beta-1/-2: FedAdam and FedYogi
    # (FedAdagrad has neither); server-tau: the FedOpt family's adaptivity.
    server_learning_rate: float = 0.1
    server_momentum: float = 0.9
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3
    # Robust aggregation: FedTrimmedAvg cuts this share of updates at each end of every
    # coordinate; Krum assumes at most this many Byzantine sites per round.
    trimmed_beta: float = 0.2
    num_malicious_nodes: int = 0
    # Optional experiment tracking (endofed.shared.metrics.tracking), off by default:
    # mlflow (a sqlite store in <run>/mlruns) or tensorboard (<run>/tensorboard). A
    # tracking-dir puts the store there instead (one store for a whole grid).
    tracking: str = "none"
    tracking_dir: Path | None = None

    def validate(self) -> None:
        check_range("num-server-rounds", self.num_server_rounds, ge=1)
        check_choice("strategy", self.strategy.lower(), STRATEGIES)
        check_range("fraction-train", self.fraction_train, gt=0, le=1)
        check_range("fraction-evaluate", self.fraction_evaluate, ge=0, le=1,
                    note="0 = no federated evaluation")
        check_range("min-train-nodes", self.min_train_nodes, ge=1)
        check_range("min-evaluate-nodes", self.min_evaluate_nodes, ge=0)
        check_range("min-available-nodes", self.min_available_nodes, ge=1)
        check_run_name(self.run_name)
        if not str(self.runs_dir).strip():
            raise ConfigError("config key 'runs-dir': must not be empty", key="runs-dir")
        check_range("round-timeout", self.round_timeout, gt=0, note="seconds")
        parse_threshold_rule(self.threshold_rule)
        check_range("server-learning-rate", self.server_learning_rate, gt=0)
        check_range("server-momentum", self.server_momentum, ge=0, lt=1)
        check_range("server-beta-1", self.server_beta_1, ge=0, lt=1)
        check_range("server-beta-2", self.server_beta_2, ge=0, lt=1)
        check_range("server-tau", self.server_tau, gt=0)
        check_range("trimmed-beta", self.trimmed_beta, ge=0, lt=0.5,
                    note="the share cut at each end")
        check_range("num-malicious-nodes", self.num_malicious_nodes, ge=0)
        check_choice("tracking", self.tracking, TRACKERS)


@dataclass(frozen=True)
class SiteConfig:
    """Where a site's data lives (node config; in simulation also the run config's
    ``data-path`` + ``partition``, which cut one data set into virtual hospitals)."""

    data_path: Path | None = None
    site_name: str = ""
    partition_id: int = -1
    num_partitions: int = 0
    # iid | dirichlet:A[,MIN] | source (endofed.shared.data.partition parses the rest).
    partition: str = "iid"
    synthetic_images_per_site: int = 24
    synthetic_dir: Path | None = None

    def validate(self) -> None:
        check_label("site-name", self.site_name)
        check_range("partition-id", self.partition_id, ge=-1, note="-1 = not simulated")
        check_range("num-partitions", self.num_partitions, ge=0)
        if self.num_partitions and self.partition_id >= self.num_partitions:
            raise ConfigError(
                f"config key 'partition-id': {self.partition_id} is not below "
                f"num-partitions {self.num_partitions}", key="partition-id",
            )
        check_choice("partition", self.partition.strip().partition(":")[0].strip(),
                     PARTITION_SCHEMES)
        check_range("synthetic-images-per-site", self.synthetic_images_per_site, ge=1)
