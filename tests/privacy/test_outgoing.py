"""The outgoing audit mod on real ClientApp replies (tiny model, real accumulator)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import ndarray_to_bytes
from flwr.common.constant import ErrorCode

import endofed.client.app as client_app
from endofed.client.runtime import get_site_runtime
from endofed.privacy.outgoing import (
    OutgoingViolation,
    audit_content,
    outgoing_audit_mod,
    policy_for,
)
from endofed.privacy.reply_policy import (
    AUDIT_REFUSED,
    DATA_UNUSABLE,
    SITE_FAILED,
    Refusal,
    parse_refusal,
    refusal_reason,
)
from endofed.shared.metrics.accumulator import MetricAccumulator
from endofed.shared.model import trainable_state

RUN_CONFIG: dict[str, Any] = {
    "preset": "tiny",
    "image-size": 64,
    "batch-size": 4,
    "val-fraction": 0.34,
    "augment": False,
    "local-epochs": 1,
    "max-steps": 1,
    "class-names": "polyp",
    "device": "cpu",
    "dp-epsilon": 0.0,
}

Handler = Callable[[Message, Context], Message]


@pytest.fixture
def context(kvasir_site: Callable[..., Path], tmp_path: Path) -> Context:
    specs = {f"img{i}": [(8 + 3 * i, 10, 40 + i, 44)] for i in range(5)}
    specs["normal"] = []
    site = kvasir_site(specs, size=(64, 64), name="hospital_a")
    node = {"data-path": str(site), "site-name": "hospital-a", "state-dir": str(tmp_path / "st")}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                   run_config=dict(RUN_CONFIG))  # fmt: skip


def _incoming(context: Context, message_type: str) -> Message:
    rt = get_site_runtime(context.run_config, context.node_config)
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in trainable_state(rt.model).items()})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    # As the SuperNode hands it to the ClientApp (metadata stamped by the SuperLink).
    meta = Metadata(
        run_id=context.run_id, message_id=f"m-{message_type}", src_node_id=0,
        dst_node_id=context.node_id, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=600.0, message_type=message_type,
    )  # fmt: skip
    return Message(content=content, metadata=meta)


def _audited(train: Handler = client_app.train, evaluate: Handler = client_app.evaluate):
    app = ClientApp(mods=[outgoing_audit_mod])
    app.train()(train)
    app.evaluate()(evaluate)
    return app


def _tamper(handler: Handler, change: Callable[[RecordDict], None]) -> Handler:
    def tampered(msg: Message, context: Context) -> Message:
        reply = handler(msg, context)
        change(reply.content)
        return reply

    return tampered


def _refusal(reply: Message) -> str:
    assert reply.has_error(), "the audit let a forbidden reply through"
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert not reply.has_content()
    return reply.error.reason or ""


def test_legitimate_train_and_evaluate_replies_pass(context: Context) -> None:
    app = _audited()
    train_reply = app(_incoming(context, "train"), context)
    assert not train_reply.has_error(), train_reply.error.reason if train_reply.has_error() else ""
    rt = get_site_runtime(context.run_config, context.node_config)
    assert set(train_reply.content["arrays"]) == set(trainable_state(rt.model))
    assert train_reply.content["site"]["site-name"] == "hospital-a"

    eval_reply = app(_incoming(context, "evaluate"), context)
    assert not eval_reply.has_error(), eval_reply.error.reason if eval_reply.has_error() else ""
    state = {k: v.numpy() for k, v in eval_reply.content["metric-state"].items()}
    template = MetricAccumulator(
        class_names=["polyp"], morphology_names=rt.cfg.data.morphology_names
    ).state()
    assert set(state) == set(template)
    assert int(state["num_images"]) == len(rt.val_set) > 0  # a real, non-empty evaluation


def test_injected_image_tensor_is_refused(context: Context, caplog) -> None:
    def add_image(content: RecordDict) -> None:
        image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        content["arrays"]["debug-frame"] = Array(image)

    app = _audited(train=_tamper(client_app.train, add_image))
    with caplog.at_level("ERROR", logger="endofed.privacy.outgoing"):
        reason = _refusal(app(_incoming(context, "train"), context))
    assert "not a trainable weight" in reason and "'arrays'" in reason
    # an undeclared name reaches the server only as its length; the site's log has it
    assert "debug-frame" not in reason and "undeclared name of 11 characters" in reason
    assert any("debug-frame" in r.getMessage() for r in caplog.records)
    assert parse_refusal(reason, allow_detail=True) == Refusal(
        AUDIT_REFUSED, "hospital-a", reason.split(": ", 1)[1].rsplit(" (details", 1)[0])


def test_image_shaped_like_chw_under_a_weight_name_is_refused(context: Context) -> None:
    def swap(content: RecordDict) -> None:
        name = next(iter(content["arrays"]))
        content["arrays"][name] = Array(np.zeros((3, 64, 64), np.uint8))

    reason = _refusal(_audited(train=_tamper(client_app.train, swap))(
        _incoming(context, "train"), context))  # fmt: skip
    assert "(3, 64, 64)" in reason


def test_wrong_shaped_weight_is_refused(context: Context) -> None:
    def reshape(content: RecordDict) -> None:
        name, array = next(iter(content["arrays"].items()))
        content["arrays"][name] = Array(array.numpy().reshape(-1)[:-1].copy())

    reason = _refusal(_audited(train=_tamper(client_app.train, reshape))(
        _incoming(context, "train"), context))  # fmt: skip
    assert "differs from the weight's" in reason


def test_extra_array_in_metric_state_and_extra_record_are_refused(context: Context) -> None:
    def extra_state(content: RecordDict) -> None:
        content["metric-state"]["per_image_scores"] = Array(np.zeros(5, np.float64))

    reason = _refusal(_audited(evaluate=_tamper(client_app.evaluate, extra_state))(
        _incoming(context, "evaluate"), context))  # fmt: skip
    assert "'metric-state'[<undeclared name of 16 characters>]" in reason

    def extra_record(content: RecordDict) -> None:
        content["embeddings"] = ArrayRecord({"e": Array(np.zeros((2, 8), np.float32))})

    reason = _refusal(_audited(evaluate=_tamper(client_app.evaluate, extra_record))(
        _incoming(context, "evaluate"), context))  # fmt: skip
    assert "<undeclared name of 10 characters>[" in reason
    assert "unexpected ArrayRecord" in reason and "embeddings" not in reason


@pytest.mark.parametrize(
    ("record", "value", "message"),
    [
        ("site", ConfigRecord({"site-name": "/data/hospital_a/images"}), "looks like a path"),
        ("site", ConfigRecord({"site-name": "a", "data-path": "x"}), "only 'site-name'"),
        ("metrics", MetricRecord({"num-examples": 4, "scores": [0.1, 0.9]}),
         "not a metric endofed.shared.protocol declares"),
        ("debug", ConfigRecord({"image": "C:\\scans\\patient_0042.png"}),
         "unexpected ConfigRecord"),
        # the record's *name* is the leak: the old audit repeated it to the server
        ("/data/hospital_a/patient_0042", ConfigRecord({"x": "y"}), "unexpected ConfigRecord"),
        ("site", ConfigRecord({"site-name": "a", "/data/hospital_a/patient_0042": "x"}),
         "only 'site-name'"),
    ],
)
def test_paths_ids_and_lists_in_metric_or_config_records_are_refused(
    context: Context, record: str, value: Any, message: str
) -> None:
    def put(content: RecordDict) -> None:
        content[record] = value

    reply = _audited(train=_tamper(client_app.train, put))(_incoming(context, "train"), context)
    reason = _refusal(reply)
    assert message in reason
    assert "patient_0042" not in reason and "/data/hospital_a" not in reason  # value not echoed


def test_exception_text_does_not_leave_the_site(context: Context) -> None:
    def crash(msg: Message, ctx: Context) -> Message:
        raise FileNotFoundError("/data/hospital_a/patient_0042/frame_17.png")

    reply = _audited(train=crash)(_incoming(context, "train"), context)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == refusal_reason(SITE_FAILED, "hospital-a")


def test_an_exception_class_name_does_not_leave_the_site(context: Context) -> None:
    """The old audit sent the exception's type name, which code can make anything."""
    leaky = type("Patient_0042_at_data_hospital_a", (Exception,), {})

    def crash(msg: Message, ctx: Context) -> Message:
        raise leaky("x")

    reply = _audited(train=crash)(_incoming(context, "train"), context)
    assert "0042" not in reply.error.reason
    assert parse_refusal(reply.error.reason) == Refusal(SITE_FAILED, "hospital-a")


