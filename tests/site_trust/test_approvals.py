"""App approval at the site: by FAB hash, or by a trusted publisher's ed25519 signature.

FABs are built by Flower's own build (``flwr build`` and ``build_fab_from_disk``, which
``flwr run`` uses), never by hand, so the signature file really travels in the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from endofed.privacy.approvals import (
    SIGNATURE_FILE,
    ApprovalError,
    ApprovalStore,
    fab_manifest,
    generate_keypair,
    key_fingerprint,
    load_public_key,
    sign_app_dir,
    verify_fab_signature,
)

from .conftest import SMOKE_APP, build_fab

FLWR = Path(sys.executable).with_name("flwr")


def flwr_build(app: Path, out_dir: Path) -> Path:
    """Run the real ``flwr build --app APP`` in ``out_dir``; the .fab it writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(FLWR), "build", "--app", str(app)], cwd=out_dir, check=True,
                   capture_output=True, timeout=120)
    (fab,) = out_dir.glob("*.fab")
    return fab


def change_one_file(app: Path) -> None:
    p = app / "flower_smoke" / "client_app.py"
    p.write_text(p.read_text() + "\nopen('/tmp/pwned', 'w')\n")


def test_hash_approval_accepts_exactly_that_fab_and_revoke_refuses(app_dir, tmp_path):
    store = ApprovalStore(tmp_path / "state")
    fab_hash, content = build_fab(app_dir)
    assert not store.check(fab_hash, content).approved  # nothing approved yet
    a = store.approve_hash(fab_hash, note="reviewed")
    assert (a.kind, a.ident, a.note) == ("hash", fab_hash, "reviewed")
    d = store.check(fab_hash, content)
    assert d.approved and d.matched == fab_hash

    change_one_file(app_dir)
    h2, c2 = build_fab(app_dir)
    assert h2 != fab_hash
    d2 = store.check(h2, c2)
    assert not d2.approved and "not approved by hash" in d2.reason
    # a FAB whose bytes do not match the hash it is announced with
    assert not store.check(fab_hash, c2).approved

    store.revoke(fab_hash[:12])
    d3 = store.check(fab_hash, content)
    assert not d3.approved and "revoked" in d3.reason
    assert store.list() == [] and len(store.list(include_revoked=True)) == 1
    # the file on disk is plain JSON naming the approval
    doc = json.loads((tmp_path / "state" / "approvals.json").read_text())
    assert doc["approvals"][0]["ident"] == fab_hash and doc["approvals"][0]["revoked_at"]


def test_approve_fab_file_records_the_hash_flower_computes(app_dir, tmp_path):
    fab = flwr_build(app_dir, tmp_path / "out")
    fab_hash, content = build_fab(app_dir)  # what flwr run sends = Fab.hash_str
    assert hashlib.sha256(fab.read_bytes()).hexdigest() == fab_hash
    assert fab.name.split(".")[-2] == fab_hash[:8]  # flwr's own file name
    store = ApprovalStore(tmp_path / "state")
    assert store.approve_fab_file(fab).ident == fab_hash
    assert store.check(fab_hash, content).approved
    assert store.approve_fab_file(fab) == store.list()[0]  # idempotent
    assert len(store.list()) == 1


