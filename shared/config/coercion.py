"""Typed value coercion: a Flower/CLI value (str, int, float, bool) into a field's type.

Flower keys are the field names in kebab case (``local_epochs`` <-> ``local-epochs``)
unless a field declares another key in its metadata (``dp_epsilon`` in
:class:`~endofed.shared.config.privacy.PrivacyConfig` is ``dp-epsilon``). A value of
the wrong type raises :class:`ConfigError` naming the key, the value and what was
expected; keys no field of a section declares are ignored by that section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def field_key(f: dataclasses.Field) -> str:
    """The Flower key of dataclass field ``f`` (metadata ``key``, else kebab case)."""
    return f.metadata.get("key", f.name.replace("_", "-"))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as type ``annotation`` (Optional, tuple, bool, int, float, str, Path)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        last_exc: Exception | None = None
        for a in inner:
            try:
                return coerce(value, a, key)
            except ConfigError as exc:
                last_exc = exc
        raise last_exc or ConfigError(f"config key '{key}': cannot use {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(coerce(v, args[0], key) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if annotation is Path:
            return Path(str(value)).expanduser()
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(
            f"config key '{key}': expected {name}, got {value!r}"
        ) from None
    return value


def section_from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a kebab-case mapping (extra keys are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = field_key(f)
        if key in values:
            kwargs[f.name] = coerce(values[key], hints[f.name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def section_to_mapping(obj: Any) -> dict[str, Any]:
    """Inverse of :func:`section_from_mapping` (Flower-safe scalar values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, tuple):
            v = ",".join(str(x) for x in v)
        out[field_key(f)] = v
    return out
