"""Pretrained weights, trainable state (what the federation sends) and checkpoints."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from endofed.shared.model.presets import SSDConfig
from endofed.shared.model.ssd import ImprovedSSD
from endofed.shared.util.atomic import atomic_save

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "endofed-ssd"
CHECKPOINT_VERSION = 1
_BN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

#: ``weights-path`` values that are not files.
WEIGHTS_AUTO = "auto"
WEIGHTS_PRETRAINED = "pretrained"
WEIGHTS_NONE = "none"


def has_packaged_weights(config: SSDConfig) -> bool:
    """Whether the preset's backbone has ImageNet weights shipped by a package."""
    return config.backbone == "efficientnet"


def load_packaged_weights(model: ImprovedSSD) -> None:
    """Put the installed ImageNet weights into the backbone body (BatchNorm folded)."""
    n = model.backbone.load_pretrained()  # type: ignore[operator]
    log.info(
        "preset %s: loaded ImageNet %s body (%d tensors, BatchNorm folded)",
        model.config.name, model.config.variant, n,
    )


def unwrap(model: nn.Module) -> ImprovedSSD:
    """The :class:`ImprovedSSD` inside wrappers such as Opacus' ``GradSampleModule``.

    Raises ``TypeError`` for anything else (a training loop is only ever given an
    improved SSD, plain or wrapped)."""
    while not isinstance(model, ImprovedSSD) and hasattr(model, "_module"):
        model = model._module
    if not isinstance(model, ImprovedSSD):
        raise TypeError(f"expected an ImprovedSSD (or a wrapper of one), got {type(model)}")
    return model


def _read_state_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"weights file {path}: cannot read it as a torch file ({exc})") from exc
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights file {path}: expected a state_dict, got {type(obj).__name__}")
    return dict(obj)


def load_backbone_weights(model: ImprovedSSD, path: str | Path) -> dict[str, list[str]]:
    """Load a torchvision VGG16 / ResNet ``state_dict`` file into the backbone body.

    Convolution tensors are mapped to our modules; BatchNorm tensors are skipped (we
    use GroupNorm), as are classifier layers. Returns (and logs) ``loaded``,
    ``skipped`` (in the file, not used), ``missing`` (mappable, absent from the file)
    and ``mismatched`` (shape differs). Raises ``ValueError`` when nothing loads.
    """
    path = Path(path)
    state = _read_state_dict(path)
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
    key_map = model.backbone.torchvision_key_map()
    if not key_map:
        raise ValueError(
            f"weights file {path}: preset {model.config.name!r} ({model.config.backbone} "
            "backbone) has no torchvision counterpart to load"
        )
    own = model.backbone.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "skipped": [], "missing": [], "mismatched": []}
    new_state = {}
    for tv_key, value in state.items():
        target = key_map.get(tv_key)
        if target is None:
            report["skipped"].append(tv_key)
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[target].shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            want = tuple(own[target].shape)
            report["mismatched"].append(f"{tv_key}: file {shape} vs model {want}")
            continue
        new_state[target] = value
        report["loaded"].append(tv_key)
    report["missing"] = sorted(set(key_map) - set(state))
    if not new_state:
        raise ValueError(
            f"weights file {path}: no tensor fits preset {model.config.name!r} "
            f"({len(report['mismatched'])} shape mismatches, e.g. {report['mismatched'][:2]}; "
            f"{len(report['skipped'])} unrelated keys)"
        )
    with torch.no_grad():
        params = dict(model.backbone.named_parameters())
        for k, v in new_state.items():
            params[k].copy_(v)
    bn = [k for k in report["skipped"] if k.endswith(_BN_SUFFIXES) or ".bn" in k or "bn1" in k]
    log.info(
        "%s: loaded %d backbone tensors; skipped %d (of which %d BatchNorm, not used with "
        "GroupNorm); missing %d; shape-mismatched %d",
        path, len(report["loaded"]), len(report["skipped"]), len(bn), len(report["missing"]),
        len(report["mismatched"]),
    )
    if report["missing"]:
        log.warning("%s: missing backbone keys: %s", path, report["missing"])
    if report["mismatched"]:
        log.warning("%s: shape-mismatched keys: %s", path, report["mismatched"])
    return report