@pytest.mark.parametrize("code", [ErrorCode.CLIENT_APP_RAISED_EXCEPTION, 123456789])
def test_an_error_reply_returned_by_a_handler_is_audited(
    context: Context, caplog, code: int
) -> None:
    """A handler's own Error passed unaudited before: its reason could carry anything."""

    def leaky(msg: Message, ctx: Context) -> Message:
        return Message(Error(code=code, reason="/data/hospital_a/patient_0042/frame_17.png"),
                       reply_to=msg)

    with caplog.at_level("ERROR", logger="endofed.privacy.outgoing"):
        reply = _audited(train=leaky)(_incoming(context, "train"), context)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == refusal_reason(SITE_FAILED, "hospital-a")
    assert any("patient_0042" in r.getMessage() for r in caplog.records)  # kept at the site

    def refusing(msg: Message, ctx: Context) -> Message:  # the refusal format passes
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=refusal_reason(DATA_UNUSABLE, "hospital-a")),
                       reply_to=msg)

    reply = _audited(train=refusing)(_incoming(context, "train"), context)
    assert reply.error.reason == refusal_reason(DATA_UNUSABLE, "hospital-a")
    # ... but not with a free-text detail, nor with a path as the site's name
    for reason in (refusal_reason(DATA_UNUSABLE, "a", detail="/data/hospital_a"),
                   "site data unusable (details in the site's log) [site: /data/hospital_a]"):
        def handler(msg: Message, ctx: Context, reason: str = reason) -> Message:
            return Message(Error(code=0, reason=reason), reply_to=msg)

        reply = _audited(train=handler)(_incoming(context, "train"), context)
        assert reply.error.reason == refusal_reason(SITE_FAILED, "hospital-a")


