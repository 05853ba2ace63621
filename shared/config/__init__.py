"""One typed configuration, built in one place from Flower run/node config or CLI flags.

* :mod:`.coercion` — Flower keys, typed value coercion and range checks, :class:`ConfigError`;
* :mod:`.keys` — unknown-key errors naming the closest known key;
* :mod:`.choices` — the names choice-valued keys may take (kept equal to the registries);
* :mod:`.sections` — the data, preprocess, model, train, federation and site sections;
* :mod:`.privacy` — the privacy section (DP, SecAgg+, central DP; csprng probe);
* :mod:`.scope` — which keys a node config, a run config and each CLI command may set;
* :mod:`.trust` — which settings a deployed site keeps from its own node config;
* :mod:`.flower` — :class:`EndoFedConfig`, merging run config and node config.

Every section is a frozen dataclass. Flower keys are the field names in kebab case
(``local_epochs`` <-> ``local-epochs``) unless a field declares another key in its
metadata (``dp_epsilon`` in :class:`PrivacyConfig` is ``dp-epsilon``). The rules, the
same for CLI flags, ``-c KEY=VALUE``, the Flower run config and the node config:

* a key no section declares is a :class:`ConfigError` naming it and the closest known
  key (``unknown key 'dp-epislon' (did you mean 'dp-epsilon'?)``);
* a known key the place it is given cannot honour is an error too, never recorded and
  ignored (:mod:`.scope`: ``train -c strategy=fedadam``, ``strategy`` in a node config);
* a value of the wrong type, out of range (``nan`` included) or not among the choices
  raises :class:`ConfigError` naming the key, the value and what is expected;
* ``run-name`` is one safe folder name (no ``..``, ``/``, ``\\``, leading ``-`` or
  ``.``, control characters).
"""

from endofed.shared.config.coercion import (
    ConfigError,
    section_from_mapping,
    section_keys,
    section_to_mapping,
)
from endofed.shared.config.flower import EndoFedConfig
from endofed.shared.config.privacy import PrivacyConfig
from endofed.shared.config.scope import COMMAND_SCOPES, NODE_KEYS, NODE_ONLY_KEYS
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
    "COMMAND_SCOPES",
    "NODE_KEYS",
    "NODE_ONLY_KEYS",
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
    "section_keys",
    "section_to_mapping",
    "site_owned_run_config",
]
