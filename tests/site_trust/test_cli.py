"""``endofed site approve|approvals|log`` and ``endofed app keygen|sign|hash`` end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from endofed.cli import main
from endofed.privacy.approvals import ApprovalStore
from endofed.privacy.audit_trail import AuditTrail

from .conftest import build_fab

ENDOFED = Path(sys.executable).with_name("endofed")


def endofed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENDOFED), *args], capture_output=True, text=True, timeout=300)


def test_site_approve_list_revoke_via_the_command_line(app_dir, tmp_path):
    fab_hash, content = build_fab(app_dir)
    fab = tmp_path / "app.fab"
    fab.write_bytes(content)
    state = tmp_path / "state"
    r = endofed("site", "approve", str(fab), "--note", "ticket 4711", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert f"approved app {fab_hash}" in r.stdout
    assert "flower_smoke/client_app.py" in r.stdout  # what was approved is shown
    assert ApprovalStore(state).check(fab_hash, content).approved

    r = endofed("site", "approvals", "list", "--json", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["approvals"]
    assert [(x["kind"], x["ident"], x["note"]) for x in rows] == [
        ("hash", fab_hash, "ticket 4711")]

    r = endofed("site", "approvals", "--state-dir", str(state), "revoke", fab_hash[:12])
    assert r.returncode == 0, r.stderr
    assert not ApprovalStore(state).check(fab_hash, content).approved

    # errors: one line, exit 2
    r = endofed("site", "approve", "deadbeef", "--state-dir", str(state))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "endofed site: deadbeef: neither a FAB file nor a 64-digit sha256 hash")
    (state / "approvals.json").write_text("{not json")
    r = endofed("site", "approvals", "--state-dir", str(state))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state / "approvals.json") in lines[0], r.stderr
    assert "damaged approvals file" in lines[0]


def test_site_log_verify_exit_codes(tmp_path):
    state = tmp_path / "state"
    trail = AuditTrail(state / "audit-trail.jsonl")
    for i in range(4):
        trail.append({"round": i, "outcome": "replied", "sent_bytes": 10 * i,
                      "message_type": "train", "app_hash": "cd" * 32})
    r = endofed("site", "log", "--verify", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "4 entries, chain intact" in r.stdout and trail.head() in r.stdout

    r = endofed("site", "log", "--json", "--since", "2000-01-01", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert [e["round"] for e in json.loads(r.stdout)] == [0, 1, 2, 3]

    path = state / "audit-trail.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"sent_bytes":20', '"sent_bytes":2')
    path.write_text("\n".join(lines) + "\n")
    r = endofed("site", "log", "--verify", "--json", "--state-dir", str(state))
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert (out["ok"], out["first_bad_seq"]) == (False, 2)

    r = endofed("site", "log", "--verify", "--state-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no audit trail at" in r.stderr
    r = endofed("site", "log", "--since", "yesterday", "--state-dir", str(state))
    assert r.returncode == 2 and "'yesterday' is not an ISO date" in r.stderr


def test_app_keygen_sign_hash_and_trust_key(app_dir, tmp_path, capsys):
    key = tmp_path / "keys" / "publisher"
    assert main(["app", "keygen", str(key)]) == 0
    fp = capsys.readouterr().out.split("fingerprint: ")[1].strip()
    assert main(["app", "keygen", str(key)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    assert main(["app", "sign", str(app_dir), "--key", str(key)]) == 0
    out = capsys.readouterr().out
    fab_hash, content = build_fab(app_dir)
    assert f"FAB hash (what sites see): {fab_hash}" in out and fp in out
    assert main(["app", "hash", str(app_dir)]) == 0
    assert capsys.readouterr().out.strip() == fab_hash
    fab = tmp_path / "x.fab"
    fab.write_bytes(content)
    assert main(["app", "hash", str(fab)]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(content).hexdigest()

    state = tmp_path / "state"
    r = endofed("site", "approvals", "trust-key", str(key) + ".pub", "--name", "endofed-team",
                "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert fp in r.stdout
    d = ApprovalStore(state).check(fab_hash, content)
    assert d.approved and d.matched == "endofed-team"
    r = endofed("site", "approvals", "trust-key", str(key), "--name", "x",
                "--state-dir", str(state))
    assert r.returncode == 2 and "private key" in r.stderr
