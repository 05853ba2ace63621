"""Which Flower apps (FABs) a site lets run on its data: approvals by hash or publisher.

A hospital approves an app in one of two ways, both recorded in
``STATE_DIR/approvals.json`` (JSON, written atomically under an exclusive lock; never
pickled):

* **by content hash**: the sha256 hex of the FAB bytes, which is what Flower calls
  ``Fab.hash_str`` and what ``flwr build`` / ``flwr run`` compute from the same
  :func:`flwr.cli.build.build_fab_from_disk` bytes. One changed byte anywhere in the
  app is a different hash.
* **by trusted publisher key** (ed25519): the publisher signs the app folder with
  ``endofed app sign APP_DIR --key KEY`` (:func:`sign_app_dir`), which writes
  :data:`SIGNATURE_FILE` into the folder. Flower's FAB build includes every
  ``**/*.toml`` file, so the signature travels inside the FAB. It signs a canonical
  manifest, the sorted ``path<TAB>sha256`` lines of every other zip entry of the FAB
  (all but the signature file and Flower's derived ``.info/`` entries), so an added,
  removed or changed file breaks it.

:meth:`ApprovalStore.check` decides for one FAB without executing, importing or
extracting anything from it: it hashes the bytes and reads zip entries as data. A
revoked hash stays refused even when the FAB carries a valid trusted signature.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from endofed.shared.util.atomic import atomic_write_json, atomic_write_text

try:  # POSIX advisory locks
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

APPROVALS_NAME = "approvals.json"
FORMAT = "endofed-approvals"
VERSION = 1
#: The signature file ``endofed app sign`` writes at the app folder's root. ``.toml``
#: because Flower's FAB build includes ``**/*.toml`` (``FAB_INCLUDE_PATTERNS``).
SIGNATURE_FILE = "endofed-signature.toml"
SIGNATURE_FORMAT = "endofed-app-signature"
SIGNATURE_VERSION = 1
#: Domain separation: the signed message starts with this line.
_SIGNED_PREFIX = b"endofed-app-signature/1\n"
#: Zip entries not covered by the manifest: the signature itself and Flower's ``.info/``
#: (``.info/CONTENT`` is derived from the other entries and lists the signature file).
_INFO_PREFIX = ".info/"
#: Refuse FABs that expand to more than this (a zip bomb must not exhaust the site).
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{12,64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PREFIX = 12


class ApprovalError(RuntimeError):
    """A damaged approvals file, an unusable key, or an approval that cannot be made."""


@dataclass(frozen=True)
class Approval:
    """One approval: of a FAB hash (``kind="hash"``) or of a publisher key."""

    kind: str  # "hash" | "publisher"
    ident: str  # the FAB sha256 hex, or the publisher's name
    approved_at: str
    note: str = ""
    source: str = ""  # e.g. the FAB file approved, or the key file
    public_key: str | None = None  # OpenSSH "ssh-ed25519 AAAA..." (publishers)
    fingerprint: str | None = None  # "SHA256:..." as ssh-keygen -l prints it
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the file's record format)."""
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """Whether a FAB may run, why, and which approval matched (hash or publisher name)."""

    approved: bool
    reason: str
    matched: str | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- keys

