"""The additive state (shared/metrics/state.py): its layout, merging and Flower transport.

The state crosses the network in every evaluate reply and the server sums it, so its
keys, shapes and dtypes are pinned here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from endofed.shared.metrics import MetricAccumulator, flat_scalars, state_to_arrays, sum_states


def _acc(data, **kw) -> MetricAccumulator:
    return MetricAccumulator(
        class_names=data.class_names, morphology_names=data.morphology_names, **kw
    )


def _assert_same_scalars(a: dict, b: dict) -> None:
    fa, fb = flat_scalars(a), flat_scalars(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if math.isnan(fa[key]):
            assert math.isnan(fb[key]), key
        else:
            assert fa[key] == pytest.approx(fb[key], rel=1e-12, abs=1e-12), key


def test_state_layout_is_pinned() -> None:
    """Keys (in order), shapes and dtypes: K=2 classes, 10 IoU thresholds, 1000 bins,
    3 morphologies (+1 unknown row), 4 localisation thresholds."""
    acc = MetricAccumulator(class_names=["a", "b"], morphology_names=["p", "f", "d"])
    i64, f64 = np.dtype(np.int64), np.dtype(np.float64)
    expected = {
        "num_images": ((), i64),
        "det_images": ((), i64),
        "det_tp": ((2, 10, 1000), i64),
        "det_fp": ((2, 10, 1000), i64),
        "det_num_gt": ((2,), i64),
        "cls_images": ((), i64),
        "cls_confusion": ((3, 3), i64),
        "cls_pos_hist": ((3, 1000), i64),
        "cls_neg_hist": ((3, 1000), i64),
        "loc_hits_morph": ((4, 4), i64),
        "loc_total_morph": ((4,), i64),
        "loc_iou_sum_morph": ((4,), f64),
        "loc_hits_class": ((2, 4), i64),
        "loc_total_class": ((2,), i64),
        "loc_iou_sum_class": ((2,), f64),
        "seg_images": ((), i64),
        "seg_dice_sum": ((), f64),
        "seg_iou_sum": ((), f64),
        "seg_pos_images": ((), i64),
        "seg_pos_dice_sum": ((), f64),
        "seg_pos_iou_sum": ((), f64),
        "seg_tp": ((), i64),
        "seg_fp": ((), i64),
        "seg_fn": ((), i64),
        "latency_sum_ms": ((), f64),
        "latency_images": ((), i64),
    }
    state = acc.state()
    assert list(state) == list(expected)
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == expected
    assert all(not v.any() for v in state.values())


def test_merge_of_halves_equals_whole(eval_set) -> None:
    whole = _acc(eval_set)
    whole.update(**eval_set.batch(slice(None)), latency_ms=120.0)
    first, second = _acc(eval_set), _acc(eval_set)
    first.update(**eval_set.batch(slice(0, 25)), latency_ms=50.0)
    second.update(**eval_set.batch(slice(25, None)), latency_ms=70.0)

    merged = first + second
    ws, ms = whole.state(), merged.state()
    assert ws.keys() == ms.keys()
    for key in ws:
        if ws[key].dtype.kind == "i":
            np.testing.assert_array_equal(ws[key], ms[key], err_msg=key)
        else:
            np.testing.assert_allclose(ws[key], ms[key], rtol=1e-12, err_msg=key)
    _assert_same_scalars(whole.compute(), merged.compute())
    assert merged.compute()["confusion_matrix"] == whole.compute()["confusion_matrix"]
    assert merged.compute()["num_images"] == len(eval_set)
    assert merged.compute()["latency_ms"] == pytest.approx(120.0 / len(eval_set))

    # In-place merge of a raw state and summing states from three "sites".
    in_place = _acc(eval_set).merge(first.state()).merge(second)
    _assert_same_scalars(whole.compute(), in_place.compute())
    parts = [_acc(eval_set) for _ in range(3)]
    for k, sl in enumerate([slice(0, 7), slice(7, 40), slice(40, None)]):
        parts[k].update(**eval_set.batch(sl))
    summed = MetricAccumulator.from_state(
        sum_states(p.state() for p in parts), **parts[0].ctor_kwargs()
    )
    plain = _acc(eval_set)
    plain.update(**eval_set.batch(slice(None)))
    _assert_same_scalars(plain.compute(), summed.compute())


def test_state_survives_flower_array_record(eval_set) -> None:
    from flwr.app import Array, ArrayRecord

    acc = _acc(eval_set)
    acc.update(**eval_set.batch(slice(None)))
    arrays = state_to_arrays(acc.state())
    assert all(isinstance(k, str) for k in arrays)
    assert all(a.dtype in (np.int64, np.float64) for a in arrays.values())
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    back = {k: record[k].numpy() for k in record}
    rebuilt = MetricAccumulator.from_state(back, **acc.ctor_kwargs())
    _assert_same_scalars(acc.compute(), rebuilt.compute())


def test_incompatible_states_do_not_merge() -> None:
    acc = MetricAccumulator(class_names=["a", "b"])
    other = MetricAccumulator(class_names=["a", "c"])
    with pytest.raises(ValueError, match="different arguments"):
        acc.merge(other)
    with pytest.raises(ValueError, match="shape"):
        MetricAccumulator(class_names=["a"]).merge(acc.state())
    with pytest.raises(ValueError, match="keys do not match"):
        MetricAccumulator.from_state({"det_tp": np.zeros(3)}, class_names=["a"])
