"""A site's local audit trail: one hash-chained JSON line per message, on its own disk.

``STATE_DIR/audit-trail.jsonl`` is append-only. Every entry gets ``seq`` (0, 1, ...),
``time`` (UTC ISO 8601), ``prev_hash`` (the previous entry's ``hash``; 64 zeros for
the first) and ``hash`` = sha256 of the canonical JSON (sorted keys, no spaces) of the
entry without ``hash``. :meth:`AuditTrail.append` holds an exclusive ``fcntl`` lock on
the file while it reads the last entry and writes one line through ``O_APPEND``, then
fsyncs, so concurrent processes of one site keep one valid chain.

:meth:`AuditTrail.verify` recomputes the chain and names the first entry that breaks
it: an edited field (its hash no longer matches), a deleted, reordered or inserted
entry (``seq`` or ``prev_hash`` out of place), or a line that is not JSON. A last line
without its newline (the writer died mid-write) is reported as such. The next append
after such a crash terminates that line and records it in a ``recovered`` field
(its byte count and sha256) of the new, chained entry, so the damage stays visible in
the log and ``verify`` accepts exactly that line, and nothing else, as a known crash.

What the chain cannot show without an outside copy of the last hash: that the newest
entries were cut off, or that someone with write access rewrote the file and every
hash after the edit. Keep :meth:`AuditTrail.head` somewhere else to detect that.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

AUDIT_TRAIL_NAME = "audit-trail.jsonl"
GENESIS = "0" * 64
#: Fields :meth:`AuditTrail.append` sets; an entry passed in must not carry them.
RESERVED = ("seq", "time", "prev_hash", "hash", "recovered")


class AuditTrailError(RuntimeError):
    """The audit trail cannot be appended to (a damaged last entry), or bad input."""


@dataclass(frozen=True)
class AuditVerification:
    """Result of :meth:`AuditTrail.verify`."""

    ok: bool
    entries: int  # entries that verified before the first problem (all when ok)
    first_bad_seq: int | None
    message: str


def canonical_json(obj: Any) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 hex of ``entry`` without its ``hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items()
                                          if k != "hash"})).hexdigest()


def _as_entry(raw: bytes) -> dict[str, Any] | None:
    """``raw`` parsed as an audit entry (a dict with an int seq and a str hash), or None."""
    try:
        e = json.loads(raw)
    except ValueError:
        return None
    if isinstance(e, dict) and isinstance(e.get("seq"), int) and isinstance(e.get("hash"), str):
        return e
    return None


def _parse_time(value: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


class AuditTrail:
    """An append-only, hash-chained JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    # ------------------------------------------------------------------ writing
    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one entry (a JSON-serialisable dict); returns it with ``seq``,
        ``time``, ``prev_hash`` and ``hash`` added, after the line is on disk."""
        if not isinstance(entry, dict):
            raise AuditTrailError(f"an audit entry must be a dict, not {type(entry).__name__}")
        clash = [k for k in RESERVED if k in entry]
        if clash:
            raise AuditTrailError(f"audit entry fields {clash} are set by the trail itself")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            last, partial, newline = self._tail()
            out: dict[str, Any] = dict(entry)
            out["seq"] = 0 if last is None else int(last["seq"]) + 1
            out["time"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
            out["prev_hash"] = GENESIS if last is None else last["hash"]
            prefix = b"\n" if newline else b""
            if partial is not None:  # a crash left half a line: keep it, note it
                log.warning("%s: the last line was cut off (%d bytes); recorded in entry %d",
                            self.path, len(partial), out["seq"])
                out["recovered"] = {"bytes": len(partial),
                                    "sha256": hashlib.sha256(partial).hexdigest()}
            try:
                out["hash"] = entry_hash(out)
            except (TypeError, ValueError) as exc:
                raise AuditTrailError(f"audit entry is not JSON-serialisable: {exc}") from None
            data = prefix + canonical_json(out) + b"\n"
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            return out
        finally:
            os.close(fd)  # releases the lock

    def _tail(self) -> tuple[dict[str, Any] | None, bytes | None, bool]:
        """(last complete entry or None, bytes of a cut-off last line or None, whether
        the file lacks its final newline)."""
        with open(self.path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return None, None, False
            chunk, pos = b"", size
            # read backwards until the buffer holds the last two line breaks (or the start)
            while pos > 0 and chunk.count(b"\n") < 2:
                step = min(pos, 1 << 16)
                pos -= step
                fh.seek(pos)
                chunk = fh.read(step) + chunk
        partial = None
        newline = not chunk.endswith(b"\n")
        if newline:
            cut = chunk.rfind(b"\n")
            partial, chunk = chunk[cut + 1:], chunk[:cut + 1]
            whole = _as_entry(partial)
            if whole is not None:  # the crash hit between the entry and its newline
                return whole, None, True
            if not chunk and pos == 0:
                return None, partial, True
        lines = chunk.rstrip(b"\n").split(b"\n")
        last = _as_entry(lines[-1] if lines else b"")
        if last is None:
            raise AuditTrailError(f"{self.path}: the last entry is damaged (not an audit "
                                  "entry); run `endofed site log --verify` and keep a copy "
                                  "before moving the file aside")
        return last, partial, newline

    # ------------------------------------------------------------------ reading
    def entries(self, *, since: _dt.datetime | None = None) -> list[dict[str, Any]]:
        """All readable entries in file order (unreadable lines are skipped, see
        :meth:`verify`), optionally only those with ``time >= since`` (naive = UTC)."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=_dt.UTC)
        out = []
        for _, raw in self._lines():
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(e, dict):
                continue
            if since is not None:
                try:
                    if _parse_time(str(e.get("time"))) < since:
                        continue
                except ValueError:
                    continue
            out.append(e)
        return out

    def _lines(self) -> list[tuple[int, bytes]]:
        """(1-based line number, bytes) of every line, the last one even if cut off."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        parts = data.split(b"\n")
        if parts and parts[-1] == b"":
            parts.pop()
        return list(enumerate(parts, start=1))

    def head(self) -> str:
        """The last entry's hash (:data:`GENESIS` for an empty trail): keep a copy
        elsewhere to detect later truncation or a rewritten chain."""
        if not self.path.exists():
            return GENESIS
        last, _, _ = self._tail()
        return GENESIS if last is None else str(last["hash"])

    def verify(self) -> AuditVerification:
        """Recompute the chain; the first entry that breaks it, with a one-line reason."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AuditVerification(True, 0, None, f"{self.path}: no audit trail yet")
        complete = data.endswith(b"\n") or not data
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        prev, seq, recovered = GENESIS, 0, 0
        pending: bytes | None = None  # an unreadable line, acceptable only if recovered
        pending_no = 0

        def bad(reason: str) -> AuditVerification:
            return AuditVerification(False, seq, seq, f"{self.path}: {reason}")

        for no, raw in enumerate(lines, start=1):
            if no == len(lines) and not complete and _as_entry(raw) is None:
                return bad(f"line {no} (entry {seq}) is cut off: the writer stopped "
                           "mid-write (crash or full disk?)")
            try:
                e = json.loads(raw)
                if not isinstance(e, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if pending is not None:
                    return bad(f"line {pending_no} is not a JSON entry")
                pending, pending_no = raw, no
                continue
            if pending is not None:
                rec = e.get("recovered")
                want = {"bytes": len(pending), "sha256": hashlib.sha256(pending).hexdigest()}
                if rec != want:
                    return bad(f"line {pending_no} is not a JSON entry")
                recovered += 1
                pending = None
            elif "recovered" in e:
                return bad(f"line {no}: entry {e.get('seq')} claims a recovered crash "
                           "that is not there")
            if e.get("seq") != seq:
                found = e.get("seq")
                if isinstance(found, int) and found > seq:
                    why = f"entry {seq} is missing (line {no} holds entry {found})"
                else:
                    why = f"line {no} holds entry {found!r} where entry {seq} belongs"
                return bad(f"{why}: entries were deleted, reordered or inserted")
            if e.get("prev_hash") != prev:
                return bad(f"entry {seq} (line {no}) does not chain to the entry before it: "
                           "an entry was removed, reordered or inserted before it")
            if e.get("hash") != entry_hash(e):
                return bad(f"entry {seq} (line {no}) was modified after it was written "
                           "(its hash does not match its content)")
            prev, seq = e["hash"], seq + 1
        if pending is not None:
            return bad(f"line {pending_no} is not a JSON entry")
        note = f"; {recovered} line(s) cut off by a crash, recorded" if recovered else ""
        return AuditVerification(True, seq, None,
                                 f"{self.path}: {seq} entries, chain intact{note}")