def test_300_pixel_values_do_not_leave_as_metrics(context: Context) -> None:
    """``px0`` ... ``px299`` passed in the legacy ``fitres.num_examples`` record before."""
    policy = policy_for(context.run_config, context.node_config)
    pixels = {f"px{i}": float(v) for i, v in enumerate(range(300))}
    with pytest.raises(OutgoingViolation, match="exceed the cap of 32"):
        audit_content(RecordDict({"fitres.num_examples": MetricRecord(pixels)}), policy)
    with pytest.raises(OutgoingViolation, match="exceed the cap of 32"):
        audit_content(RecordDict({"metrics": MetricRecord(pixels)}), policy)
    with pytest.raises(OutgoingViolation, match="only 'num_examples'"):
        audit_content(RecordDict({"fitres.num_examples": MetricRecord(
            {"num_examples": 4, "px0": 0.5})}), policy)  # fmt: skip
    with pytest.raises(OutgoingViolation, match="exceed the cap of 32"):
        audit_content(RecordDict({"fitres.metrics": ConfigRecord(pixels)}), policy)
    audit_content(RecordDict({"fitres.num_examples": MetricRecord({"num_examples": 4})}),
                  policy)  # fmt: skip


def test_secagg_node_ids_are_only_the_nodes_the_request_named(context: Context) -> None:
    """A list of 'node ids' is a list of integers: it could carry pixel values."""
    policy = policy_for(context.run_config, context.node_config)
    request = _incoming(context, "train")
    request.content["secaggplus_configs"] = ConfigRecord(
        {"11": [b"pk1-a", b"pk2-a"], "12": [b"pk1-b", b"pk2-b"], "7": [b"a", b"b"]}
    )
    ok = RecordDict({"secaggplus_configs": ConfigRecord(
        {"dsts": [11, 12], "ctxts": [b"c" * 100, b"d" * 100]})})  # fmt: skip
    audit_content(ok, policy, request=request)
    pixels = list(range(100, 400))
    leak = RecordDict({"secaggplus_configs": ConfigRecord(
        {"dsts": pixels, "ctxts": [b"c"] * len(pixels)})})  # fmt: skip
    with pytest.raises(OutgoingViolation, match="did not name"):
        audit_content(leak, policy, request=request)
    with pytest.raises(OutgoingViolation, match="not distinct"):
        audit_content(RecordDict({"secaggplus_configs": ConfigRecord(
            {"dsts": [11, 11], "ctxts": [b"c", b"c"]})}), policy, request=request)  # fmt: skip
    unmask = _incoming(context, "train")
    unmask.content["secaggplus_configs"] = ConfigRecord(
        {"active_nids": [11, 7], "dead_nids": [12]})  # flwr's Key.ACTIVE/DEAD_NODE_ID_LIST
    audit_content(RecordDict({"secaggplus_configs": ConfigRecord(
        {"nids": [11, 7, 12], "shares": [b"s"] * 3})}), policy, request=unmask)  # fmt: skip
    with pytest.raises(OutgoingViolation, match="did not name"):
        audit_content(RecordDict({"secaggplus_configs": ConfigRecord(
            {"nids": [11, 99], "shares": [b"s"] * 2})}), policy, request=unmask)  # fmt: skip


