"""Strategy registry: run-config name -> Flower Message-API strategy, and its state.

Every knob a builder passes to Flower comes from the run config
(:class:`~endofed.shared.config.FederationConfig`, ``proximal-mu`` from the train
section); :data:`STRATEGY_KEYS` says which strategy reads which key. A key set away
from its default under a strategy that does not read it is reported, never silently
dropped.

:func:`strategy_state` / :func:`load_strategy_state` carry what a strategy learns
round by round (FedOpt moments, FedAvgM momentum, the adaptive clip norm of a DP
wrapper...) through a checkpoint: they walk the ``.strategy`` chain of Flower's DP
wrappers and keep every layer's state as numpy arrays and Python scalars, no pickles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from endofed.shared.config import ConfigError, EndoFedConfig

log = logging.getLogger(__name__)

StrategyBuilder = Callable[[EndoFedConfig, ArrayRecord], Strategy]


def _common(cfg: EndoFedConfig) -> dict:
    f = cfg.federation
    return {
        "fraction_train": f.fraction_train,
        "fraction_evaluate": f.fraction_evaluate,
        "min_train_nodes": f.min_train_nodes,
        "min_evaluate_nodes": f.min_evaluate_nodes,
        "min_available_nodes": f.min_available_nodes,
    }


def _fedprox(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
    mu = cfg.train.proximal_mu
    if mu <= 0:
        raise ConfigError(
            f"config key 'proximal-mu': strategy fedprox needs proximal-mu > 0 (the weight "
            f"of the proximal term each site adds; Li et al. 2020 use 0.001-1), got {mu}; "
            "set it, e.g. proximal-mu=0.01, or choose strategy fedavg"
        )
    return FedProx(**_common(cfg), proximal_mu=mu)


def _fedavgm(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
    f = cfg.federation
    return FedAvgM(**_common(cfg), server_learning_rate=f.server_learning_rate,
                   server_momentum=f.server_momentum)


def _fedopt(cls: type) -> StrategyBuilder:
    """FedAdam / FedYogi: eta, beta_1, beta_2, tau from the run config.

    ``eta_l`` (the sites' learning rate) is only displayed by Flower; it is given the
    sites' real one, ``learning-rate``.
    """

    def build(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
        f = cfg.federation
        return cls(**_common(cfg), eta=f.server_learning_rate, eta_l=cfg.train.learning_rate,
                   beta_1=f.server_beta_1, beta_2=f.server_beta_2, tau=f.server_tau)

    return build


def _fedadagrad(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
    # Flower's FedAdagrad fixes beta_1 = 0 and accumulates v_t without decay.
    f = cfg.federation
    return FedAdagrad(**_common(cfg), eta=f.server_learning_rate,
                      eta_l=cfg.train.learning_rate, tau=f.server_tau)


def _fedtrimmedavg(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
    return FedTrimmedAvg(**_common(cfg), beta=cfg.federation.trimmed_beta)


def _krum(cfg: EndoFedConfig, arrays: ArrayRecord) -> Strategy:
    f = cfg.federation
    if f.num_malicious_nodes and 2 * f.num_malicious_nodes + 3 > f.min_train_nodes:
        log.warning(
            "krum: num-malicious-nodes=%d needs at least %d updates per round to tolerate "
            "that many Byzantine sites; a round with min-train-nodes=%d has fewer",
            f.num_malicious_nodes, 2 * f.num_malicious_nodes + 3, f.min_train_nodes,
        )
    return Krum(**_common(cfg), num_malicious_nodes=f.num_malicious_nodes)


STRATEGIES: dict[str, StrategyBuilder] = {
    "fedavg": lambda c, a: FedAvg(**_common(c)),
    "fedprox": _fedprox,
    "fedavgm": _fedavgm,
    "fedadam": _fedopt(FedAdam),
    "fedyogi": _fedopt(FedYogi),
    "fedadagrad": _fedadagrad,
    "fedmedian": lambda c, a: FedMedian(**_common(c)),
    "fedtrimmedavg": _fedtrimmedavg,
    "krum": _krum,
}

#: Run-config key -> the strategies whose builder reads it.
STRATEGY_KEYS: dict[str, frozenset[str]] = {
    "proximal-mu": frozenset({"fedprox"}),
    "server-learning-rate": frozenset({"fedavgm", "fedadam", "fedyogi", "fedadagrad"}),
    "server-momentum": frozenset({"fedavgm"}),
    "server-beta-1": frozenset({"fedadam", "fedyogi"}),
    "server-beta-2": frozenset({"fedadam", "fedyogi"}),
    "server-tau": frozenset({"fedadam", "fedyogi", "fedadagrad"}),
    "trimmed-beta": frozenset({"fedtrimmedavg"}),
    "num-malicious-nodes": frozenset({"krum"}),
}


def unused_strategy_keys(cfg: EndoFedConfig) -> list[str]:
    """Strategy keys set away from their default that the chosen strategy does not read."""
    name = cfg.federation.strategy.lower()
    values, defaults = cfg.to_mapping(), EndoFedConfig().to_mapping()
    return [key for key, users in STRATEGY_KEYS.items()
            if name not in users and values.get(key) != defaults.get(key)]


def _sampled(cfg: EndoFedConfig) -> int:
    return max(cfg.federation.min_train_nodes, cfg.federation.min_available_nodes)


def _count_stddev(cfg: EndoFedConfig) -> float:
    # Flower's default (sampled/20) is too small for a handful of hospitals: the
    # clipped-count noise must exceed half the noise multiplier (Andrew et al. 2019).
    return max(_sampled(cfg) / 20, cfg.privacy.central_dp_noise)


# Central (user/site-level) DP: Flower's wrappers around the chosen strategy.
CENTRAL_DP: dict[str, Callable[[Strategy, EndoFedConfig], Strategy]] = {
    "server-fixed": lambda s, c: DifferentialPrivacyServerSideFixedClipping(
        s, c.privacy.central_dp_noise, c.privacy.central_dp_clip, _sampled(c)
    ),
    "client-fixed": lambda s, c: DifferentialPrivacyClientSideFixedClipping(
        s, c.privacy.central_dp_noise, c.privacy.central_dp_clip, _sampled(c)
    ),
    "server-adaptive": lambda s, c: DifferentialPrivacyServerSideAdaptiveClipping(
        s, c.privacy.central_dp_noise, _sampled(c),
        initial_clipping_norm=c.privacy.central_dp_clip,
        clipped_count_stddev=_count_stddev(c),
    ),
    "client-adaptive": lambda s, c: DifferentialPrivacyClientSideAdaptiveClipping(
        s, c.privacy.central_dp_noise, _sampled(c),
        initial_clipping_norm=c.privacy.central_dp_clip,
        clipped_count_stddev=_count_stddev(c),
    ),
}


def build_strategy(cfg: EndoFedConfig, initial_arrays: ArrayRecord) -> Strategy:
    """The strategy named by run-config ``strategy``, wrapped for central DP if asked."""
    name = cfg.federation.strategy.lower()
    try:
        builder = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"config key 'strategy': unknown {cfg.federation.strategy!r}; "
            f"choose one of {sorted(STRATEGIES)}"
        ) from None
    mode = cfg.privacy.central_dp.lower()
    if mode not in ("", "none") and mode not in CENTRAL_DP:
        raise ConfigError(
            f"config key 'central-dp': unknown {cfg.privacy.central_dp!r}; "
            f"choose one of {['none', *sorted(CENTRAL_DP)]}"
        )
    strategy = builder(cfg, initial_arrays)
    for key in unused_strategy_keys(cfg):
        users = ", ".join(sorted(STRATEGY_KEYS[key]))
        log.warning("config key '%s' is set but strategy %s does not use it (read by: %s)",
                    key, name, users)
    if mode in ("", "none"):
        return strategy
    return CENTRAL_DP[mode](strategy, cfg)


# -- state ------------------------------------------------------------------------------

def strategy_chain(strategy: Strategy) -> Iterator[Strategy]:
    """``strategy`` and every strategy it wraps (Flower's DP wrappers keep it in ``.strategy``)."""
    seen: set[int] = set()
    layer: Any = strategy
    while isinstance(layer, Strategy) and id(layer) not in seen:
        seen.add(id(layer))
        yield layer
        layer = getattr(layer, "strategy", None)


def base_strategy(strategy: Strategy) -> Strategy:
    """The innermost strategy (the one that aggregates) under any DP wrappers."""
    *_, inner = strategy_chain(strategy)
    return inner


def clipping_norm(strategy: Strategy) -> float | None:
    """The clip norm of a central-DP wrapper in the chain (adapted each round if adaptive)."""
    for layer in strategy_chain(strategy):
        value = getattr(layer, "clipping_norm", None)
        if isinstance(value, int | float):
            return float(value)
    return None


#: Everything Flower 1.41's strategies and DP wrappers change after construction (found
#: by reading flwr/serverapp/strategy: attributes assigned outside ``__init__``):
#: FedOpt family: current_arrays, m_t, v_t; FedAvgM: current_arrays, momentum_vector;
#: adaptive-clipping wrappers: clipping_norm (+ current_arrays server-side);
#: server-side fixed clipping: current_arrays. tests/server/test_strategy_state.py checks
#: that a round changes nothing else.
STATE_ATTRS = ("m_t", "v_t", "momentum_vector", "current_arrays", "clipping_norm")

STATE_FORMAT = 2


def _encode(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {"kind": "none"}
    if isinstance(value, ArrayRecord):
        return {"kind": "arrayrecord", "arrays": {k: v.numpy() for k, v in value.items()}}
    if isinstance(value, bool | int | float | np.generic) and np.ndim(value) == 0:
        return {"kind": "scalar", "value": value.item() if isinstance(value, np.generic)
                else value}
    if isinstance(value, np.ndarray):
        return {"kind": "array", "value": value}
    if isinstance(value, Mapping) and all(isinstance(v, np.ndarray) for v in value.values()):
        return {"kind": "dict", "arrays": {str(k): v for k, v in value.items()}}
    if isinstance(value, list | tuple) and all(isinstance(v, np.ndarray) for v in value):
        return {"kind": "list", "arrays": list(value)}
    raise TypeError(f"strategy state {where}: cannot checkpoint a {type(value).__name__}")


def _decode(item: Mapping[str, Any]) -> Any:
    kind = item["kind"]
    if kind == "none":
        return None
    if kind == "scalar":
        return item["value"]
    if kind == "array":
        return np.asarray(item["value"])
    if kind == "arrayrecord":
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in item["arrays"].items()})
    if kind == "dict":
        return {k: np.asarray(v) for k, v in item["arrays"].items()}
    if kind == "list":
        return [np.asarray(v) for v in item["arrays"]]
    raise ValueError(f"unknown strategy state kind {kind!r}")


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The mutable state of ``strategy`` and every strategy it wraps.

    ``{"format": 2, "layers": [{"class": name, "attrs": {attr: encoded}}, ...]}``,
    outermost first; values are numpy arrays and Python scalars only.
    """
    layers = []
    for layer in strategy_chain(strategy):
        name = type(layer).__name__
        if getattr(layer, "accountant", None) is not None:
            log.warning("%s: its privacy accountant is not checkpointed", name)
        attrs = {attr: _encode(getattr(layer, attr), f"{name}.{attr}")
                 for attr in STATE_ATTRS if hasattr(layer, attr)}
        layers.append({"class": name, "attrs": attrs})
    return {"format": STATE_FORMAT, "layers": layers}


def _legacy_layers(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Checkpoints before format 2 held ``{attr: (kind, value)}`` of the outer strategy."""
    attrs: dict[str, Any] = {}
    for attr, (kind, value) in state.items():
        if kind in ("arrayrecord", "dict"):
            attrs[attr] = {"kind": kind, "arrays": dict(value)}
        elif kind == "list":
            attrs[attr] = {"kind": "list", "arrays": list(value)}
    return [{"class": None, "attrs": attrs}]


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`strategy_state`: restore every layer of the chain.

    Layers are matched by class; state of a layer the strategy no longer has (the run
    was resumed with another ``strategy`` or ``central-dp``) is reported and dropped,
    and such a layer starts fresh.
    """
    if not state:
        return
    chain = list(strategy_chain(strategy))
    saved = list(state["layers"]) if "layers" in state else _legacy_layers(state)
    used: set[int] = set()
    for layer in chain:
        name = type(layer).__name__
        match = next((i for i, s in enumerate(saved) if i not in used
                      and s["class"] in (name, None)), None)
        if match is None:
            log.warning("checkpoint has no state for %s; it starts fresh", name)
            continue
        used.add(match)
        for attr, item in saved[match]["attrs"].items():
            if hasattr(layer, attr):
                setattr(layer, attr, _decode(item))
    for i, s in enumerate(saved):
        if i not in used:
            log.warning("checkpoint state of %s is not used: this run's strategy has no "
                        "such layer", s["class"])
