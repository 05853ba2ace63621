"""TLS certificates and SuperNode authentication keys for a Flower deployment.

:func:`generate_certificates` writes, under one output folder::

    ca.crt, ca.key                      self-signed certificate authority (EC P-384)
    superlink.crt, superlink.key        SuperLink server certificate signed by the CA
    supernodes/<site>/auth.key          the site's SuperNode private key (OpenSSH PEM)
    supernodes/<site>/auth.pub          its public key (OpenSSH, one line)
    manifest.json                       what was created (relative paths, SANs, dates)

These are exactly the inputs Flower 1.41 expects:

* ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt
  --ssl-keyfile superlink.key [--enable-supernode-auth]``;
* ``flwr supernode register supernodes/<site>/auth.pub <connection>`` registers a
  site (the SuperLink loads it with ``serialization.load_ssh_public_key`` and
  requires a NIST EC curve);
* ``flower-supernode --root-certificates ca.crt --auth-supernode-private-key
  supernodes/<site>/auth.key`` (loaded with ``load_ssh_private_key``, EC only);
* ``root-certificates = "ca.crt"`` in the ``flwr`` CLI's SuperLink connection.

Private keys are written with mode ``0600`` and never overwritten unless
``force=True``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from endofed.shared.util.atomic import atomic_write_bytes

__all__ = [
    "CertBundle",
    "SiteKeys",
    "generate_certificates",
    "load_bundle",
    "public_key_fingerprint",
    "split_hosts",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "superlink.crt", "superlink.key"
SUPERNODES_DIR = "supernodes"
SITE_PRIVATE_KEY, SITE_PUBLIC_KEY = "auth.key", "auth.pub"

_CURVE = ec.SECP384R1  # P-384: the curve Flower's documentation uses for node auth
_SITE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")  # fmt: skip
_DEFAULT_DNS = ("localhost",)
_DEFAULT_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class SiteKeys:
    """One site's SuperNode authentication key pair."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class CertBundle:
    """Absolute paths of everything :func:`generate_certificates` wrote."""

    out_dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sites: dict[str, SiteKeys] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST_NAME


