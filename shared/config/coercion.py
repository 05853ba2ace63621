"""Typed value coercion: a Flower/CLI value (str, int, float, bool) into a field's type.

Flower keys are the field names in kebab case (``local_epochs`` <-> ``local-epochs``)
unless a field declares another key in its metadata (``dp_epsilon`` in
:class:`~endofed.shared.config.privacy.PrivacyConfig` is ``dp-epsilon``). A value of
the wrong type raises :class:`ConfigError` naming the key, the value and what was
expected. A section reads only the keys its fields declare; that no key is unknown is
checked once for the whole mapping (:meth:`EndoFedConfig.from_mapping
<endofed.shared.config.flower.EndoFedConfig.from_mapping>`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting the user can fix: an unknown key, a value of the wrong type or range.

    ``key`` is the config key at fault when one is (read from a ``config key 'x'``
    message otherwise). The CLI prints the message as one line and exits with code 2.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        if key is None:
            found = _KEY_IN_MESSAGE.search(message)
            key = found.group(1) if found else None
        self.key = key


_KEY_IN_MESSAGE = re.compile(r"config key '([^']+)'")


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
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # nan would pass every range check (dp-epsilon!)
                raise ValueError
            return number
        if annotation is str:
            return str(value)
        if annotation is Path:
            return Path(str(value)).expanduser()
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(
            f"config key '{key}': expected {_describe(annotation, name)}, got {value!r}",
            key=key,
        ) from None
    return value


def _describe(annotation: Any, name: str) -> str:
    if annotation is bool:
        return "true or false"
    if annotation is float:
        return "a finite number"
    if annotation is int:
        return "an integer"
    return name


def section_keys(cls: type) -> tuple[str, ...]:
    """The Flower keys the fields of dataclass ``cls`` declare, in field order."""
    return tuple(field_key(f) for f in dataclasses.fields(cls))


def section_from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from the keys of a kebab-case mapping its fields declare.

    Other keys are left to the other sections; :meth:`EndoFedConfig.from_mapping
    <endofed.shared.config.flower.EndoFedConfig.from_mapping>` rejects unknown ones.
    """
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


def check_range(
    key: str,
    value: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    note: str = "",
) -> None:
    """Raise :class:`ConfigError` unless ``value`` lies in the interval the bounds give.

    ``check_range("dp-delta", d, gt=0, lt=1)`` -> ``config key 'dp-delta': must be in
    (0, 1), got 2.0``; ``note`` is added in brackets (e.g. ``0 = batch-size``).
    """
    if ((ge is None or value >= ge) and (gt is None or value > gt)
            and (le is None or value <= le) and (lt is None or value < lt)):
        return
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else None
    if low and high:
        want = f"in {low}, {high}"
    elif low:
        want = (">= " if ge is not None else "> ") + low[1:]
    else:
        want = ("<= " if le is not None else "< ") + str(high)[:-1]
    extra = f" ({note})" if note else ""
    raise ConfigError(f"config key '{key}': must be {want}{extra}, got {value}", key=key)
