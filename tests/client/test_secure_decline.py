"""A DP site whose budget is spent declines a SecAgg+ round as it declines a plain one."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Message, Metadata
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres

from endofed.client.secure import legacy_train_reply
from endofed.client.training import local_train
from endofed.privacy.outgoing import OutgoingPolicy, audit_content
from endofed.shared.model import trainable_state


def _fitins_message(arrays: dict[str, np.ndarray], config: dict) -> Message:
    """The legacy FitIns message secaggplus_mod hands the ClientApp (masked-vector stage)."""
    fitins = FitIns(ndarrays_to_parameters(list(arrays.values())), config)
    meta = Metadata(run_id=1, message_id="m-1", src_node_id=0, dst_node_id=7,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60.0,
                    message_type="train")  # fmt: skip
    return Message(content=fitins_to_recorddict(fitins, keep_input=True), metadata=meta)


def test_a_spent_budget_declines_the_secure_round_with_zero_weight(make_runtime) -> None:
    rt = make_runtime(**{"num-server-rounds": 1, "run-name": "study-1"})
    weights = {k: v.detach().numpy().copy() for k, v in trainable_state(rt.model).items()}
    local_train(rt, weights, {"server-round": 1, "run-name": "study-1"})  # spends it all

    rt2 = make_runtime(**{"num-server-rounds": 1, "run-name": "study-2"})
    msg = _fitins_message(weights, {"server-round": 1, "run-name": "study-2"})
    names = rt2.model.trainable_names()
    reply = legacy_train_reply(msg, names, lambda a, c: local_train(rt2, a, c))

    fitres = recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 0  # secaggplus_mod weights the masked vector by this
    assert fitres.metrics["declined"] == 1.0 and fitres.metrics["num-examples"] == 0.0
    assert 0.99 * 8.0 <= fitres.metrics["epsilon-spent"] <= 8.0
    assert fitres.metrics["epsilon-target"] == 8.0
    # and everything in it may leave a DP site (what secaggplus_mod keeps of it)
    content = reply.content
    content["fitres.parameters"].clear()
    audit_content(content, OutgoingPolicy.from_config(rt2.cfg))
