"""EndoFedConfig: every section together, built from a Flower run config + node config.

The run config (the coordinator's) is read first and the node config (the site's)
overrides it; at a deployed site the trust policy
(:func:`~endofed.shared.config.trust.site_owned_run_config`) first drops the run-config
keys the site owns. Each section takes the keys it declares; a key no section declares
is an error naming it and the closest known key, and so is a key the place it was
given cannot honour (:mod:`endofed.shared.config.scope`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from endofed.shared.config.coercion import (
    ConfigError,
    section_from_mapping,
    section_keys,
    section_to_mapping,
)
from endofed.shared.config.keys import check_known_keys
from endofed.shared.config.privacy import PrivacyConfig
from endofed.shared.config.scope import check_node_keys, check_run_keys
from endofed.shared.config.sections import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    PreprocessConfigRef,
    SiteConfig,
    TrainConfig,
)
from endofed.shared.config.trust import site_owned_run_config


@dataclass(frozen=True)
class EndoFedConfig:
    """All sections together; the single object passed down the call chain.

    Its fields are the one list of sections (in the order they are built and checked).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    preprocess: PreprocessConfigRef = field(default_factory=PreprocessConfigRef)

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        """Every key a section declares (the Flower run + node config vocabulary)."""
        sections = typing.get_type_hints(cls)
        return frozenset(k for f in dataclasses.fields(cls) for k in section_keys(sections[f.name]))

    @classmethod
    def check_keys(cls, keys: Iterable[str], *, source: str | None = None) -> None:
        """Raise :class:`ConfigError` for a key no section declares (closest key named)."""
        check_known_keys(list(keys), cls.known_keys(), source=source)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, source: str | None = None
    ) -> EndoFedConfig:
        """Build every section from one flat kebab-case mapping.

        Every key must be known, every value of its field's type and range; errors are
        :class:`ConfigError` naming the key, prefixed with ``source`` (e.g. a file).
        """
        cls.check_keys(values, source=source)
        sections = typing.get_type_hints(cls)
        try:
            kwargs = {
                f.name: section_from_mapping(sections[f.name], values)
                for f in dataclasses.fields(cls)
            }
        except ConfigError as exc:
            if source:
                raise ConfigError(f"{source}: {exc}", key=exc.key) from None
            raise
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
        cls.check_keys(run_config, source="run config")
        check_run_keys(run_config)
        cls.check_keys(node, source="node config")
        check_node_keys(node)
        merged = dict(run_config)
        if str(merged.get("finetune", "auto")) == "auto" and "finetune" not in node:
            # The server builds the global model from the run config alone, so "auto"
            # follows the coordinator's dp-epsilon: server and sites send the same
            # trainable tensors even where a site keeps its own DP settings.
            merged["finetune"] = _auto_finetune(merged.get("dp-epsilon", 0))
        if node and "partition-id" not in node:
            merged = site_owned_run_config(merged, node)
        merged.update(node)
        try:
            return cls.from_mapping(merged)
        except ConfigError as exc:
            origin = "node config" if exc.key in node else "run config"
            raise ConfigError(f"{origin}: {exc}", key=exc.key) from None

    @property
    def finetune_mode(self) -> str:
        """``finetune`` with ``auto`` resolved: ``local`` under per-site DP, else ``global``."""
        if self.model.finetune != "auto":
            return self.model.finetune
        return _auto_finetune(self.privacy.epsilon)

    @property
    def dp_batch_sizes(self) -> tuple[int, int]:
        """Under DP: (expected logical Poisson batch, physical batch cap)."""
        logical = self.privacy.logical_batch_size or self.data.batch_size
        physical = self.privacy.max_physical_batch_size or self.data.batch_size
        return logical, min(physical, logical)

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out.update(section_to_mapping(getattr(self, f.name)))
        return out

    def replace(self, **sections: Any) -> EndoFedConfig:
        return dataclasses.replace(self, **sections)


def _auto_finetune(dp_epsilon: Any) -> str:
    """``finetune=auto``: freeze the pretrained body under per-site DP."""
    try:
        return "local" if float(dp_epsilon or 0) > 0 else "global"
    except (TypeError, ValueError):
        return "global"  # an invalid dp-epsilon is reported by PrivacyConfig.validate
