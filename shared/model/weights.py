"""Pretrained weights, trainable state (what the federation sends) and checkpoints."""

from __future__ import annotations

import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from endofed.shared.model.batchnorm_fold import fold_batchnorm
from endofed.shared.model.presets import BODY_NORMS, FOLDABLE_BACKBONES, SSDConfig
from endofed.shared.model.ssd import ImprovedSSD
from endofed.shared.util.atomic import atomic_save

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "endofed-ssd"
CHECKPOINT_VERSION = 1
_BN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")

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


class UnreadableFileError(ValueError):
    """A torch file EndoFed refuses or cannot read; the message names the file."""


_REFUSED_PICKLE = re.compile(
    r"(unsupported GLOBAL [\w.]+|Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+"
    r"|Unsupported class [\w.]+)", re.IGNORECASE,
)


def load_torch_file(
    path: str | Path,
    *,
    what: str = "weights file",
    map_location: str | torch.device = "cpu",
    safe_globals: Sequence[Any] = (),
) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    Every torch file EndoFed reads (checkpoints, resume states, run states, weights)
    goes through here. A pickle that needs any other Python object (a ``__reduce__``
    that would run code) is refused by torch's restricted unpickler before anything
    runs; that, a truncated file or a file that is no torch file at all raises
    :class:`UnreadableFileError`, one line naming ``what`` and ``path``.
    ``safe_globals`` widens the allowed set (numpy's array reconstruction for old
    server checkpoints; still no code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _REFUSED_PICKLE.search(str(exc))
        detail = found.group(1) if found else str(exc).strip().splitlines()[0]
        raise UnreadableFileError(
            f"{what} {path}: refused: it holds Python objects other than tensors and plain "
            f"data ({detail}), and EndoFed never runs code from a data file; use a file "
            "EndoFed wrote (or a plain state_dict of tensors)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - re-raised as one line with the file name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")  # torch's first sentence says what failed
        raise UnreadableFileError(
            f"{what} {path}: cannot read it as a torch file (truncated or damaged? {first})"
        ) from None


def _read_state_dict(path: Path, what: str = "weights file") -> dict[str, Any]:
    obj = load_torch_file(path, what=what)
    if not isinstance(obj, Mapping):
        raise UnreadableFileError(
            f"{what} {path}: expected a state_dict, got {type(obj).__name__}"
        )
    return dict(obj)


def _torchvision_state(state: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` inside a torchvision-style file (``{"state_dict": ...}`` too)."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
    return state


def body_norm_for_weights(config: SSDConfig, path: str | Path) -> str:
    """The ``body_norm`` a model needs to take the weights file ``path``.

    A torchvision file needs ``folded`` (its BatchNorm is folded into the convolutions)
    when the backbone has a torchvision counterpart; an EndoFed checkpoint needs what it
    was trained with. Anything else keeps ``config.body_norm``. Raises like
    :func:`load_weights` for a file that is absent or not a torch file."""
    state = _read_state_dict(Path(path))
    if config.backbone not in FOLDABLE_BACKBONES:
        return config.body_norm
    if is_checkpoint(state):
        saved = state.get("config", {})
        norm = saved.get("body_norm", "group") if isinstance(saved, Mapping) else None
        return norm if norm in BODY_NORMS else config.body_norm
    return "folded"


def _fold_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of ``conv -> eval BatchNorm`` (torchvision's ``eps=1e-5``), folded
    with :func:`~shared.model.batchnorm_fold.fold_batchnorm`."""
    out_ch, in_ch, *k = weight.shape
    with torch.device("meta"):
        pair = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, tuple(k), bias=bias is not None), nn.BatchNorm2d(out_ch)
        )
    f32 = {"dtype": torch.float32, "device": "cpu"}
    conv_state = {"weight": weight.to(**f32)}
    if bias is not None:
        conv_state["bias"] = bias.to(**f32)
    pair[0].load_state_dict(conv_state, assign=True)
    bn_state = {t: bn[t].to(**f32) for t in _BN_TENSORS}
    bn_state["num_batches_tracked"] = torch.tensor(0)
    pair[1].load_state_dict(bn_state, assign=True)
    fold_batchnorm(pair.eval())
    return pair[0].weight.detach(), pair[0].bias.detach()


def _fit_error(key: str, value: Any, want: tuple[int, ...]) -> str | None:
    """``None`` when ``value`` is a tensor of shape ``want``, else the mismatch text."""
    if isinstance(value, torch.Tensor) and tuple(value.shape) == want:
        return None
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    return f"{key}: file {shape} vs model {want}"


def load_backbone_weights(
    model: ImprovedSSD, path: str | Path, state: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """Load a torchvision VGG16 / ResNet ``state_dict`` file into the backbone body.

    With ``config.body_norm == "folded"`` (what ``build_model`` builds for such a file)
    the body computes what the torchvision network computes in eval mode: each ResNet
    BatchNorm (``bn1``, ``layerX.Y.bnK``, ``downsample.1``) is folded into its
    convolution's weight and bias, VGG16 convolutions (no BatchNorm) load as they are.
    A ResNet conv loads only with its whole BatchNorm (weight, bias, running stats).
    With ``"group"`` only the convolution tensors load, under freshly initialised
    GroupNorm (a warning says the body then no longer computes what it was trained to).
    Classifier layers are never used.

    Returns (and logs) ``loaded`` (file keys used), ``skipped`` (in the file, not
    used), ``missing`` (needed, absent from the file) and ``mismatched`` (shape differs).
    Raises ``ValueError`` naming the file when nothing loads. ``state``: the file's
    already-read contents (else it is read from ``path``).
    """
    path = Path(path)
    state = _torchvision_state(dict(state) if state is not None else _read_state_dict(path))
    pairs = model.backbone.torchvision_pairs()
    if not pairs:
        raise ValueError(
            f"weights file {path}: preset {model.config.name!r} ({model.config.backbone} "
            "backbone) has no torchvision counterpart to load"
        )
    folded = model.config.body_norm == "folded"
    own = model.backbone.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "skipped": [], "missing": [], "mismatched": []}
    new_state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    n_folded = 0
    for name, tv_conv, tv_bn in pairs:
        want = tuple(own[f"{name}.weight"].shape)
        conv_keys = {f"{tv_conv}.weight": f"{name}.weight"}
        if f"{name}.bias" in own and (tv_bn is None or f"{tv_conv}.bias" in state):
            conv_keys[f"{tv_conv}.bias"] = f"{name}.bias"
        bn_keys = [f"{tv_bn}.{t}" for t in _BN_TENSORS] if folded and tv_bn else []
        used.update(conv_keys)
        used.update(bn_keys)
        if bn_keys:
            used.add(f"{tv_bn}.num_batches_tracked")
        errors = {}
        for key in [*conv_keys, *bn_keys]:
            if key not in state:
                report["missing"].append(key)
                continue
            shape = want if key == f"{tv_conv}.weight" else (want[0],)
            err = _fit_error(key, state[key], shape)
            if err:
                report["mismatched"].append(err)
                errors[key] = err
        if not bn_keys:  # tensor by tensor (VGG16, or convs under GroupNorm)
            for key, target in conv_keys.items():
                if key in state and key not in errors:
                    new_state[target] = state[key]
                    report["loaded"].append(key)
            continue
        if errors or any(k not in state for k in [*conv_keys, *bn_keys]):
            continue  # a half-described conv + BatchNorm is left as it is
        bn = {t: state[f"{tv_bn}.{t}"] for t in _BN_TENSORS}
        bias = state.get(f"{tv_conv}.bias")
        w, b = _fold_conv_bn(state[f"{tv_conv}.weight"], bias, bn)
        new_state[f"{name}.weight"], new_state[f"{name}.bias"] = w, b
        report["loaded"] += [*conv_keys, *bn_keys]
        if f"{tv_bn}.num_batches_tracked" in state:
            report["loaded"].append(f"{tv_bn}.num_batches_tracked")
        n_folded += 1
    report["skipped"] = [k for k in state if k not in used]
    if not new_state:
        raise ValueError(
            f"weights file {path}: no tensor fits preset {model.config.name!r} "
            f"({len(report['mismatched'])} shape mismatches, e.g. {report['mismatched'][:2]}; "
            f"{len(report['missing'])} missing; {len(report['skipped'])} unrelated keys)"
        )
    with torch.no_grad():
        params = dict(model.backbone.named_parameters())
        for k, v in new_state.items():
            params[k].copy_(v)
    bn_skipped = [k for k in report["skipped"] if k.endswith(_BN_SUFFIXES) or ".bn" in k
                  or "bn1" in k or ".downsample.1." in k]
    log.info(
        "%s: loaded %d backbone tensors (body_norm=%s; %d BatchNorm folded into their "
        "convolutions); skipped %d (of which %d BatchNorm); missing %d; shape-mismatched %d",
        path, len(report["loaded"]), model.config.body_norm, n_folded, len(report["skipped"]),
        len(bn_skipped), len(report["missing"]), len(report["mismatched"]),
    )
    if bn_skipped and not folded:
        log.warning(
            "%s: %d BatchNorm tensors not used: with body_norm='group' the pretrained "
            "convolutions run under new GroupNorm and no longer compute what they were "
            "trained to; build the model with body_norm='folded' (build_model does for a "
            "torchvision file unless body_norm is given)", path, len(bn_skipped),
        )
    if report["missing"]:
        log.warning("%s: missing backbone keys: %s", path, report["missing"])
    if report["mismatched"]:
        log.warning("%s: shape-mismatched keys: %s", path, report["mismatched"])
    return report


def is_checkpoint(obj: Mapping[str, Any]) -> bool:
    return obj.get("format") == CHECKPOINT_FORMAT


def load_weights(model: ImprovedSSD, path: str | Path) -> bool:
    """Load an EndoFed checkpoint (whole model) or a torchvision backbone file.

    Returns whether the backbone body now holds pretrained weights (a checkpoint of a
    model fine-tuned from a pretrained body counts as pretrained)."""
    path = Path(path)
    state = _read_state_dict(path)
    if is_checkpoint(state):
        _load_checkpoint_state(model, state, path)
        return bool(state.get("pretrained_body", False))
    load_backbone_weights(model, path)
    return True


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
        "pretrained_body": bool(getattr(m, "pretrained_body", False)),
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "extra": dict(extra or {}),
    }
    return atomic_save(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (``config``, ``num_classes``, ``state_dict``, ``extra``...)."""
    path = Path(path)
    ckpt = _read_state_dict(path, what="model file")
    if not is_checkpoint(ckpt):
        raise UnreadableFileError(
            f"model file {path} is not an EndoFed model checkpoint (no format marker)"
        )
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
    model.pretrained_body = bool(ckpt.get("pretrained_body", False))
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