def key_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    """OpenSSH-style fingerprint (``SHA256:<base64>``, as ``ssh-keygen -lf`` prints)."""
    blob = key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def openssh_public(key: ed25519.Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...`` text of a public key."""
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode("ascii")


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """An ed25519 public key from a PEM (``BEGIN PUBLIC KEY``) or OpenSSH file."""
    path = Path(path)
    data = path.read_bytes()
    text = data.strip()
    if b"PRIVATE KEY" in text[:80]:
        raise ApprovalError(f"{path}: this is a private key; give the publisher's public "
                            f"key (e.g. {path.name}.pub)")
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_ssh_public_key(text)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ApprovalError(f"{path}: not a PEM or OpenSSH public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ApprovalError(f"{path}: the key is {type(key).__name__}, not ed25519")
    return key


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """An unencrypted ed25519 private key from a PEM (PKCS#8) or OpenSSH file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if b"OPENSSH PRIVATE KEY" in data[:80]:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ApprovalError(f"{path}: the private key is encrypted; EndoFed signs with an "
                            "unencrypted key (keep it offline)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ApprovalError(f"{path}: not a PEM or OpenSSH private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ApprovalError(f"{path}: the key is {type(key).__name__}, not ed25519")
    return key


def generate_keypair(out: Path) -> tuple[Path, Path, str]:
    """Write a new ed25519 key: ``out`` (PKCS#8 PEM, mode 0600) and ``out.pub`` (OpenSSH).

    Refuses to overwrite either file. Returns ``(private, public, fingerprint)``.
    """
    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists():
            raise ApprovalError(f"{p}: already exists; not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    atomic_write_text(out, pem, mode=0o600)
    public = key.public_key()
    atomic_write_text(pub, openssh_public(public) + "\n")
    return out, pub, key_fingerprint(public)


# --------------------------------------------------------------------- manifests

def fab_manifest(fab_content: bytes) -> list[str]:
    """Sorted ``path\\tsha256`` lines of the FAB's zip entries except the signature file
    and ``.info/``. Reads entries as data only. Raises :class:`ApprovalError` for an
    unreadable zip, duplicate or unsafe entry names, or an oversized expansion."""
    lines = []
    for name, digest in _zip_entries(fab_content):
        if name == SIGNATURE_FILE or name.startswith(_INFO_PREFIX):
            continue
        lines.append(f"{name}\t{digest}")
    return sorted(lines)


def _zip_entries(fab_content: bytes) -> Iterator[tuple[str, str]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(fab_content))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ApprovalError(f"the FAB is not a readable zip file ({exc})") from None
    seen: set[str] = set()
    total = 0
    with zf:
        infos = zf.infolist()
        for info in infos:
            name = info.filename
            if name in seen:
                raise ApprovalError(f"the FAB has the entry {name!r} twice")
            seen.add(name)
            if (not name or name.startswith("/") or "\\" in name or "\x00" in name
                    or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))):
                raise ApprovalError(f"the FAB has an unsafe entry name {name!r}")
            if info.is_dir():
                continue
            h = hashlib.sha256()
            try:
                with zf.open(info) as fh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_UNCOMPRESSED_BYTES:
                            raise ApprovalError("the FAB expands to more than "
                                                f"{MAX_UNCOMPRESSED_BYTES} bytes")
                        h.update(chunk)
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
                raise ApprovalError(f"the FAB entry {name!r} is unreadable ({exc})") from None
            yield name, h.hexdigest()


def _signed_message(manifest: list[str]) -> bytes:
    return _SIGNED_PREFIX + "".join(line + "\n" for line in manifest).encode("utf-8")


def _read_signature_entry(fab_content: bytes) -> bytes | None:
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as zf:
            names = zf.namelist()
            if SIGNATURE_FILE not in names:
                return None
            info = zf.getinfo(SIGNATURE_FILE)
            if info.file_size > 1 << 20:
                raise ApprovalError(f"the FAB's {SIGNATURE_FILE} is larger than 1 MiB")
            return zf.read(info)
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ApprovalError(f"the FAB is not a readable zip file ({exc})") from None


def _parse_signature(raw: bytes) -> dict[str, Any]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ApprovalError(f"{SIGNATURE_FILE} is not valid TOML ({exc})") from None
    want = {"format", "version", "algorithm", "key-fingerprint", "public-key", "signed-at",
            "signature", "manifest"}
    if set(doc) != want:
        extra, missing = sorted(set(doc) - want), sorted(want - set(doc))
        raise ApprovalError(f"{SIGNATURE_FILE}: unexpected keys {extra}, missing {missing}")
    if (doc["format"], doc["version"], doc["algorithm"]) != (SIGNATURE_FORMAT,
                                                             SIGNATURE_VERSION, "ed25519"):
        raise ApprovalError(f"{SIGNATURE_FILE}: unsupported format {doc['format']!r} "
                            f"version {doc['version']!r} algorithm {doc['algorithm']!r}")
    if not (isinstance(doc["manifest"], list)
            and all(isinstance(x, str) for x in doc["manifest"])):
        raise ApprovalError(f"{SIGNATURE_FILE}: manifest must be a list of strings")
    return doc


def _check_signature(fab_content: bytes,
                     keys: Mapping[str, ed25519.Ed25519PublicKey]) -> tuple[str | None, str]:
    """``(publisher name or None, reason)`` for the FAB's signature against ``keys``."""
    actual = fab_manifest(fab_content)  # first: refuse unsafe or damaged zips outright
    raw = _read_signature_entry(fab_content)
    if raw is None:
        return None, "it carries no publisher signature"
    doc = _parse_signature(raw)
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, TypeError):
        return None, f"{SIGNATURE_FILE}: the signature is not base64"
    signed = list(doc["manifest"])
    message = _signed_message(signed)
    candidates = [(n, k) for n, k in keys.items()
                  if key_fingerprint(k) == doc["key-fingerprint"]]
    if not candidates:
        return None, (f"it is signed by key {doc['key-fingerprint']}, which is not a "
                      "trusted publisher key here")
    for name, key in candidates:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        if actual != signed:
            return None, f"signed by {name!r}, but {_manifest_diff(signed, actual)}"
        return name, f"signed by trusted publisher {name!r}"
    return None, (f"its signature does not verify with the trusted key of "
                  f"{candidates[0][0]!r} (the signature file was altered)")


