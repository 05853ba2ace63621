"""update() inputs (shared/metrics/inputs.py): torch or numpy, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofed.shared.metrics import MetricAccumulator


def _acc(data, **kw) -> MetricAccumulator:
    return MetricAccumulator(
        class_names=data.class_names, morphology_names=data.morphology_names, **kw
    )


def test_torch_inputs_equal_numpy_inputs(eval_set) -> None:
    b = eval_set.batch(slice(0, 20))
    tb = {
        "detections": [{k: torch.as_tensor(v) for k, v in d.items()} for d in b["detections"]],
        "targets": [{k: torch.as_tensor(v) for k, v in t.items()} for t in b["targets"]],
        "image_probs": torch.as_tensor(b["image_probs"], dtype=torch.float32),
        "image_labels": torch.as_tensor(b["image_labels"]),
        "mask_prob": torch.as_tensor(b["mask_prob"]),
        "mask_true": torch.as_tensor(b["mask_true"]),
    }
    a_np, a_t = _acc(eval_set), _acc(eval_set)
    a_np.update(**b)
    a_t.update(**tb)
    for key, value in a_np.state().items():
        np.testing.assert_allclose(value, a_t.state()[key], rtol=1e-6, err_msg=key)


def test_invalid_inputs_raise() -> None:
    acc = MetricAccumulator(class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"image_probs must be \(B, 3\)"):
        acc.update(image_probs=np.zeros((2, 2)), image_labels=np.zeros(2))
    with pytest.raises(ValueError, match="image_labels must be in 0..2"):
        acc.update(image_probs=np.zeros((1, 3)), image_labels=np.array([3]))
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        acc.update(
            detections=[{"boxes": np.zeros((1, 4)), "labels": [5], "scores": [0.5]}],
            targets=[{"boxes": np.zeros((0, 4)), "labels": []}],
        )
