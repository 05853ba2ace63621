"""Who may set which key: the node config, the run config, and each CLI command.

A key that is known but that the place it is given cannot honour is an error, never
recorded and ignored:

* :data:`NODE_KEYS` — what a SuperNode's ``--node-config`` may set: the site's data,
  name and (simulation) partition, its privacy budget and ledger (every ``dp-*`` key,
  ``state-dir``), its compute and its preprocessing. Training and aggregation settings
  are the coordinator's (run config); a site setting them would silently train a
  different study or do nothing.
* :data:`NODE_ONLY_KEYS` — what only a node config may set (refused in a run config).
* :data:`COMMAND_SCOPES` — the keys an ``endofed`` command's ``-c KEY=VALUE`` (and its
  config flags) may set, with the flag to use where the command sets a key itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from endofed.shared.config.coercion import ConfigError, section_keys
from endofed.shared.config.privacy import PrivacyConfig
from endofed.shared.config.sections import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    PreprocessConfigRef,
    TrainConfig,
)

#: The per-site DP-SGD keys (``dp-epsilon``, ``dp-delta``, ...).
DP_KEYS: tuple[str, ...] = tuple(k for k in section_keys(PrivacyConfig) if k.startswith("dp-"))
#: Secure aggregation and central (site-level) DP: the federation's, never one site's.
AGGREGATION_PRIVACY_KEYS: tuple[str, ...] = tuple(
    k for k in section_keys(PrivacyConfig) if k.startswith(("secagg", "central-dp"))
)

#: Set only by a node config: Flower's simulation partition, the site's own name.
NODE_ONLY_KEYS: frozenset[str] = frozenset({"partition-id", "num-partitions", "site-name"})

#: What a node config may set (DESIGN.md: a hospital's data, privacy budget and compute).
NODE_KEYS: frozenset[str] = frozenset({
    *NODE_ONLY_KEYS, "data-path", "synthetic-dir", "synthetic-images-per-site",
    *DP_KEYS, "state-dir",
    "device", "threads", "workers", "amp",
    *section_keys(PreprocessConfigRef),
})


def check_node_keys(keys: Iterable[str]) -> None:
    """Refuse a known key that a site's node config cannot honour."""
    for key in keys:
        if key not in NODE_KEYS:
            raise ConfigError(
                f"node config: '{key}' is the coordinator's setting, not a site's; set it "
                "in the run config (a node config may set data-path, site-name, state-dir, "
                "dp-*, device, threads, workers, amp and preprocess-*)", key=key,
            )


def check_run_keys(keys: Iterable[str]) -> None:
    """Refuse a node-only key in a run config."""
    for key in keys:
        if key in NODE_ONLY_KEYS:
            raise ConfigError(
                f"run config: '{key}' belongs to each site; set it in the SuperNode's "
                "--node-config", key=key,
            )


@dataclass(frozen=True)
class CommandScope:
    """The keys one CLI command honours, and what to use instead of the others."""

    command: str
    honoured: frozenset[str]
    #: key -> how to get the effect instead (a flag of the command, another command).
    instead: Mapping[str, str] = field(default_factory=dict)
    #: why the remaining keys are refused
    reason: str = ""

    def check(self, keys: Iterable[str]) -> None:
        """Raise :class:`ConfigError` for the first key this command cannot honour."""
        for key in keys:
            if key in self.honoured:
                continue
            how = self.instead.get(key, self.reason)
            raise ConfigError(
                f"config key '{key}': {self.command} does not use it ({how}); remove it",
                key=key,
            )


_FEDERATED = ("a federated-run setting: use it with endofed simulate or flwr run")

TRAIN_SCOPE = CommandScope(
    command="train",
    honoured=frozenset({
        *section_keys(DataConfig), *section_keys(PreprocessConfigRef),
        *section_keys(ModelConfig), *section_keys(TrainConfig), "threshold-rule",
        "tracking", "tracking-dir",  # --track: mlflow / tensorboard in OUT
        *DP_KEYS,  # DP-SGD through endofed.privacy (train -c dp-epsilon=8)
    } - {"proximal-mu"}),
    instead={
        "data-path": "give the site folders as DATA arguments",
        "run-name": "train writes to --out",
        "runs-dir": "train writes to --out; the preprocessing cache is "
                    "preprocess-cache-dir",
        "num-server-rounds": "central training has no rounds: use --epochs",
        "proximal-mu": "FedProx's term pulls towards the round's global model, which "
                       "central training does not have",
        "partition": "train pools its DATA folders; use endofed simulate --partition",
        "eval-data-path": "use endofed evaluate on the trained model",
        "state-dir": "not used by train",
        **{k: "set by each site's node config" for k in NODE_ONLY_KEYS},
    },
    reason=_FEDERATED,
)

_BY_ARMS = "the grid sets it per arm: use --arms"
SIMULATE_SCOPE = CommandScope(
    command="simulate",
    honoured=frozenset({
        *section_keys(DataConfig), *section_keys(PreprocessConfigRef),
        *section_keys(ModelConfig), *section_keys(TrainConfig), *DP_KEYS,
        *AGGREGATION_PRIVACY_KEYS, *section_keys(FederationConfig),
    } - {
        "preset", "image-size", "batch-size", "local-epochs", "val-fraction", "split-seed",
        "seed", "preprocess", "dp-epsilon", "strategy", "num-server-rounds", "run-name",
        "runs-dir", "fraction-train", "fraction-evaluate", "min-train-nodes",
        "min-evaluate-nodes", "min-available-nodes", "eval-data-path", "tracking-dir",
    }),
    instead={
        "preset": "use --preset", "image-size": "use --image-size",
        "batch-size": "use --batch-size", "local-epochs": "use --local-epochs",
        "val-fraction": "use --val-fraction", "split-seed": "use --split-seed",
        "seed": "use --seeds", "preprocess": "use --arms X+prep or --preprocess-ablation",
        "dp-epsilon": "use --dp", "strategy": _BY_ARMS,
        "num-server-rounds": "use --rounds", "data-path": "use --data",
        "partition": "use --partition", "synthetic-images-per-site": "use --images-per-site",
        "synthetic-dir": "simulate writes its hospitals under --out",
        "eval-data-path": "use --holdout-site",
        "run-name": "every arm gets its own run under --out",
        "runs-dir": "every arm gets its own run under --out",
        "state-dir": "every run keeps its sites' state under --out",
        "tracking-dir": "the grid keeps one tracking store in --out (--track)",
        **{k: "simulate samples every hospital in every round (--sites)"
           for k in ("fraction-train", "fraction-evaluate", "min-train-nodes",
                     "min-evaluate-nodes", "min-available-nodes")},
        **{k: "set per virtual hospital by simulate" for k in NODE_ONLY_KEYS},
    },
    reason="not a setting of the simulated hospitals",
)

#: command -> the keys its ``-c`` and config flags may set.
COMMAND_SCOPES: dict[str, CommandScope] = {s.command: s for s in (TRAIN_SCOPE, SIMULATE_SCOPE)}


def command_scope(command: str) -> CommandScope:
    """The declared scope of ``command`` (every command that takes ``-c`` has one)."""
    try:
        return COMMAND_SCOPES[command]
    except KeyError:
        raise KeyError(
            f"endofed {command} takes config keys but declares no scope; add it to "
            "COMMAND_SCOPES in shared/config/scope.py"
        ) from None
