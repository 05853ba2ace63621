"""Flags shared by commands, turned into the one :class:`EndoFedConfig`.

Every key given on the command line (a config flag or ``-c KEY=VALUE``) must be known
(else the error names the closest key) and honoured by the command
(:data:`~endofed.shared.config.scope.COMMAND_SCOPES`); values are then checked by
:meth:`EndoFedConfig.from_mapping`, the same path as the Flower run and node config.
"""

from __future__ import annotations

import argparse
from typing import Any

from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.config.keys import closest_key
from endofed.shared.config.scope import command_scope

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


def config_mapping(
    args: argparse.Namespace,
    defaults: dict[str, Any] | None = None,
    *,
    command: str | None = None,
) -> dict:
    """The flat kebab-case mapping given on the command line (over ``defaults``).

    Raises :class:`ConfigError` for a malformed ``-c``, an unknown key, a key that
    ``command`` (default: the subcommand ``args.command``) does not honour, or a value
    of the wrong type or range.
    """
    given: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name.startswith("cfg_") and name != "cfg_overrides" and value is not None:
            given[name[4:]] = value
    for item in getattr(args, "cfg_overrides", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-c expects KEY=VALUE (e.g. -c dp-epsilon=8), got {item!r}")
        given[key.strip()] = value.strip().strip('"')
    EndoFedConfig.check_keys(given)
    command_scope(command or args.command).check(given)
    values: dict[str, Any] = {**(defaults or {}), **given}
    if "preset" in values:  # an unknown preset fails here, before any data is read
        size = preset_image_size(str(values["preset"]))
        if size is not None and "image-size" not in values:
            values["image-size"] = size
    EndoFedConfig.from_mapping(values)  # every value checked before the command starts
    return values


def preset_image_size(preset: str) -> int | None:
    """The input size a preset names; :class:`ConfigError` for an unknown preset."""
    from endofed.shared.model.presets import PRESETS, get_preset

    try:
        return get_preset(preset).image_size
    except ValueError:
        guess = closest_key(preset, PRESETS)
        hint = f"did you mean '{guess}'? " if guess else ""
        raise ConfigError(
            f"config key 'preset': unknown {preset!r} ({hint}choose one of "
            f"{', '.join(sorted(PRESETS))})", key="preset",
        ) from None


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> EndoFedConfig:
    return EndoFedConfig.from_mapping(config_mapping(args, defaults))
