"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None,
                       fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a unique temporary file in the same folder.

    ``mode`` (e.g. ``0o600`` for a private key) is set on the temporary file before any
    byte lands, so the content is never readable with looser permissions. ``fsync``
    flushes to disk before the rename (a crash leaves the old file, not an empty one).
    The temporary name is unique per call, so two writers never share it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False, default: Any = None) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (newline-terminated)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return atomic_write_text(path, text)


def atomic_save(path: Path | str, writer: Any) -> Path:
    """Atomically write what ``writer(tmp_path)`` writes (for ``torch.save`` & co.).

    ``writer`` gets the path of a unique temporary file in the target folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
