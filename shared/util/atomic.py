"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_save(path: Path | str, writer: Callable[[Path], Any], *,
                mode: int | None = None, durable: bool = True) -> Path:
    """Atomically replace ``path`` with what ``writer(tmp_path)`` writes.

    ``writer`` gets a unique temporary file in the target folder (so two writers never
    share it, and ``os.replace`` stays on one file system), e.g.
    ``lambda tmp: torch.save(obj, tmp)``. ``mode`` (e.g. ``0o600`` for a private key)
    is set before any byte lands. With ``durable`` (the default) the file is flushed to
    disk before the rename, so a crash leaves the old file, not an empty one; caches
    whose entries can be recomputed pass ``durable=False`` and skip the fsync.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        writer(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None,
                       durable: bool = True) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_save`)."""
    return atomic_save(path, lambda tmp: tmp.write_bytes(data), mode=mode, durable=durable)


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False, default: Any = None) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (newline-terminated)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return atomic_write_text(path, text)
