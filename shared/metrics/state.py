"""The additive metric state: its layout, checks, container, Flower-ready arrays, sums.

A state is a ``dict[str, np.ndarray]`` of *sums* only (int64 counts, float64 sums), so
states built with the same :class:`~endofed.shared.metrics.MetricAccumulator`
arguments merge by adding arrays. It crosses the network in each evaluate reply
(``privacy.outgoing`` checks its keys, shapes and kinds) and the server sums it, so
:func:`empty_state` is the one definition of its keys, shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

import numpy as np
import torch

State = dict[str, np.ndarray]


def to_numpy(x: Any) -> np.ndarray:
    """Torch tensor (any device, any float dtype) or array-like to a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def empty_state(
    *,
    num_classes: int,
    num_iou_thresholds: int,
    score_bins: int,
    num_morphologies: int,
    num_loc_thresholds: int,
) -> State:
    """Zero state: ``K`` classes, ``T`` IoU thresholds, ``B`` score bins, ``M``
    morphology names (plus one "unknown" row) and ``L`` localisation thresholds."""
    k, t, b = num_classes, num_iou_thresholds, score_bins
    m, lt = num_morphologies + 1, num_loc_thresholds
    i64, f64 = np.int64, np.float64
    return {
        "num_images": np.zeros((), i64),
        # detection
        "det_images": np.zeros((), i64),
        "det_tp": np.zeros((k, t, b), i64),
        "det_fp": np.zeros((k, t, b), i64),
        "det_num_gt": np.zeros((k,), i64),
        # image-level classification
        "cls_images": np.zeros((), i64),
        "cls_confusion": np.zeros((k + 1, k + 1), i64),
        "cls_pos_hist": np.zeros((k + 1, b), i64),
        "cls_neg_hist": np.zeros((k + 1, b), i64),
        # localisation (last morphology row = unknown)
        "loc_hits_morph": np.zeros((m, lt), i64),
        "loc_total_morph": np.zeros((m,), i64),
        "loc_iou_sum_morph": np.zeros((m,), f64),
        "loc_hits_class": np.zeros((k, lt), i64),
        "loc_total_class": np.zeros((k,), i64),
        "loc_iou_sum_class": np.zeros((k,), f64),
        # segmentation
        "seg_images": np.zeros((), i64),
        "seg_dice_sum": np.zeros((), f64),
        "seg_iou_sum": np.zeros((), f64),
        "seg_pos_images": np.zeros((), i64),
        "seg_pos_dice_sum": np.zeros((), f64),
        "seg_pos_iou_sum": np.zeros((), f64),
        "seg_tp": np.zeros((), i64),
        "seg_fp": np.zeros((), i64),
        "seg_fn": np.zeros((), i64),
        # latency
        "latency_sum_ms": np.zeros((), f64),
        "latency_images": np.zeros((), i64),
    }


def check_state(state: Mapping[str, Any], expected: State, origin: str) -> State:
    """A copy of ``state`` with ``expected``'s dtypes; raises if keys or shapes differ."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{origin}: metric state keys do not match (missing {missing}, unexpected "
            f"{extra}); was it built by a different MetricAccumulator version?"
        )
    out: State = {}
    for key, ref in expected.items():
        arr = to_numpy(state[key])
        if arr.shape != ref.shape:
            raise ValueError(
                f"{origin}: metric state {key!r} has shape {arr.shape}, expected "
                f"{ref.shape}; class_names/morphology_names/score_bins/thresholds "
                "must be identical to merge states"
            )
        out[key] = arr.astype(ref.dtype, copy=True)
    return out


class AdditiveState:
    """A container of one :data:`State` that merges with others by adding arrays.

    Subclasses (:class:`~endofed.shared.metrics.MetricAccumulator`) define
    :meth:`empty_state` (the layout) and :meth:`ctor_kwargs` (the arguments that fix
    it), and set ``self._state = self.empty_state()``; states merge only between
    instances built with equal arguments.
    """

    _state: State

    def empty_state(self) -> State:
        """Zero state with this instance's shapes."""
        raise NotImplementedError

    def ctor_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, to build a compatible instance."""
        raise NotImplementedError

    def state(self) -> State:
        """A copy of the additive state (string keys, int64/float64 arrays)."""
        return {k: v.copy() for k, v in self._state.items()}

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._state = self.empty_state()

    def _check_state(self, state: Mapping[str, Any], origin: str) -> State:
        return check_state(state, self.empty_state(), origin)

    def merge(self, other: AdditiveState | Mapping[str, Any]) -> Self:
        """Add another instance (or its state) into this one in place; returns self."""
        name = type(self).__name__
        if isinstance(other, AdditiveState):
            if other.ctor_kwargs() != self.ctor_kwargs():
                raise ValueError(
                    f"{name}.merge: accumulators were built with different "
                    f"arguments: {self.ctor_kwargs()} vs {other.ctor_kwargs()}"
                )
            other_state = other._state
        else:
            other_state = self._check_state(other, f"{name}.merge")
        for key in self._state:
            self._state[key] = self._state[key] + other_state[key]
        return self

    def __add__(self, other: AdditiveState) -> Self:
        out = type(self)(**self.ctor_kwargs())
        out.merge(self)
        out.merge(other)
        return out

    def __iadd__(self, other: AdditiveState) -> Self:
        return self.merge(other)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **ctor_kwargs: Any) -> Self:
        """Rebuild an instance from a state and the constructor arguments it used."""
        acc = cls(**ctor_kwargs)
        acc._state = acc._check_state(state, f"{cls.__name__}.from_state")
        return acc


def state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state as ``{str: int64/float64 ndarray}`` ready for a Flower ``ArrayRecord``."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        arr = to_numpy(value)
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
        else:
            raise TypeError(f"state_to_arrays: {key!r} has non-numeric dtype {arr.dtype}")
        out[str(key)] = arr.copy(order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def sum_states(states: Iterable[Mapping[str, Any]]) -> State:
    """Element-wise sum of compatible states (e.g. one per site); raises on mismatch."""
    total: State | None = None
    for i, state in enumerate(states):
        arrays = state_to_arrays(state)
        if total is None:
            total = {k: v.copy() for k, v in arrays.items()}
            continue
        if set(arrays) != set(total):
            raise ValueError(
                f"sum_states: state #{i} has keys {sorted(set(arrays) ^ set(total))} "
                "that the others do not"
            )
        for k, v in arrays.items():
            if v.shape != total[k].shape:
                raise ValueError(
                    f"sum_states: state #{i} key {k!r} has shape {v.shape}, "
                    f"expected {total[k].shape}"
                )
            total[k] = total[k] + v
    if total is None:
        raise ValueError("sum_states: no state given")
    return total
