"""One typed configuration, built in one place from Flower run/node config or CLI flags.

Every section is a frozen dataclass. Flower keys are the field names in kebab case
(``local_epochs`` <-> ``local-epochs``) unless a field declares another key in its
metadata (``dp_epsilon`` in :class:`PrivacyConfig` is ``dp-epsilon``). Unknown keys
are ignored by a section (they belong to another one), but a value of the wrong type
raises :class:`ConfigError` naming the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name.replace("_", "-"))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        last_exc: Exception | None = None
        for a in inner:
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                last_exc = exc
        raise last_exc or ConfigError(f"config key '{key}': cannot use {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(_coerce(v, args[0], key) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if annotation is Path:
            return Path(str(value)).expanduser()
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(
            f"config key '{key}': expected {name}, got {value!r}"
        ) from None
    return value


def section_from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a kebab-case mapping (extra keys are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = _key(f)
        if key in values:
            kwargs[f.name] = _coerce(values[key], hints[f.name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def section_to_mapping(obj: Any) -> dict[str, Any]:
    """Inverse of :func:`section_from_mapping` (Flower-safe scalar values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, tuple):
            v = ",".join(str(x) for x in v)
        out[_key(f)] = v
    return out


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
    weights_path: Path | None = None
    finetune: str = "global"

    def validate(self) -> None:
        if self.finetune not in ("global", "local"):
            raise ConfigError(
                f"config key 'finetune': expected 'global' or 'local', got {self.finetune!r}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """The training engine's knobs (shared by central, federated and simulated runs)."""

    epochs: int = field(default=1, metadata={"key": "local-epochs"})
    max_steps: int = 0  # 0 = no cap on steps per epoch
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
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


@dataclass(frozen=True)
class PrivacyConfig:
    """Per-site differential privacy and secure aggregation."""

    epsilon: float = field(default=0.0, metadata={"key": "dp-epsilon"})  # 0 = DP off
    delta: float = field(default=1e-5, metadata={"key": "dp-delta"})
    max_grad_norm: float = field(default=1.0, metadata={"key": "dp-max-grad-norm"})
    accountant: str = field(default="prv", metadata={"key": "dp-accountant"})
    # A round whose calibrated noise would exceed this is declined (the budget left
    # is too small for a useful update).
    max_noise_multiplier: float = field(
        default=10.0, metadata={"key": "dp-max-noise-multiplier"}
    )
    # A *new* study (study-id not yet in the site's ledger) starts only if at least this
    # share of dp-epsilon is left; a finished study's calibration slack is not a budget.
    min_study_budget: float = field(default=0.05, metadata={"key": "dp-min-study-budget"})
    # Opacus secure_mode (CSPRNG noise, needs torchcsprng); off: noise and sampling use
    # generators seeded from OS entropy, never from the run config's seed.
    secure_rng: bool = field(default=False, metadata={"key": "dp-secure-rng"})
    # Physical batch cap under DP (Opacus BatchMemoryManager); 0 = no cap.
    max_physical_batch_size: int = field(
        default=0, metadata={"key": "dp-max-physical-batch-size"}
    )
    secagg: bool = False
    # SecAgg+ protocol: share of the round's sites each secret is shared with, share of
    # those needed to reconstruct, and the range weights are clipped to for quantisation.
    secagg_num_shares: float = 1.0
    secagg_reconstruction_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    # Example counts are scaled by this before quantisation: set it near the largest
    # site's training-set size (larger = coarser aggregate, smaller = big sites capped).
    secagg_max_weight: float = 1000.0
    # Central (site-level) DP with Flower's strategy wrappers:
    # none | server-fixed | server-adaptive | client-fixed | client-adaptive
    central_dp: str = "none"
    central_dp_noise: float = 1.0
    central_dp_clip: float = 1.0
    # Where the site's privacy ledger lives (node config); None = privacy.ledger default.
    state_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0

    def validate(self) -> None:
        if self.epsilon < 0:
            raise ConfigError(f"config key 'dp-epsilon': must be >= 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"config key 'dp-delta': must be in (0, 1), got {self.delta}")
        if self.max_grad_norm <= 0:
            raise ConfigError(
                f"config key 'dp-max-grad-norm': must be > 0, got {self.max_grad_norm}"
            )
        if self.max_noise_multiplier < 0.3:
            raise ConfigError(
                "config key 'dp-max-noise-multiplier': must be >= 0.3, "
                f"got {self.max_noise_multiplier}"
            )
        if self.secure_rng and importlib.util.find_spec("torchcsprng") is None:
            raise ConfigError(
                "config key 'dp-secure-rng': Opacus' secure mode needs the torchcsprng "
                "package, which is not installed (it has no build for this torch); set "
                "dp-secure-rng=false: noise and sampling then use generators seeded from "
                "OS entropy"
            )
        if not 0 <= self.min_study_budget < 1:
            raise ConfigError(
                "config key 'dp-min-study-budget': must be in [0, 1) (a share of "
                f"dp-epsilon), got {self.min_study_budget}"
            )
        if self.max_physical_batch_size < 0:
            raise ConfigError(
                "config key 'dp-max-physical-batch-size': must be >= 0 (0 = no cap), "
                f"got {self.max_physical_batch_size}"
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
    server_learning_rate: float = 0.1
    round_timeout: float = 3600.0
    eval_data_path: Path | None = None

    def validate(self) -> None:
        if self.num_server_rounds < 1:
            raise ConfigError(
                f"config key 'num-server-rounds': must be >= 1, got {self.num_server_rounds}"
            )
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"config key 'run-name': invalid name {self.run_name!r}")


@dataclass(frozen=True)
class SiteConfig:
    """Where a site's data lives (node config)."""

    data_path: Path | None = None
    site_name: str = ""
    partition_id: int = -1
    num_partitions: int = 0
    synthetic_images_per_site: int = 24
    synthetic_dir: Path | None = None


@dataclass(frozen=True)
class EndoFedConfig:
    """All sections together; the single object passed down the call chain."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    preprocess: PreprocessConfigRef = field(default_factory=PreprocessConfigRef)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EndoFedConfig:
        """Build every section from one flat kebab-case mapping."""
        kwargs = {
            f.name: section_from_mapping(f.type_cls, values)  # type: ignore[attr-defined]
            for f in _SECTIONS
        }
        return cls(**kwargs)

    @classmethod
    def from_flower(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
    ) -> EndoFedConfig:
        """Run config first, node config (site-specific) overrides it.

        At a deployed site (node config without ``partition-id``) the hospital's own
        settings are protected from the coordinator's run config (see
        :func:`site_owned_run_config`).
        """
        node = dict(node_config or {})
        merged = dict(run_config)
        if node and "partition-id" not in node:
            merged = site_owned_run_config(merged, node)
        merged.update(node)
        return cls.from_mapping(merged)

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out.update(section_to_mapping(getattr(self, f.name)))
        return out

    def replace(self, **sections: Any) -> EndoFedConfig:
        return dataclasses.replace(self, **sections)


#: Keys only the hospital sets (node config) in a deployment: a coordinator must not be
#: able to move a site's privacy ledger (a fresh ledger would be a fresh budget).
SITE_OWNED_KEYS: tuple[str, ...] = ("state-dir",)


def site_owned_run_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The run config as a deployed site accepts it, given the site's node config.

    * ``state-dir`` from the run config is ignored (the ledger stays where the site
      keeps it);
    * a site that sets its own ``dp-epsilon`` owns all its ``dp-*`` settings: the run
      config can neither switch DP off nor loosen delta, clipping or accountant; the
      site's values, or the built-in defaults, apply.
    """
    out = dict(run_config)
    for key in SITE_OWNED_KEYS:
        if out.get(key) not in (None, "") and key not in node_config:
            log.warning("run config sets the site-owned key '%s'; ignored (set it in the "
                        "SuperNode's --node-config)", key)
        out.pop(key, None)
    if float(node_config.get("dp-epsilon", 0) or 0) > 0:
        defaults = section_to_mapping(PrivacyConfig())
        for key in [k for k in out if k.startswith("dp-")]:
            if key not in node_config and out[key] != defaults.get(key, out[key]):
                log.warning("run config sets '%s=%s'; this site owns its DP settings "
                            "(node config dp-epsilon), so %r applies", key, out[key],
                            defaults.get(key))
            out.pop(key)
    return out


@dataclass(frozen=True)
class _Section:
    name: str
    type_cls: type


_SECTIONS = [
    _Section("data", DataConfig),
    _Section("model", ModelConfig),
    _Section("train", TrainConfig),
    _Section("privacy", PrivacyConfig),
    _Section("federation", FederationConfig),
    _Section("site", SiteConfig),
    _Section("preprocess", PreprocessConfigRef),
]
