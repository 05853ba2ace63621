"""Reply screening: nothing malformed, non-finite or declined is ever aggregated."""

import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from endofed.privacy.reply_policy import (
    AUDIT_REFUSED,
    BUDGET_EXHAUSTED,
    DATA_UNUSABLE,
    refusal_reason,
)
from endofed.server.replies import DECLINED_REASON, screen_train_replies, site_of

SHAPES = {"w": (2, 3), "b": (3,)}


def _reply(arrays: dict, metrics: dict, site: str = "a") -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
            "site": ConfigRecord({"site-name": site}),
        }
    )
    return received_reply(content)


def received_reply(content: RecordDict, src_node_id: int = 1) -> Message:
    """A reply as the server's Grid hands it over (metadata stamped by the SuperLink)."""
    meta = Metadata(
        run_id=1, message_id="m-1", src_node_id=src_node_id, dst_node_id=0,
        reply_to_message_id="q-1", group_id="1", created_at=time.time(), ttl=60.0,
        message_type="train",
    )
    return Message(content=content, metadata=meta)


def _good(site="a"):
    return _reply({"w": np.ones((2, 3)), "b": np.zeros(3)}, {"num-examples": 10}, site)


def test_valid_reply_passes():
    valid, screened = screen_train_replies([_good()], SHAPES)
    assert len(valid) == 1 and not screened


def test_nan_update_is_rejected():
    w = np.ones((2, 3))
    w[0, 1] = np.nan
    bad = _reply({"w": w, "b": np.zeros(3)}, {"num-examples": 10}, "nan-site")
    valid, screened = screen_train_replies([_good(), bad], SHAPES)
    assert len(valid) == 1
    assert screened[0].site == "nan-site" and "NaN" in screened[0].reason


def test_inf_and_wrong_shape_and_missing_keys_rejected():
    inf = _reply({"w": np.full((2, 3), np.inf), "b": np.zeros(3)}, {"num-examples": 1})
    shape = _reply({"w": np.ones((3, 2)), "b": np.zeros(3)}, {"num-examples": 1})
    keys = _reply({"w": np.ones((2, 3))}, {"num-examples": 1})
    valid, screened = screen_train_replies([inf, shape, keys], SHAPES)
    assert not valid
    reasons = [s.reason for s in screened]
    assert "NaN or Inf" in reasons[0]
    assert "shape" in reasons[1]
    assert "keys" in reasons[2]


def test_declined_reply_is_flagged_not_rejected():
    content = RecordDict({"metrics": MetricRecord({"declined": 1, "num-examples": 0}),
                          "site": ConfigRecord({"site-name": "tight-budget"})})
    declined = received_reply(content)
    valid, screened = screen_train_replies([declined], SHAPES)
    assert not valid and screened[0].declined and screened[0].site == "tight-budget"


def _error_reply(reason: str, code: int = ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                 src_node_id: int = 5) -> Message:
    meta = Metadata(
        run_id=1, message_id="m-2", src_node_id=src_node_id, dst_node_id=0,
        reply_to_message_id="q-2", group_id="1", created_at=time.time(), ttl=60.0,
        message_type="train",
    )
    return Message(Error(code=code, reason=reason), metadata=meta)


def test_a_sites_refusal_is_recorded_by_category_under_its_name():
    """The server learns 'site data unusable' and the site's name, not ``node-<id>``."""
    bad = _error_reply(refusal_reason(DATA_UNUSABLE, "hosp-bad"))
    valid, screened = screen_train_replies([_good(), bad], SHAPES)
    assert len(valid) == 1
    assert screened[0].site == "hosp-bad" and screened[0].reason == "refused: site data unusable"
    assert not screened[0].declined


def test_a_budget_refusal_as_an_error_is_a_decline():
    refusal = _error_reply(refusal_reason(BUDGET_EXHAUSTED, "oslo"))
    _, screened = screen_train_replies([refusal], SHAPES)
    assert screened[0].declined and screened[0].reason == DECLINED_REASON
    assert screened[0].site == "oslo"


def test_an_audit_refusal_keeps_its_detail_and_flower_errors_their_text():
    audit = _error_reply(refusal_reason(AUDIT_REFUSED, "a", "'arrays': not a weight"),
                         ErrorCode.MOD_FAILED_PRECONDITION)
    offline = _error_reply("Node 5 is offline", ErrorCode.NODE_UNAVAILABLE, src_node_id=0)
    _, screened = screen_train_replies([audit, offline], SHAPES)
    assert screened[0].reason == ("refused: outgoing audit refused the reply "
                                  "('arrays': not a weight)")
    assert screened[1].reason == "client error: Node 5 is offline"
    assert screened[1].site == "node-0"  # no name: the loop maps the node id
    assert site_of(_error_reply("site failed (details in the site's log) [site: /etc]")) \
        == "node-5"  # a path is never taken for a name


def test_an_app_refusal_is_logged_as_such_for_train_and_evaluate(caplog):
    """The site runner's 'app not approved' reads 'site refused the app: <site>' on both."""
    import logging

    from endofed.privacy.reply_policy import APP_NOT_APPROVED
    from endofed.server.evaluation import merge_evaluation_replies

    refused = _error_reply(refusal_reason(APP_NOT_APPROVED, "hosp-2"))
    with caplog.at_level(logging.WARNING, logger="endofed.server"):
        _, screened = screen_train_replies([refused], SHAPES)
        merge_evaluation_replies([refused], class_names=["lesion"], morphology_names=[])
    assert screened[0].reason == f"refused: {APP_NOT_APPROVED}" and not screened[0].declined
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("site refused the app: hosp-2 (node 5)") == 2, lines
