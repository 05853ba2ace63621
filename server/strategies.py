"""Strategy registry: run-config name -> Flower Message-API strategy."""

from __future__ import annotations

from collections.abc import Callable

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


STRATEGIES: dict[str, StrategyBuilder] = {
    "fedavg": lambda c, a: FedAvg(**_common(c)),
    "fedprox": lambda c, a: FedProx(
        **_common(c), proximal_mu=c.train.proximal_mu if c.train.proximal_mu > 0 else 0.01
    ),
    "fedavgm": lambda c, a: FedAvgM(
        **_common(c), server_learning_rate=1.0, server_momentum=0.9
    ),
    "fedadam": lambda c, a: FedAdam(**_common(c), eta=c.federation.server_learning_rate),
    "fedyogi": lambda c, a: FedYogi(**_common(c), eta=c.federation.server_learning_rate),
    "fedadagrad": lambda c, a: FedAdagrad(**_common(c), eta=c.federation.server_learning_rate),
    "fedmedian": lambda c, a: FedMedian(**_common(c)),
    "fedtrimmedavg": lambda c, a: FedTrimmedAvg(**_common(c), beta=0.2),
    "krum": lambda c, a: Krum(**_common(c), num_malicious_nodes=0),
}


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
    strategy = builder(cfg, initial_arrays)
    mode = cfg.privacy.central_dp.lower()
    if mode in ("", "none"):
        return strategy
    try:
        wrap = CENTRAL_DP[mode]
    except KeyError:
        raise ConfigError(
            f"config key 'central-dp': unknown {cfg.privacy.central_dp!r}; "
            f"choose one of {['none', *sorted(CENTRAL_DP)]}"
        ) from None
    return wrap(strategy, cfg)


# Attributes of stateful strategies (FedOpt family, FedAvgM) that must survive a
# server restart so that a resumed run continues with the same optimizer moments.
_STATE_ATTRS = ("m_t", "v_t", "current_arrays", "momentum_vector", "server_opt_state")


def strategy_state(strategy: Strategy) -> dict[str, tuple[str, object]]:
    """The strategy's mutable state as ``name -> (kind, numpy value)`` (picklable)."""
    out: dict[str, tuple[str, object]] = {}
    for name in _STATE_ATTRS:
        value = getattr(strategy, name, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            out[name] = ("arrayrecord", {k: v.numpy() for k, v in value.items()})
        elif isinstance(value, dict):
            out[name] = ("dict", {k: np.asarray(v) for k, v in value.items()})
        elif isinstance(value, list):
            out[name] = ("list", [np.asarray(v) for v in value])
    return out


def load_strategy_state(strategy: Strategy, state: dict[str, tuple[str, object]]) -> None:
    """Inverse of :func:`strategy_state`."""
    for name, (kind, value) in state.items():
        if kind == "arrayrecord":
            value = ArrayRecord({k: Array(np.asarray(v)) for k, v in value.items()})
        setattr(strategy, name, value)