def _manifest_diff(signed: list[str], actual: list[str]) -> str:
    s = dict(line.split("\t", 1) for line in signed if "\t" in line)
    a = dict(line.split("\t", 1) for line in actual if "\t" in line)
    changed = sorted(p for p in s.keys() & a.keys() if s[p] != a[p])
    added = sorted(a.keys() - s.keys())
    removed = sorted(s.keys() - a.keys())
    parts = []
    for what, paths in (("changed", changed), ("added", added), ("removed", removed)):
        if paths:
            more = f" (+{len(paths) - 3} more)" if len(paths) > 3 else ""
            parts.append(f"{what} since signing: {', '.join(paths[:3])}{more}")
    return "; ".join(parts) or "the files differ from what was signed"


def verify_fab_signature(fab_content: bytes,
                         keys: Mapping[str, ed25519.Ed25519PublicKey]) -> str | None:
    """The name of the publisher in ``keys`` whose valid signature the FAB carries over
    exactly its current files, else ``None``. A damaged FAB or signature file is
    ``None`` too (use :meth:`ApprovalStore.check` for the reason)."""
    try:
        return _check_signature(fab_content, keys)[0]
    except ApprovalError as exc:
        log.info("FAB signature refused: %s", exc)
        return None


def sign_app_dir(app_dir: Path, private_key_file: Path) -> Path:
    """Sign a Flower app folder: write ``APP_DIR/endofed-signature.toml``.

    The manifest is computed from the FAB that Flower's own
    :func:`flwr.cli.build.build_fab_from_files` makes of the folder (same file
    selection, ``.gitignore`` and include/exclude rules, and the same rewritten
    ``pyproject.toml`` as ``flwr build`` / ``flwr run``), with any old signature file
    left out. Afterwards the folder is built again and the signature verified, so a
    ``.gitignore`` or ``fab-exclude`` rule that drops the signature is an error here,
    not a refusal at every site. Returns the signature file's path.
    """
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    app_dir = Path(app_dir).expanduser().resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise ApprovalError(f"{app_dir}: not a Flower app folder (no pyproject.toml)")
    key = load_private_key(private_key_file)
    public = key.public_key()

    def build(without_signature: bool) -> bytes:
        files = collect_files(app_dir)
        if without_signature:
            files.pop(SIGNATURE_FILE, None)
        try:
            return build_fab_from_files(files)[0]
        except ValueError as exc:
            raise ApprovalError(f"{app_dir}: flwr cannot build this app ({exc})") from None

    manifest = fab_manifest(build(without_signature=True))
    signature = key.sign(_signed_message(manifest))
    lines = [
        "# EndoFed app signature, written by `endofed app sign`. Do not edit: any change",
        "# to this app's files (or to this file) makes every site refuse the signature.",
        f'format = "{SIGNATURE_FORMAT}"',
        f"version = {SIGNATURE_VERSION}",
        'algorithm = "ed25519"',
        f'key-fingerprint = "{key_fingerprint(public)}"',
        f'public-key = "{openssh_public(public)}"',
        f'signed-at = "{_now()}"',
        f'signature = "{base64.b64encode(signature).decode("ascii")}"',
        "manifest = [",
        *(f"    {json.dumps(line)}," for line in manifest),
        "]",
    ]
    path = atomic_write_text(app_dir / SIGNATURE_FILE, "\n".join(lines) + "\n")
    fab = build(without_signature=False)
    if _read_signature_entry(fab) is None:
        path.unlink()
        raise ApprovalError(f"{app_dir}: flwr's build leaves out {SIGNATURE_FILE} (a "
                            ".gitignore or fab-exclude rule?); the signature would never "
                            "reach a site")
    name, reason = _check_signature(fab, {"self": public})
    if name is None:  # pragma: no cover - would be a bug in this module
        raise ApprovalError(f"{app_dir}: the new signature does not verify: {reason}")
    log.debug("signed %d files of %s with %s", len(manifest), app_dir, key_fingerprint(public))
    return path