def test_signed_app_from_real_flwr_build_verifies_and_one_changed_file_is_refused(
        app_dir, tmp_path):
    priv, pub, fp = generate_keypair(tmp_path / "keys" / "publisher")
    assert priv.stat().st_mode & 0o777 == 0o600
    sig = sign_app_dir(app_dir, priv)
    assert sig == app_dir / SIGNATURE_FILE

    fab = flwr_build(app_dir, tmp_path / "out1")
    content = fab.read_bytes()
    names = zipfile.ZipFile(io.BytesIO(content)).namelist()
    assert SIGNATURE_FILE in names  # really inside the FAB flwr builds
    # the manifest covers every other entry except Flower's .info/CONTENT
    covered = {line.split("\t")[0] for line in fab_manifest(content)}
    assert covered == set(names) - {SIGNATURE_FILE, ".info/CONTENT"}
    assert covered >= {"pyproject.toml", "flower_smoke/client_app.py"}

    key = load_public_key(pub)
    assert verify_fab_signature(content, {"acme": key}) == "acme"
    store = ApprovalStore(tmp_path / "state")
    store.trust_publisher(pub, name="acme")
    d = store.check(hashlib.sha256(content).hexdigest(), content)
    assert d.approved and d.matched == "acme", d

    # one changed file, signature file left as it was: refused, and the reason names it
    change_one_file(app_dir)
    bad = flwr_build(app_dir, tmp_path / "out2").read_bytes()
    assert SIGNATURE_FILE in zipfile.ZipFile(io.BytesIO(bad)).namelist()
    assert verify_fab_signature(bad, {"acme": key}) is None
    d2 = store.check(hashlib.sha256(bad).hexdigest(), bad)
    assert not d2.approved and "flower_smoke/client_app.py" in d2.reason, d2.reason
    # nor does its hash approval carry over
    store.approve_hash(hashlib.sha256(content).hexdigest())
    assert not store.check(hashlib.sha256(bad).hexdigest(), bad).approved

    # the original file back: accepted again; plus an added file: refused
    shutil.copy(SMOKE_APP / "flower_smoke" / "client_app.py",
                app_dir / "flower_smoke" / "client_app.py")
    assert verify_fab_signature(build_fab(app_dir)[1], {"acme": key}) == "acme"
    (app_dir / "flower_smoke" / "extra.py").write_text("import os\n")
    h_added, added = build_fab(app_dir)
    assert verify_fab_signature(added, {"acme": key}) is None
    assert "added since signing: flower_smoke/extra.py" in store.check(h_added, added).reason

    # re-signing the changed app is accepted again
    sign_app_dir(app_dir, priv)
    h3, c3 = build_fab(app_dir)
    assert store.check(h3, c3).approved


def test_wrong_key_and_revoked_publisher_are_refused(app_dir, tmp_path):
    priv, pub, _ = generate_keypair(tmp_path / "k" / "real")
    _, other_pub, _ = generate_keypair(tmp_path / "k" / "other")
    sign_app_dir(app_dir, priv)
    fab_hash, content = build_fab(app_dir)
    assert verify_fab_signature(content, {"other": load_public_key(other_pub)}) is None
    store = ApprovalStore(tmp_path / "state")
    store.trust_publisher(other_pub, name="other")
    d = store.check(fab_hash, content)
    assert not d.approved and "not a trusted publisher key" in d.reason

    store.trust_publisher(pub, name="real")
    assert store.check(fab_hash, content).approved
    store.revoke("real")
    d2 = store.check(fab_hash, content)
    assert not d2.approved and "revoked" in d2.reason
    # a revoked hash stays refused even with a valid trusted signature
    store.trust_publisher(pub, name="real2")
    store.approve_hash(fab_hash)
    store.revoke(fab_hash[:16])
    d3 = store.check(fab_hash, content)
    assert not d3.approved and "revoked" in d3.reason


def test_forged_signature_file_is_refused(app_dir, tmp_path):
    """Editing the manifest inside the signature file to match changed code breaks the
    ed25519 signature."""
    priv, pub, _ = generate_keypair(tmp_path / "k")
    sign_app_dir(app_dir, priv)
    change_one_file(app_dir)
    _, changed = build_fab(app_dir)
    actual = fab_manifest(changed)
    sig = app_dir / SIGNATURE_FILE
    text = sig.read_text()
    start, end = text.index("manifest = ["), text.index("]", text.index("manifest = ["))
    sig.write_text(text[:start] + "manifest = [\n" + "".join(
        f"    {json.dumps(x)},\n" for x in actual) + text[end:])
    fab_hash, forged = build_fab(app_dir)
    store = ApprovalStore(tmp_path / "state")
    store.trust_publisher(pub, name="acme")
    d = store.check(fab_hash, forged)
    assert not d.approved and "does not verify" in d.reason