def split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split SuperLink host names into (DNS names, IP addresses), validating each."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in hosts:
        host = raw.strip()
        if not host:
            continue
        try:
            ips.append(str(ipaddress.ip_address(host.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _DNS_RE.match(host):
            raise ValueError(f"SuperLink host {raw!r} is neither an IP address nor a DNS name")
        dns.append(host.lower())
    return dns, ips


def _check_site_names(sites: Sequence[str]) -> list[str]:
    names = [s.strip() for s in sites]
    if not names:
        raise ValueError("at least one site name is needed")
    bad = [n for n in names if not _SITE_NAME_RE.match(n)]
    if bad:
        raise ValueError(
            f"site names {bad} are not usable as folder names (letters, digits, '.', '_', "
            "'-', starting with a letter or digit, at most 64 characters)"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate site names {dupes}")
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EndoFed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, now: _dt.datetime, days: int
) -> x509.Certificate:
    name = _name("EndoFed federation CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    dns: Sequence[str],
    ips: Sequence[str],
    now: _dt.datetime,
    days: int,
) -> x509.Certificate:
    san = [x509.DNSName(d) for d in dns] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(dns[0] if dns else ips[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _openssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(key: ec.EllipticCurvePrivateKey, comment: str) -> bytes:
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line + b" " + comment.encode() + b"\n"


def public_key_fingerprint(public_key_path: Path) -> str:
    """``SHA256:<hex>`` of an OpenSSH public key file's DER SubjectPublicKeyInfo."""
    key = serialization.load_ssh_public_key(Path(public_key_path).read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return "SHA256:" + digest.finalize().hex()


def _cert_fingerprint(cert: x509.Certificate) -> str:
    return "SHA256:" + cert.fingerprint(hashes.SHA256()).hex()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically with permissions ``mode`` (set before any byte lands)."""
    atomic_write_bytes(path, data, mode=mode)


def generate_certificates(
    out_dir: Path,
    sites: Sequence[str],
    *,
    superlink_hosts: Sequence[str] = (),
    days: int = 365,
    force: bool = False,
) -> CertBundle:
    """Create a CA, the SuperLink certificate and one SuperNode key pair per site.

    Args:
        out_dir: output folder (created; may exist).
        sites: site (hospital) names; each gets ``supernodes/<name>/auth.{key,pub}``.
        superlink_hosts: extra DNS names / IP addresses the SuperLink is reached by
            (``localhost``, ``127.0.0.1`` and ``::1`` are always included).
        days: validity of the certificates.
        force: overwrite existing keys and certificates (otherwise FileExistsError).

    Returns:
        The :class:`CertBundle` of absolute paths.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    names = _check_site_names(sites)
    extra_dns, extra_ips = split_hosts(superlink_hosts)
    dns = list(dict.fromkeys([*_DEFAULT_DNS, *extra_dns]))
    ips = list(dict.fromkeys([*_DEFAULT_IPS, *extra_ips]))

    out = Path(out_dir).expanduser().resolve()
    bundle = CertBundle(
        out_dir=out,
        ca_cert=out / CA_CERT,
        ca_key=out / CA_KEY,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
        sites={
            n: SiteKeys(
                name=n,
                private_key=out / SUPERNODES_DIR / n / SITE_PRIVATE_KEY,
                public_key=out / SUPERNODES_DIR / n / SITE_PUBLIC_KEY,
            )
            for n in names
        },
    )
    targets = [bundle.ca_cert, bundle.ca_key, bundle.server_cert, bundle.server_key]
    for s in bundle.sites.values():
        targets += [s.private_key, s.public_key]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{out}: refusing to overwrite existing keys/certificates {existing}; "
            "use force=True (endofed certs --force) to replace them"
        )

    now = _dt.datetime.now(_dt.UTC)
    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key, now, days)
    server_key = _new_key()
    server_cert = _server_certificate(server_key, ca_key, ca_cert, dns, ips, now, days)

    _write(bundle.ca_key, _pem_key(ca_key), 0o600)
    _write(bundle.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(bundle.server_key, _pem_key(server_key), 0o600)
    _write(bundle.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    site_entries = {}
    for name, keys in bundle.sites.items():
        key = _new_key()
        _write(keys.private_key, _openssh_private(key), 0o600)
        _write(keys.public_key, _openssh_public(key, f"endofed-{name}"), 0o644)
        site_entries[name] = {
            "private-key": str(keys.private_key.relative_to(out)),
            "public-key": str(keys.public_key.relative_to(out)),
            "public-key-fingerprint": public_key_fingerprint(keys.public_key),
        }

    manifest = {
        "format": "endofed-certs/1",
        "created": now.isoformat(timespec="seconds"),
        "valid-days": days,
        "key-type": f"EC {_CURVE.name}",
        "ca": {
            "cert": CA_CERT,
            "key": CA_KEY,
            "fingerprint": _cert_fingerprint(ca_cert),
            "not-after": ca_cert.not_valid_after_utc.isoformat(timespec="seconds"),
        },
        "superlink": {
            "cert": SERVER_CERT,
            "key": SERVER_KEY,
            "dns-names": dns,
            "ip-addresses": ips,
            "fingerprint": _cert_fingerprint(server_cert),
            "not-after": server_cert.not_valid_after_utc.isoformat(timespec="seconds"),
        },
        "supernodes": site_entries,
    }
    _write(bundle.manifest, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)
    logger.info(
        "wrote CA, SuperLink certificate (%s) and %d SuperNode key pair(s) to %s",
        ", ".join(dns + ips), len(names), out,
    )  # fmt: skip
    return bundle


def load_bundle(out_dir: Path) -> CertBundle:
    """Read the :class:`CertBundle` of a folder written by :func:`generate_certificates`."""
    out = Path(out_dir).expanduser().resolve()
    path = out / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no manifest; run `endofed certs --out {out}` first"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    try:
        sites = {
            name: SiteKeys(name, out / e["private-key"], out / e["public-key"])
            for name, e in manifest["supernodes"].items()
        }
        bundle = CertBundle(
            out_dir=out,
            ca_cert=out / manifest["ca"]["cert"],
            ca_key=out / manifest["ca"]["key"],
            server_cert=out / manifest["superlink"]["cert"],
            server_key=out / manifest["superlink"]["key"],
            sites=sites,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: missing or malformed entry {exc}") from exc
    missing = [str(p) for p in (bundle.ca_cert, bundle.server_cert, bundle.server_key)
               if not p.is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"{path}: files listed in the manifest are missing: {missing}")
    return bundle
