"""Flags shared by commands, turned into the one :class:`EndoFedConfig`.

Every key given on the command line (a config flag or ``-c KEY=VALUE``) must be known
(else the error names the closest key) and honoured by the command
(:data:`~endofed.shared.config.scope.COMMAND_SCOPES`); values are then checked by
:meth:`EndoFedConfig.from_mapping`, the same path as the Flower run and node config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.config.keys import closest_key
from endofed.shared.config.scope import command_scope

# flag -> (config key (kebab case, as in the Flower run config), type, METAVAR, help)
CONFIG_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "--preset": (
        "preset", str, "NAME",
        "model preset (lite0 lite1 lite2: ImageNet-pretrained; tiny, cpu, paper, r50x1...)",
    ),
    "--image-size": ("image-size", int, "PX", "square model input size in pixels"),
    "--batch-size": ("batch-size", int, "N", "images per batch"),
    "--epochs": ("local-epochs", int, "N", "training epochs"),
    "--lr": ("learning-rate", float, "LR", "learning rate"),
    "--class-names": ("class-names", str, "NAMES", "comma-separated lesion classes of the run"),
    "--val-fraction": ("val-fraction", float, "FRACTION", "patient-aware held-out share"),
    "--device": ("device", str, "DEVICE", "auto, cpu, cuda, cuda:1 ..."),
    "--seed": ("seed", int, "N", "random seed"),
    "--threads": ("threads", int, "N", "torch threads (0 = all cores)"),
    "--weights": (
        "weights-path", str, "MODE|FILE",
        "auto (installed ImageNet weights if the preset has them), pretrained, none, or a file",
    ),
    "--finetune": (
        "finetune", str, "MODE",
        "global (all weights), local (backbone frozen) or heads (only the box/class heads and "
        "the mask decoder train: DP after a warm start); auto: local with DP, else global",
    ),
    "--max-steps": ("max-steps", int, "N", "cap on steps per epoch (0 = none)"),
}

#: What the help shows instead of a config default that depends on another flag.
_DERIVED_DEFAULTS: dict[str, str] = {"image-size": "the preset's input size"}


def config_defaults() -> dict[str, Any]:
    """Every run-config key with the value an empty config gives it (the help's defaults)."""
    return EndoFedConfig.from_mapping({}).to_mapping()


def add_config_flags(
    parser: argparse.ArgumentParser,
    *,
    only: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    why: dict[str, str] | None = None,
) -> None:
    """Add the config flags (or a subset) plus generic ``-c key=value`` overrides.

    ``defaults`` are the command's own defaults over the config's (the values it passes
    to :func:`config_mapping`); ``why`` explains, per key, a default that differs from
    the config's. Both appear in ``--help``.
    """
    base = config_defaults()
    for flag, (key, typ, metavar, help_) in CONFIG_FLAGS.items():
        if only is not None and flag not in only:
            continue
        if defaults and key in defaults and defaults[key] != base.get(key):
            shown = f"{format_default(defaults[key])}, for this command"
            if key in base:
                shown += f"; the config default is {format_default(base[key])}"
        else:
            shown = _DERIVED_DEFAULTS.get(key) or format_default(base.get(key))
        text = f"{help_} (default: {shown})"
        if why and key in why:
            text += f". {why[key]}"
        parser.add_argument(flag, dest=f"cfg_{key}", type=typ, default=None, metavar=metavar,
                            help=text.replace("%", "%%"))
    parser.add_argument(
        "-c", "--config", dest="cfg_overrides", action="append", default=[],
        metavar="KEY=VALUE",
        help="any run-config key, e.g. -c dp-epsilon=8; one key per -c (repeat the flag "
             "for more keys: a value may itself hold commas, e.g. class-names=a,b)",
    )


# --- help formatting and list flags (the CLI conventions, one place) --------------------


def format_default(value: Any) -> str:
    """A default as the user would type it: lists comma-separated, paths as text."""
    if isinstance(value, list | tuple):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with ``(default: X)`` when it has a default worth showing
    (not ``None``, not SUPPRESS, not an off switch, not an empty list) and its text does
    not already state one. In descriptions and epilogs a one-line paragraph is wrapped to
    the terminal; a paragraph of several lines (``example:`` and its commands) is kept
    exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            if "\n" in para:
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(argparse.HelpFormatter._fill_text(self, para, width, indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if text is argparse.SUPPRESS or "default" in text.lower():
            return text
        default = action.default
        if (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or (isinstance(default, list | tuple) and not default)):
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default to show
        return f"{text} (default: {format_default(default).replace('%', '%%')})"


def warn_deprecated(message: str) -> None:
    """One line on stderr: a form that still works for one release."""
    print(f"endofed: deprecated: {message}", file=sys.stderr)


class CommaList(argparse.Action):
    """``--flag A,B,C``: a comma-separated list in one flag (the CLI convention).

    Repeating the flag (the old form) still adds to the list for one release, with a
    deprecation line. ``item_type`` converts each item.
    """

    def __init__(self, option_strings: Sequence[str], dest: str,
                 item_type: Callable[[str], Any] = str, **kwargs: Any) -> None:
        kwargs.setdefault("default", [])
        super().__init__(option_strings, dest, **kwargs)
        self.item_type = item_type

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        seen = f"_{self.dest}_given"
        if getattr(namespace, seen, False):
            warn_deprecated(f"repeating {option_string} is deprecated; give one "
                            f"comma-separated list ({option_string} A,B)")
            items = list(getattr(namespace, self.dest))
        else:
            items = []
        setattr(namespace, seen, True)
        for part in str(values).split(","):
            if part.strip():
                try:
                    items.append(self.item_type(part.strip()))
                except (TypeError, ValueError) as exc:
                    parser.error(f"{option_string}: invalid value {part.strip()!r} ({exc})")
        setattr(namespace, self.dest, items)


def add_out_flag(parser: argparse.ArgumentParser, *, help: str, metavar: str = "DIR") -> None:
    """``--out DIR`` (the common name) plus the old positional ``OUT`` as a hidden alias;
    read it with :func:`out_path`."""
    parser.add_argument("--out", type=Path, default=None, metavar=metavar, help=help)
    parser.add_argument("out_positional", type=Path, nargs="?", default=None,
                        help=argparse.SUPPRESS)


def out_path(args: argparse.Namespace) -> Path:
    """The folder of :func:`add_out_flag`; one-line refusal when neither or both differ."""
    flag, positional = args.out, getattr(args, "out_positional", None)
    if flag is not None and positional is not None and flag != positional:
        raise SystemExit(f"give the output folder once (--out {flag} or {positional})")
    if flag is None and positional is None:
        raise SystemExit("--out DIR is required (the output folder)")
    return flag if flag is not None else positional


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