def test_signature_fingerprint_matches_ssh_keygen_and_openssh_keys_work(tmp_path):
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen not installed")
    key = tmp_path / "id_ed25519"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    out = subprocess.run([ssh_keygen, "-lf", str(key) + ".pub"], check=True,
                         capture_output=True, text=True).stdout.split()[1]
    assert key_fingerprint(load_public_key(Path(str(key) + ".pub"))) == out
    # our own keygen's .pub also agrees with ssh-keygen
    _, pub, fp = generate_keypair(tmp_path / "mine")
    assert subprocess.run([ssh_keygen, "-lf", str(pub)], check=True, capture_output=True,
                          text=True).stdout.split()[1] == fp


def test_openssh_private_key_signs(app_dir, tmp_path):
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen not installed")
    key = tmp_path / "id_ed25519"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sign_app_dir(app_dir, key)
    _, content = build_fab(app_dir)
    assert verify_fab_signature(content, {"ops": load_public_key(Path(str(key) + ".pub"))}) \
        == "ops"


def test_bad_keys_and_names_are_one_clear_error(tmp_path):
    priv, pub, _ = generate_keypair(tmp_path / "k")
    store = ApprovalStore(tmp_path / "state")
    with pytest.raises(ApprovalError, match="private key"):
        store.trust_publisher(priv, name="acme")
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    with pytest.raises(ApprovalError, match="junk.pub: not a PEM or OpenSSH public key"):
        store.trust_publisher(junk, name="acme")
    with pytest.raises(ApprovalError, match="publisher name"):
        store.trust_publisher(pub, name="a b")
    store.trust_publisher(pub, name="acme")
    with pytest.raises(ApprovalError, match="already trusted"):
        store.trust_publisher(pub, name="acme2")
    with pytest.raises(ApprovalError, match="already exists"):
        generate_keypair(tmp_path / "k")
    with pytest.raises(ApprovalError, match="at least 12"):
        store.revoke("abc123")
    with pytest.raises(ApprovalError, match="no active approval"):
        store.revoke("nobody")
    with pytest.raises(ApprovalError, match="64 hex"):
        store.approve_hash("xyz")


def test_ambiguous_prefix_is_refused(tmp_path):
    store = ApprovalStore(tmp_path / "state")
    store.approve_hash("ab" * 6 + "0" * 52)
    store.approve_hash("ab" * 6 + "1" * 52)
    with pytest.raises(ApprovalError, match="matches 2"):
        store.revoke("ab" * 6)
    assert store.revoke("ab" * 6 + "1").ident.endswith("1" * 52)


@pytest.mark.parametrize("text", ["{bad", '{"format": "endofed-approvals", "version": 1, '
                                  '"approvals": [], "extra": 1}',
                                  '{"format": "endofed-approvals", "version": 1, '
                                  '"approvals": [{"kind": "hash", "ident": "x", '
                                  '"approved_at": "t"}]}', "[]"])
def test_damaged_approvals_file_is_one_error_naming_it(tmp_path, text):
    state = tmp_path / "state"
    state.mkdir()
    (state / "approvals.json").write_text(text)
    store = ApprovalStore(state)
    with pytest.raises(ApprovalError, match=r"approvals\.json"):
        store.list()
    d = store.check("0" * 64, b"")
    assert not d.approved
    with pytest.raises(ApprovalError, match=r"approvals\.json"):
        store.approve_hash("a" * 64)
    assert (state / "approvals.json").read_text() == text  # never overwritten


def test_malicious_zips_are_refused_without_extracting(tmp_path):
    store = ApprovalStore(tmp_path / "state")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pyproject.toml", "x")
        zf.writestr("../evil.py", "x")
    content = buf.getvalue()
    d = store.check(hashlib.sha256(content).hexdigest(), content)
    assert not d.approved and "unsafe entry" in d.reason
    d2 = store.check(hashlib.sha256(b"not a zip").hexdigest(), b"not a zip")
    assert not d2.approved and "zip" in d2.reason


def test_verify_accepts_only_ed25519_public_keys_by_name(app_dir, tmp_path):
    priv, _, _ = generate_keypair(tmp_path / "k")
    sign_app_dir(app_dir, priv)
    _, content = build_fab(app_dir)
    assert verify_fab_signature(content, {}) is None
    random_key = ed25519.Ed25519PrivateKey.generate().public_key()
    assert verify_fab_signature(content, {"r": random_key}) is None
