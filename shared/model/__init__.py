"""The improved SSD of EndoFed (paper section 2.2): build, train losses, weights.

``build_model(preset=..., num_classes=...)`` is the entry point; see
``shared/model/presets.py`` for the registered presets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from endofed.shared.model.export import export_onnx
from endofed.shared.model.loss import LossOutput, compute_loss, sigmoid_focal_loss, structure_loss
from endofed.shared.model.postprocess import PostprocessOutput, image_probabilities
from endofed.shared.model.presets import PRESETS, SSDConfig, available_presets, get_preset
from endofed.shared.model.ssd import FINETUNE_MODES, ImprovedSSD
from endofed.shared.model.weights import (
    WEIGHTS_AUTO,
    WEIGHTS_NONE,
    WEIGHTS_PRETRAINED,
    body_norm_for_weights,
    has_packaged_weights,
    load_backbone_weights,
    load_model_checkpoint,
    load_packaged_weights,
    load_trainable_state,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    trainable_state,
    unwrap,
)

__all__ = [
    "WEIGHTS_AUTO",
    "WEIGHTS_NONE",
    "WEIGHTS_PRETRAINED",
    "has_packaged_weights",
    "load_packaged_weights",
    "FINETUNE_MODES",
    "PRESETS",
    "ImprovedSSD",
    "LossOutput",
    "PostprocessOutput",
    "SSDConfig",
    "available_presets",
    "build_model",
    "compute_loss",
    "export_onnx",
    "get_preset",
    "image_probabilities",
    "load_backbone_weights",
    "load_model_checkpoint",
    "load_trainable_state",
    "load_weights",
    "read_checkpoint",
    "save_checkpoint",
    "sigmoid_focal_loss",
    "structure_loss",
    "trainable_state",
    "unwrap",
]


def build_model(
    *,
    preset: str,
    num_classes: int,
    image_size: int | None = None,
    weights_path: str | Path | None = "auto",
    finetune: str = "global",
    **overrides: Any,
) -> ImprovedSSD:
    """Build the improved SSD of ``preset`` for ``num_classes`` lesion classes.

    ``overrides`` replace :class:`SSDConfig` fields (e.g. ``rfpn_steps=0``).
    ``weights_path``: ``"auto"`` (the installed ImageNet weights when the preset's
    backbone has them, random otherwise), ``"pretrained"`` (those weights, an error
    when there are none), ``"none"`` or ``None`` (random), or a file: a torchvision
    backbone ``state_dict`` (VGG16 / ResNet; the body is then built with
    ``body_norm="folded"`` and the file's BatchNorm folded into its convolutions, so it
    computes what the torchvision network does in eval mode) or an EndoFed checkpoint
    (the body is built with the ``body_norm`` it was saved with). An explicit
    ``body_norm`` override wins.
    ``finetune``: ``global`` (all trains) or ``local`` (backbone body frozen).
    """
    config = get_preset(preset)
    if image_size is not None:
        overrides["image_size"] = int(image_size)
    if overrides:
        fields = {f.name for f in dataclasses.fields(SSDConfig)} - {"name"}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"unknown model option(s) {unknown} for preset {preset!r}; "
                f"known: {sorted(fields)}"
            )
        if "class_names" in overrides:
            overrides["class_names"] = tuple(overrides["class_names"])
        config = dataclasses.replace(config, **overrides)
    file = weights_path is not None and str(weights_path) not in (
        WEIGHTS_AUTO, WEIGHTS_PRETRAINED, WEIGHTS_NONE
    )
    if file and "body_norm" not in overrides:
        # A torchvision file's BatchNorm is folded into a norm-free body; a checkpoint
        # is rebuilt with the body it was trained with.
        norm = body_norm_for_weights(config, str(weights_path))
        if norm != config.body_norm:
            config = dataclasses.replace(config, body_norm=norm)
    model = ImprovedSSD(config, num_classes)
    source = str(weights_path) if weights_path is not None else WEIGHTS_NONE
    if source in (WEIGHTS_AUTO, WEIGHTS_PRETRAINED):
        if has_packaged_weights(config):
            load_packaged_weights(model)
            model.pretrained_body = True
        elif source == WEIGHTS_PRETRAINED:
            raise ValueError(
                f"preset {config.name!r} ({config.backbone} backbone) has no installed "
                "pretrained weights; use a lite0/lite1/lite2 preset, pass a weights file, "
                "or weights-path=none"
            )
    elif source != WEIGHTS_NONE:
        model.pretrained_body = load_weights(model, source)
    model.set_finetune(finetune)
    return model
