"""The run's settings by section: data, preprocessing, model, training, federation, site.

Every section is a frozen dataclass whose fields are the Flower keys (see
:mod:`endofed.shared.config.coercion`); ``validate()`` rejects out-of-range values
with a :class:`ConfigError` naming the key. The privacy section lives in
:mod:`endofed.shared.config.privacy`; :class:`~endofed.shared.config.flower.EndoFedConfig`
lists the sections, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from endofed.shared.config.coercion import ConfigError
from endofed.shared.config.threshold_rule import parse_threshold_rule


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
        if self.image_size < 32:
            raise ConfigError(f"config key 'image-size': must be >= 32, got {self.image_size}")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'batch-size': must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"config key 'val-fraction': must be in [0, 1), got {self.val_fraction}"
            )


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


@dataclass(frozen=True)
class ModelConfig:
    """Which improved-SSD preset to build and how to fine-tune it."""

    preset: str = "tiny"
    # "auto" (the preset's installed ImageNet weights if it has them), "pretrained"
    # (required), "none" (random) or a weights / checkpoint file.
    weights_path: str = "auto"
    # "global" (everything trains), "local" (the backbone body is frozen), or "auto":
    # local under per-site DP (train the new layers on pretrained features, De et al.
    # 2022), global otherwise. See EndoFedConfig.finetune_mode.
    finetune: str = "auto"

    def validate(self) -> None:
        if self.finetune not in ("auto", "global", "local"):
            raise ConfigError(
                "config key 'finetune': expected 'auto', 'global' or 'local', "
                f"got {self.finetune!r}"
            )


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
        if self.epochs < 1:
            raise ConfigError(f"config key 'local-epochs': must be >= 1, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ConfigError(
                f"config key 'learning-rate': must be > 0, got {self.learning_rate}"
            )
        if not 0.0 < self.backbone_lr_scale <= 1.0:
            raise ConfigError(
                "config key 'backbone-lr-scale': must be in (0, 1], "
                f"got {self.backbone_lr_scale}"
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

    def validate(self) -> None:
        if self.num_server_rounds < 1:
            raise ConfigError(
                f"config key 'num-server-rounds': must be >= 1, got {self.num_server_rounds}"
            )
        parse_threshold_rule(self.threshold_rule)
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"config key 'run-name': invalid name {self.run_name!r}")
        if self.server_learning_rate <= 0:
            raise ConfigError(
                "config key 'server-learning-rate': must be > 0, "
                f"got {self.server_learning_rate}"
            )
        for key, value in (("server-momentum", self.server_momentum),
                           ("server-beta-1", self.server_beta_1),
                           ("server-beta-2", self.server_beta_2)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"config key '{key}': must be in [0, 1), got {value}")
        if self.server_tau <= 0:
            raise ConfigError(f"config key 'server-tau': must be > 0, got {self.server_tau}")
        if not 0.0 <= self.trimmed_beta < 0.5:
            raise ConfigError(
                "config key 'trimmed-beta': must be in [0, 0.5) (the share cut at each "
                f"end), got {self.trimmed_beta}"
            )
        if self.num_malicious_nodes < 0:
            raise ConfigError(
                f"config key 'num-malicious-nodes': must be >= 0, got {self.num_malicious_nodes}"
            )


@dataclass(frozen=True)
class SiteConfig:
    """Where a site's data lives (node config)."""

    data_path: Path | None = None
    site_name: str = ""
    partition_id: int = -1
    num_partitions: int = 0
    synthetic_images_per_site: int = 24
    synthetic_dir: Path | None = None
