"""One typed configuration, built in one place from Flower run/node config or CLI flags.

* :mod:`.coercion` — Flower keys and typed value coercion, :class:`ConfigError`;
* :mod:`.sections` — the data, preprocess, model, train, federation and site sections;
* :mod:`.privacy` — the privacy section (DP, SecAgg+, central DP; csprng probe);
* :mod:`.trust` — which settings a deployed site keeps from its own node config;
* :mod:`.flower` — :class:`EndoFedConfig`, merging run config and node config.

Every section is a frozen dataclass. Flower keys are the field names in kebab case
(``local_epochs`` <-> ``local-epochs``) unless a field declares another key in its
metadata (``dp_epsilon`` in :class:`PrivacyConfig` is ``dp-epsilon``). Unknown keys
are ignored by a section (they belong to another one), but a value of the wrong type
raises :class:`ConfigError` naming the key, the value and what was expected.
"""

from endofed.shared.config.coercion import (
    ConfigError,
    section_from_mapping,
    section_to_mapping,
)
from endofed.shared.config.flower import EndoFedConfig
from endofed.shared.config.privacy import PrivacyConfig
from endofed.shared.config.sections import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    PreprocessConfigRef,
    SiteConfig,
    TrainConfig,
)
from endofed.shared.config.trust import SITE_OWNED_KEYS, site_owned_run_config

__all__ = [
    "SITE_OWNED_KEYS",
    "ConfigError",
    "DataConfig",
    "EndoFedConfig",
    "FederationConfig",
    "ModelConfig",
    "PreprocessConfigRef",
    "PrivacyConfig",
    "SiteConfig",
    "TrainConfig",
    "section_from_mapping",
    "section_to_mapping",
    "site_owned_run_config",
]
