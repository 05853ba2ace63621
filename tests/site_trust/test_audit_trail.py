"""The site's hash-chained audit trail: append, verify, and tampering of every kind."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endofed.privacy.audit_trail import GENESIS, AuditTrail, AuditTrailError


def _entry(i: int) -> dict:
    return {"app_hash": "ab" * 32, "run_id": 7, "study_id": "s1", "round": i,
            "message_type": "train", "node_id": 11, "received": {"w": [2, 3]},
            "sent": {"w": {"shape": [2, 3], "bytes": 24}}, "sent_bytes": 24,
            "payload_sha256": "00" * 32, "epsilon_spent": 0.5 * i, "outcome": "replied",
            "reason": ""}


def _four(tmp_path: Path) -> tuple[AuditTrail, Path]:
    path = tmp_path / "audit-trail.jsonl"
    trail = AuditTrail(path)
    for i in range(4):
        trail.append(_entry(i))
    return trail, path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_append_chains_entries_with_independently_computed_hashes(tmp_path):
    trail, path = _four(tmp_path)
    raw = [json.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in raw] == [0, 1, 2, 3]
    assert raw[0]["prev_hash"] == GENESIS == "0" * 64
    for prev, e in zip([None, *raw], raw, strict=False):
        body = {k: v for k, v in e.items() if k != "hash"}
        want = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()
        assert e["hash"] == want
        if prev is not None:
            assert e["prev_hash"] == prev["hash"]
        assert dt.datetime.fromisoformat(e["time"]).utcoffset() == dt.timedelta(0)
    v = trail.verify()
    assert (v.ok, v.entries, v.first_bad_seq) == (True, 4, None)
    assert trail.head() == raw[-1]["hash"]
    assert trail.entries() == raw


def test_edit_one_field_of_entry_2_fails_at_seq_2(tmp_path):
    trail, path = _four(tmp_path)
    lines = _lines(path)
    e = json.loads(lines[2])
    e["sent_bytes"] = 1  # a smaller payload than what really left
    lines[2] = json.dumps(e, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == 2 and v.entries == 2
    assert "entry 2" in v.message and "modified" in v.message


def test_edit_with_recomputed_hash_is_caught_by_the_next_entry(tmp_path):
    trail, path = _four(tmp_path)
    lines = _lines(path)
    e = json.loads(lines[1])
    e["outcome"] = "declined"
    e["hash"] = hashlib.sha256(json.dumps({k: v for k, v in e.items() if k != "hash"},
                                          sort_keys=True, separators=(",", ":"))
                               .encode()).hexdigest()
    lines[1] = json.dumps(e)
    path.write_text("\n".join(lines) + "\n")
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == 2 and "does not chain" in v.message


@pytest.mark.parametrize(("change", "bad_seq"), [
    (lambda ls: ls[:1] + ls[2:], 1),  # deleted entry 1
    (lambda ls: [ls[0], ls[2], ls[1], ls[3]], 1),  # reordered
    (lambda ls: ls[:2] + [ls[1]] + ls[2:], 2),  # duplicated / inserted
    (lambda ls: ls[1:], 0),  # the first entry deleted
])
def test_deleted_reordered_inserted_entries_are_detected(tmp_path, change, bad_seq):
    trail, path = _four(tmp_path)
    path.write_text("\n".join(change(_lines(path))) + "\n")
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == bad_seq, v


def test_a_forged_inserted_entry_with_a_valid_hash_is_detected(tmp_path):
    trail, path = _four(tmp_path)
    lines = _lines(path)
    prev = json.loads(lines[1])
    forged = {**_entry(99), "seq": 2, "time": prev["time"], "prev_hash": prev["hash"]}
    forged["hash"] = hashlib.sha256(json.dumps(forged, sort_keys=True,
                                               separators=(",", ":")).encode()).hexdigest()
    path.write_text("\n".join([*lines[:2], json.dumps(forged), *lines[2:]]) + "\n")
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == 3


def test_truncated_last_line_is_reported_then_recorded_by_the_next_append(tmp_path):
    trail, path = _four(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b'{"app_hash":"abab')  # the writer died mid-line
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == 4 and "cut off" in v.message
    new = trail.append(_entry(4))
    assert new["seq"] == 4 and new["recovered"]["bytes"] == len(b'{"app_hash":"abab')
    v2 = trail.verify()
    assert v2.ok and v2.entries == 5 and "cut off by a crash" in v2.message
    # the recovery is itself chained: removing the cut-off line now breaks verify
    lines = _lines(path)
    path.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
    assert not trail.verify().ok


def test_garbage_line_in_the_middle_is_detected(tmp_path):
    trail, path = _four(tmp_path)
    lines = _lines(path)
    path.write_text("\n".join([*lines[:2], "not json", *lines[2:]]) + "\n")
    v = trail.verify()
    assert not v.ok and v.first_bad_seq == 2 and "line 3" in v.message


def test_damaged_last_entry_refuses_to_append(tmp_path):
    trail, path = _four(tmp_path)
    with open(path, "a") as fh:
        fh.write("garbage\n")
    with pytest.raises(AuditTrailError, match="audit-trail.jsonl: the last entry is damaged"):
        trail.append(_entry(5))


def test_reserved_fields_and_non_json_are_refused(tmp_path):
    trail = AuditTrail(tmp_path / "a.jsonl")
    with pytest.raises(AuditTrailError, match="seq"):
        trail.append({"seq": 3})
    with pytest.raises(AuditTrailError, match="JSON"):
        trail.append({"x": object()})
    with pytest.raises(AuditTrailError, match="JSON"):
        trail.append({"x": float("nan")})
    assert not (tmp_path / "a.jsonl").exists() or (tmp_path / "a.jsonl").read_bytes() == b""


def test_entries_since(tmp_path):
    trail, path = _four(tmp_path)
    lines = [json.loads(x) for x in _lines(path)]
    cut = dt.datetime.fromisoformat(lines[2]["time"])
    assert [e["seq"] for e in trail.entries(since=cut)] == [2, 3]
    assert trail.entries(since=cut + dt.timedelta(days=1)) == []
    naive = cut.replace(tzinfo=None)  # naive means UTC
    assert [e["seq"] for e in trail.entries(since=naive)] == [2, 3]


_WRITER = """
import sys, time
from pathlib import Path
from endofed.privacy.audit_trail import AuditTrail
trail = AuditTrail(Path(sys.argv[1]))
tag = int(sys.argv[2])
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.005)
for i in range(60):
    trail.append({"writer": tag, "i": i, "pad": "x" * (tag * 500)})
"""


def test_concurrent_appends_from_two_processes_keep_one_valid_chain(tmp_path):
    path = tmp_path / "audit-trail.jsonl"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(tag), str(go)])
             for tag in (1, 2)]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(120) == 0
    trail = AuditTrail(path)
    v = trail.verify()
    assert v.ok and v.entries == 120, v
    got = trail.entries()
    assert [e["seq"] for e in got] == list(range(120))
    for tag in (1, 2):
        assert [e["i"] for e in got if e["writer"] == tag] == list(range(60))