# ------------------------------------------------------------------------- store

class ApprovalStore:
    """The site's approvals, in ``state_dir/approvals.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.path = self.state_dir / APPROVALS_NAME

    # -- file access
    def _read(self) -> list[Approval]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            raise ApprovalError(f"{self.path}: damaged approvals file (not UTF-8 text)"
                                ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApprovalError(f"{self.path}: damaged approvals file (not JSON: {exc})"
                                ) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ApprovalError(f"{self.path}: not an EndoFed approvals file")
        if doc.get("version") != VERSION:
            raise ApprovalError(f"{self.path}: approvals version {doc.get('version')!r} is "
                                f"not supported (this EndoFed reads {VERSION})")
        if set(doc) != {"format", "version", "approvals"} or not isinstance(
                doc["approvals"], list):
            raise ApprovalError(f"{self.path}: damaged approvals file (unexpected keys "
                                f"{sorted(set(doc) - {'format', 'version', 'approvals'})})")
        names = {f.name for f in fields(Approval)}
        out = []
        for i, rec in enumerate(doc["approvals"]):
            if not isinstance(rec, dict) or not set(rec) <= names:
                extra = sorted(set(rec) - names) if isinstance(rec, dict) else rec
                raise ApprovalError(f"{self.path}: damaged approvals file (record {i}: "
                                    f"unexpected {extra!r})")
            try:
                a = Approval(**rec)
            except TypeError as exc:
                raise ApprovalError(f"{self.path}: damaged approvals file (record {i}: "
                                    f"{exc})") from None
            if a.kind == "hash" and not _HASH_RE.match(str(a.ident)):
                raise ApprovalError(f"{self.path}: damaged approvals file (record {i}: "
                                    f"{a.ident!r} is not a sha256 hex hash)")
            if a.kind == "publisher" and not a.public_key:
                raise ApprovalError(f"{self.path}: damaged approvals file (record {i}: "
                                    "publisher without a public key)")
            if a.kind not in ("hash", "publisher"):
                raise ApprovalError(f"{self.path}: damaged approvals file (record {i}: "
                                    f"unknown kind {a.kind!r})")
            out.append(a)
        return out

    def _write(self, records: list[Approval]) -> None:
        atomic_write_json(self.path, {"format": FORMAT, "version": VERSION,
                                      "approvals": [r.to_dict() for r in records]})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Approval]]:
        """Read-modify-write under an exclusive lock on ``approvals.json.lock``."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(APPROVALS_NAME + ".lock"),
                       os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._read()
        finally:
            os.close(lock)

    # -- approvals
    def approve_hash(self, fab_hash: str, *, note: str = "", source: str = "") -> Approval:
        """Approve a FAB by its sha256 hex hash. Already approved: the existing record."""
        fab_hash = fab_hash.strip().lower()
        if not _HASH_RE.match(fab_hash):
            raise ApprovalError(f"{fab_hash!r} is not a FAB hash (64 hex digits) or a file")
        with self._locked() as records:
            for r in records:
                if r.kind == "hash" and r.ident == fab_hash and r.active:
                    return r
            new = Approval("hash", fab_hash, _now(), note=note, source=source)
            self._write([*records, new])
        log.debug("approved FAB %s", fab_hash)
        return new

    def approve_fab_file(self, fab_path: Path, *, note: str = "") -> Approval:
        """Approve the FAB file's content hash (what Flower's ``Fab.hash_str`` is)."""
        fab_path = Path(fab_path)
        content = fab_path.read_bytes()
        try:
            fab_manifest(content)
        except ApprovalError as exc:
            raise ApprovalError(f"{fab_path}: {exc}") from None
        return self.approve_hash(hashlib.sha256(content).hexdigest(), note=note,
                                 source=str(fab_path.resolve()))

    def trust_publisher(self, public_key_file: Path, *, name: str) -> Approval:
        """Trust an ed25519 publisher key (PEM or OpenSSH) for signed apps, as ``name``."""
        if not _NAME_RE.match(name) or _PREFIX_RE.match(name):
            raise ApprovalError(f"publisher name {name!r}: use 1-64 letters, digits, '.', "
                                "'_' or '-' (not a hex string that looks like a hash)")
        key = load_public_key(public_key_file)
        fp = key_fingerprint(key)
        with self._locked() as records:
            for r in records:
                if r.kind == "publisher" and r.active and (r.ident == name
                                                           or r.fingerprint == fp):
                    raise ApprovalError(f"publisher {r.ident!r} ({r.fingerprint}) is already "
                                        "trusted; revoke it first to replace it")
            new = Approval("publisher", name, _now(), source=str(Path(public_key_file)
                                                                  .resolve()),
                           public_key=openssh_public(key), fingerprint=fp)
            self._write([*records, new])
        log.debug("trusted publisher %s (%s)", name, fp)
        return new

    def revoke(self, ident: str) -> Approval:
        """Revoke the active approval named by a publisher name or a hash prefix
        (at least 12 hex digits). Returns the revoked record."""
        ident = ident.strip()
        with self._locked() as records:
            active = [r for r in records if r.active]
            hits = [r for r in active if r.kind == "publisher" and r.ident == ident]
            if not hits and _PREFIX_RE.match(ident.lower()):
                hits = [r for r in active
                        if r.kind == "hash" and r.ident.startswith(ident.lower())]
            elif not hits and re.fullmatch(r"[0-9a-fA-F]{1,11}", ident):
                raise ApprovalError(f"{ident!r}: give at least {MIN_PREFIX} hex digits of "
                                    "the hash")
            if not hits:
                raise ApprovalError(f"{ident!r}: no active approval with that hash prefix "
                                    "or publisher name (see `endofed site approvals list`)")
            if len(hits) > 1:
                raise ApprovalError(f"{ident!r} matches {len(hits)} approvals; give more "
                                    "digits")
            target = hits[0]
            revoked = Approval(**{**target.to_dict(), "revoked_at": _now()})
            self._write([revoked if r is target else r for r in records])
        log.debug("revoked %s %s", target.kind, target.ident)
        return revoked

    def list(self, *, include_revoked: bool = False) -> list[Approval]:
        """Approvals in the order they were made (active ones only by default)."""
        return [r for r in self._read() if include_revoked or r.active]

    def check(self, fab_hash: str, fab_content: bytes) -> Decision:
        """May this FAB run here? Hashes the bytes and reads the zip as data only."""
        actual = hashlib.sha256(fab_content).hexdigest()
        short = actual[:MIN_PREFIX]
        if fab_hash.strip().lower() != actual:
            return Decision(False, f"the FAB's content hash {short}... does not match its "
                            f"announced hash {fab_hash[:MIN_PREFIX]}...")
        try:
            records = self._read()
        except ApprovalError as exc:
            return Decision(False, f"the site's approvals cannot be read: {exc}")
        hashes = [r for r in records if r.kind == "hash" and r.ident == actual]
        if any(r.active for r in hashes):
            return Decision(True, f"app {short}... is approved by hash", actual)
        if hashes:
            return Decision(False, f"app {short}... was approved, then revoked on "
                            f"{hashes[-1].revoked_at}")
        keys: dict[str, ed25519.Ed25519PublicKey] = {}
        revoked_fps: dict[str, str] = {}
        for r in records:
            if r.kind != "publisher" or not r.public_key:
                continue
            try:
                key = serialization.load_ssh_public_key(r.public_key.encode("ascii"))
            except (ValueError, UnsupportedAlgorithm):
                return Decision(False, f"{self.path}: publisher {r.ident!r} has an "
                                "unreadable public key")
            if isinstance(key, ed25519.Ed25519PublicKey):
                if r.active:
                    keys[r.ident] = key
                else:
                    revoked_fps[key_fingerprint(key)] = r.ident
        try:
            name, why = _check_signature(fab_content, keys)
        except ApprovalError as exc:
            return Decision(False, f"app {short}... is not approved by hash and {exc}")
        if name is not None:
            return Decision(True, f"app {short}... is {why}", name)
        raw = _read_signature_entry(fab_content)
        if raw is not None:
            fp = _parse_signature(raw)["key-fingerprint"]
            if fp in revoked_fps and fp not in {key_fingerprint(k) for k in keys.values()}:
                why = f"it is signed by publisher {revoked_fps[fp]!r}, whose key was revoked"
        return Decision(False, f"app {short}... is not approved by hash and {why}")
