"""Flags shared by commands, turned into the one :class:`EndoFedConfig`."""

from __future__ import annotations

import argparse
from typing import Any

from endofed.shared.config import EndoFedConfig

# flag -> config key (kebab case, as in the Flower run config)
CONFIG_FLAGS: dict[str, tuple[str, type, str]] = {
    "--preset": (
        "preset", str, "model preset (lite0 lite1 lite2: pretrained; tiny, cpu, paper, r50x1...)"
    ),
    "--image-size": (
        "image-size", int, "square model input size in pixels (default: the preset's)"
    ),
    "--batch-size": ("batch-size", int, "images per batch"),
    "--epochs": ("local-epochs", int, "training epochs"),
    "--lr": ("learning-rate", float, "learning rate"),
    "--class-names": ("class-names", str, "comma-separated lesion classes of the run"),
    "--val-fraction": ("val-fraction", float, "patient-aware held-out share"),
    "--device": ("device", str, "auto, cpu, cuda, cuda:1 ..."),
    "--seed": ("seed", int, "random seed"),
    "--threads": ("threads", int, "torch threads (0 = all cores)"),
    "--weights": (
        "weights-path", str,
        "auto (installed ImageNet weights if the preset has them), pretrained, none, or a file",
    ),
    "--finetune": ("finetune", str, "global (all weights) or local (backbone frozen)"),
    "--max-steps": ("max-steps", int, "cap on steps per epoch (0 = none)"),
}


def add_config_flags(parser: argparse.ArgumentParser, *, only: list[str] | None = None) -> None:
    """Add the config flags (or a subset) plus generic ``-c key=value`` overrides."""
    for flag, (key, typ, help_) in CONFIG_FLAGS.items():
        if only is not None and flag not in only:
            continue
        parser.add_argument(flag, dest=f"cfg_{key}", type=typ, default=None, help=help_)
    parser.add_argument(
        "-c", "--config", dest="cfg_overrides", action="append", default=[],
        metavar="KEY=VALUE", help="any run-config key, e.g. -c dp-epsilon=8 (repeatable)",
    )


def config_mapping(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict:
    """The flat kebab-case mapping given on the command line (over ``defaults``)."""
    values: dict[str, Any] = dict(defaults or {})
    for name, value in vars(args).items():
        if name.startswith("cfg_") and name != "cfg_overrides" and value is not None:
            values[name[4:]] = value
    for item in getattr(args, "cfg_overrides", []) or []:
        if "=" not in item:
            raise SystemExit(f"-c expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = value.strip().strip('"')
    if "preset" in values and "image-size" not in values:
        size = preset_image_size(str(values["preset"]))
        if size is not None:
            values["image-size"] = size
    return values


def preset_image_size(preset: str) -> int | None:
    """The input size a preset names (``None`` if unknown: the build reports it)."""
    from endofed.shared.model.presets import get_preset

    try:
        return get_preset(preset).image_size
    except ValueError:
        return None


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> EndoFedConfig:
    return EndoFedConfig.from_mapping(config_mapping(args, defaults))