def test_the_client_app_names_the_category_and_the_site_never_the_path(tmp_path: Path) -> None:
    """The real ClientApp on a site whose folder is missing: the server gets a category."""
    missing = tmp_path / "patient_0042_scans"
    node = {"data-path": str(missing), "site-name": "hosp-bad"}
    ctx = Context(run_id=1, node_id=9, node_config=node, state=RecordDict(),
                  run_config=dict(RUN_CONFIG))  # fmt: skip
    meta = Metadata(run_id=1, message_id="m-x", src_node_id=0, dst_node_id=9,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type="train")  # fmt: skip
    request = Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
                      metadata=meta)
    reply = client_app.app(request, ctx)
    assert reply.has_error()
    assert reply.error.reason == refusal_reason(DATA_UNUSABLE, "hosp-bad")
    assert "patient_0042" not in reply.error.reason


def test_secagg_masked_vectors_must_have_the_model_shapes(context: Context) -> None:
    policy = policy_for(context.run_config, context.node_config)
    masked = [ndarray_to_bytes(np.array([3], np.int64))] + [
        ndarray_to_bytes(np.zeros(shape, np.int64)) for shape in policy.weights.values()
    ]
    legit = RecordDict({
        "secaggplus_configs": ConfigRecord({"masked_params": masked}),
        "fitres.parameters": ArrayRecord(),
        "fitres.metrics": ConfigRecord({"train-loss": 0.5}),
        "fitres.num_examples": MetricRecord({"num_examples": 4}),
        "fitres.status": ConfigRecord({"code": 0, "message": "ok"}),
    })  # fmt: skip
    audit_content(legit, policy)
    smuggled = masked + [ndarray_to_bytes(np.zeros((64, 64, 3), np.int64))]
    with pytest.raises(OutgoingViolation, match="masked_params"):
        audit_content(RecordDict({"secaggplus_configs": ConfigRecord({"masked_params": smuggled})}),
                      policy)  # fmt: skip
    with pytest.raises(OutgoingViolation, match="status"):
        audit_content(RecordDict({"fitres.status": ConfigRecord(
            {"code": 0, "message": "patient 0042 failed"})}), policy)  # fmt: skip
    with pytest.raises(OutgoingViolation, match="exceeds"):
        audit_content(RecordDict({"secaggplus_configs": ConfigRecord(
            {"pk1": b"k" * 65, "pk2": b"\x00" * 20_000})}), policy)  # fmt: skip


def test_an_undeclared_metric_is_refused(context: Context) -> None:
    """A metric the protocol does not declare never leaves, even if it is one number."""

    def put(content: RecordDict) -> None:
        content["metrics"]["mean-pixel-of-patient-0042"] = 0.4

    reason = _refusal(_audited(train=_tamper(client_app.train, put))(
        _incoming(context, "train"), context))  # fmt: skip
    assert "protocol declares" in reason


def test_a_dp_site_may_not_send_its_training_loss(context: Context) -> None:
    """The audit enforces the DP reporting rule as a second line behind the client."""
    policy = policy_for({**RUN_CONFIG, "dp-epsilon": 8.0}, context.node_config)
    allowed = RecordDict({"metrics": MetricRecord({"num-examples": 4, "epsilon-spent": 1.0,
                                                   "dp-steps": 2, "train-seconds": 0.1})})
    audit_content(allowed, policy)
    leak = RecordDict({"metrics": MetricRecord({"num-examples": 4, "train-loss": 0.7})})
    with pytest.raises(OutgoingViolation, match="outside the DP guarantee"):
        audit_content(leak, policy)
    # The same metric from a site without DP is fine.
    audit_content(leak, policy_for(RUN_CONFIG, context.node_config))
