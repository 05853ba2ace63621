"""``endofed certs``: a CA, a SuperLink certificate with the right SANs, node keys."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from endofed.cli import main
from endofed.privacy.certs import generate_certificates, load_bundle


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_cli_writes_ca_server_cert_and_site_keys(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pki"
    hosts = ["--superlink-host", "superlink.example.org", "--superlink-host", "10.1.2.3"]
    rc = main(["certs", str(out), "--sites", "hosp-a,hosp-b", *hosts, "--days", "30"])
    assert rc == 0
    bundle = load_bundle(out)
    assert sorted(bundle.sites) == ["hosp-a", "hosp-b"]

    ca, server = _cert(bundle.ca_cert), _cert(bundle.server_cert)
    ca.verify_directly_issued_by(ca)  # self-signed
    server.verify_directly_issued_by(ca)  # signed by the CA (raises otherwise)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }
    days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert 30 <= days <= 31

    for path in (bundle.ca_key, bundle.server_key, *(s.private_key for s in bundle.sites.values())):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    server_key = serialization.load_pem_private_key(bundle.server_key.read_bytes(), None)
    assert server_key.public_key().public_numbers() == server.public_key().public_numbers()

    manifest = json.loads(bundle.manifest.read_text())
    assert manifest["superlink"]["ip-addresses"] == ["127.0.0.1", "::1", "10.1.2.3"]
    assert set(manifest["supernodes"]) == {"hosp-a", "hosp-b"}
    assert "manifest" in capsys.readouterr().out


def test_site_keys_are_what_flower_loads(tmp_path: Path) -> None:
    bundle = generate_certificates(tmp_path, ["a", "b"])
    fingerprints = set()
    for keys in bundle.sites.values():
        # flower-supernode --auth-supernode-private-key: load_ssh_private_key, EC only.
        private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        # flwr supernode register: flwr's own loader (NIST curve check included).
        registered = try_load_public_key(keys.public_key)
        assert registered == public_key_to_bytes(private.public_key())
        fingerprints.add(registered)
    assert len(fingerprints) == 2  # one distinct key per site


def test_refuses_to_overwrite_keys_without_force(tmp_path: Path) -> None:
    first = generate_certificates(tmp_path, ["a"])
    old_key = first.sites["a"].private_key.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_certificates(tmp_path, ["a"])
    with pytest.raises(SystemExit, match="--force"):
        main(["certs", str(tmp_path), "--sites", "a"])
    assert first.sites["a"].private_key.read_bytes() == old_key
    main(["certs", str(tmp_path), "--sites", "a", "--force"])
    assert first.sites["a"].private_key.read_bytes() != old_key
    assert stat.S_IMODE(first.sites["a"].private_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("sites", "hosts", "message"),
    [
        (["../etc"], [], "not usable as folder names"),
        (["a", "a"], [], "duplicate"),
        (["a"], ["not a host!"], "neither an IP address nor a DNS name"),
    ],
)
def test_bad_input_is_rejected(tmp_path: Path, sites, hosts, message) -> None:
    with pytest.raises(ValueError, match=message):
        generate_certificates(tmp_path, sites, superlink_hosts=hosts)
    assert not any(tmp_path.iterdir())  # nothing written