def is_checkpoint(obj: Mapping[str, Any]) -> bool:
    return obj.get("format") == CHECKPOINT_FORMAT


def load_weights(model: ImprovedSSD, path: str | Path) -> None:
    """Load an EndoFed checkpoint (whole model) or a torchvision backbone file."""
    path = Path(path)
    state = _read_state_dict(path)
    if is_checkpoint(state):
        _load_checkpoint_state(model, state, path)
    else:
        load_backbone_weights(model, path)


def _load_checkpoint_state(model: ImprovedSSD, ckpt: Mapping[str, Any], path: Path) -> None:
    saved = ckpt.get("config", {})
    where = (
        f"checkpoint {path} (preset {saved.get('name')!r}, {ckpt.get('num_classes')} classes) "
        f"does not fit the model (preset {model.config.name!r}, {model.num_classes} classes)"
    )
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2]
        raise ValueError(f"{where}: {first[0].strip() if first else exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{where}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    log.info("%s: loaded full EndoFed checkpoint (%d tensors)", path, len(ckpt["state_dict"]))


def save_checkpoint(
    path: str | Path, model: nn.Module, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save the whole model with its architecture config (rebuild: :func:`load_model_checkpoint`).

    ``extra`` must hold plain Python / tensors (it is read back with ``weights_only``).
    """
    m = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": m.config.to_dict(),
        "num_classes": m.num_classes,
        "finetune": m.finetune,
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "extra": dict(extra or {}),
    }
    return atomic_save(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (``config``, ``num_classes``, ``state_dict``, ``extra``...)."""
    path = Path(path)
    ckpt = _read_state_dict(path)
    if not is_checkpoint(ckpt):
        raise ValueError(f"{path} is not an EndoFed model checkpoint (no format marker)")
    return ckpt


def load_model_checkpoint(
    path: str | Path, map_location: str | torch.device | None = None
) -> ImprovedSSD:
    """Rebuild the model saved by :func:`save_checkpoint` (finetune mode restored)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    model = ImprovedSSD(SSDConfig.from_dict(ckpt["config"]), int(ckpt["num_classes"]))
    _load_checkpoint_state(model, ckpt, path)
    model.set_finetune(str(ckpt.get("finetune", "global")))
    if map_location is not None:
        model.to(map_location)
    return model


def trainable_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Ordered ``{name: tensor}`` copies of the trainable parameters (frozen ones excluded)."""
    m = unwrap(model)
    return OrderedDict(
        (n, p.detach().clone()) for n, p in m.named_parameters() if p.requires_grad
    )


def load_trainable_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor | np.ndarray] | Sequence[torch.Tensor | np.ndarray],
) -> None:
    """Copy trainable weights into ``model`` (a mapping by name, or a sequence in
    :meth:`ImprovedSSD.trainable_names` order). Raises ``ValueError`` on any name or
    shape mismatch, before anything is written."""
    m = unwrap(model)
    names = m.trainable_names()
    if isinstance(state, Mapping):
        missing = [n for n in names if n not in state]
        unexpected = [k for k in state if k not in set(names)]
        if missing or unexpected:
            raise ValueError(
                f"trainable state does not match the model ({m.config.name}, "
                f"finetune={m.finetune}): missing {missing[:5]} ({len(missing)}), "
                f"unexpected {unexpected[:5]} ({len(unexpected)})"
            )
        values = [state[n] for n in names]
    else:
        values = list(state)
        if len(values) != len(names):
            raise ValueError(
                f"trainable state has {len(values)} arrays, the model "
                f"({m.config.name}, finetune={m.finetune}) expects {len(names)}"
            )
    params = dict(m.named_parameters())
    tensors = []
    for n, v in zip(names, values, strict=True):
        t = torch.as_tensor(v)
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(
                f"trainable state '{n}': shape {tuple(t.shape)} != model {tuple(params[n].shape)}"
            )
        tensors.append(t)
    with torch.no_grad():
        for n, t in zip(names, tensors, strict=True):
            params[n].copy_(t.to(params[n]))
