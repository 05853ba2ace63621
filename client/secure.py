"""Client side of secure aggregation (SecAgg+, flwr 1.41 legacy workflow).

``secagg_when_requested`` applies Flower's ``secaggplus_mod`` only to messages that
carry the SecAgg+ protocol record, so the same ClientApp serves plain and secure
runs. In the masked-vector stage the mod calls the ClientApp with a legacy ``FitIns``
message and expects a legacy ``FitRes`` reply: :func:`legacy_train_reply` adapts the
one training path (:func:`endofed.client.training.local_train`) to that format.

A site whose privacy budget does not allow the round declines it as on the plain
path: its ``FitRes`` carries ``num_examples = 0`` and the decline metrics, and its
masked vector is the zero update (secaggplus_mod weights it by ``num_examples``), so the
SecAgg+ protocol completes for everybody else and the server reads the decline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

from endofed.client.training import decline_metrics
from endofed.privacy.accounting import PrivacyBudgetError
from endofed.shared import protocol

log = logging.getLogger(__name__)


def secagg_when_requested(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Run ``secaggplus_mod`` only for SecAgg+ protocol messages."""
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy_train(msg: Message) -> bool:
    """True for the legacy ``FitIns`` message of the SecAgg+ masked-vector stage."""
    return protocol.LEGACY_FITINS_PARAMETERS in msg.content.array_records


def legacy_train_reply(
    msg: Message,
    names: list[str],
    train: Callable[[dict[str, np.ndarray], Mapping[str, Any]], tuple[dict, dict]],
) -> Message:
    """Decode ``FitIns``, run ``train(arrays, config)``, reply with a legacy ``FitRes``."""
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    values = parameters_to_ndarrays(fitins.parameters)
    if len(values) != len(names):
        raise ValueError(
            f"secure round sent {len(values)} arrays, this site's model has {len(names)}"
        )
    config = dict(fitins.config)
    try:
        state, metrics = train(dict(zip(names, values)), config)
    except PrivacyBudgetError as exc:
        log.warning("declining secure round %s: %s", config.get(protocol.SERVER_ROUND), exc)
        # Zero weight: the masked vector adds nothing to the sum or to the weights.
        state = {n: np.zeros_like(v) for n, v in zip(names, values)}
        metrics = decline_metrics(exc)
    fitres = FitRes(
        status=Status(code=Code.OK, message="ok"),
        parameters=ndarrays_to_parameters([state[n] for n in names]),
        num_examples=int(metrics.get(protocol.NUM_EXAMPLES, 0)),
        metrics={k: float(v) for k, v in metrics.items()},
    )
    return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def central_dp_when_requested(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Client-side clipping for Flower's central-DP wrappers, when the server asks.

    The ``client-fixed`` / ``client-adaptive`` strategy wrappers put a clipping norm
    into the train config; only then is the update clipped by Flower's mod.
    """
    config = msg.content.config_records.get(protocol.CONFIG) if msg.has_content() else None
    if config is None or protocol.CLIPPING_NORM not in config:
        return call_next(msg, context)
    adaptive = str(context.run_config.get("central-dp", "")) == "client-adaptive"
    mod = adaptiveclipping_mod if adaptive else fixedclipping_mod
    return mod(msg, context, call_next)
