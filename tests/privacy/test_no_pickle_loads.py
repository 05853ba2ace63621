"""No code from data files: a malicious pickle planted wherever EndoFed reads a file.

Every planted file carries a ``__reduce__`` that writes a marker file when unpickled.
Each place must refuse it (torch's ``weights_only`` unpickler, numpy without
``allow_pickle``, JSON) before anything runs, with an error that names the file. The
first test proves the plant is real: plain ``pickle`` / ``torch.load(weights_only=False)``
do run it.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from endofed.cli import main
from endofed.privacy.ledger import LedgerError, PrivacyLedger
from endofed.privacy.ledger_summary import read_ledger_summary
from endofed.server.run_state import RunState, load_checkpoint, load_run_state, save_run_state
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_sites
from endofed.shared.model import build_model, save_checkpoint
from endofed.shared.model.weights import UnreadableFileError
from endofed.shared.preprocessing import PreprocessConfig, SiteCache
from endofed.simulations.central import train_central


class _Payload:
    """Unpickling this calls ``exec``: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER-code-ran"


@pytest.fixture
def evil(marker):
    """``evil(path, kind)`` plants a malicious file: ``torch`` (torch.save zip, as a
    checkpoint), ``pickle`` (raw pickle bytes), ``npz`` (an npz with an object array)."""

    def plant(path: Path, kind: str = "torch") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {"state_dict": {"w": torch.zeros(1)}, "model": _Payload(marker),
               "format": "endofed-ssd", "epoch": 1, "round": 1, "arrays": {}}
        if kind == "torch":
            torch.save(obj, path)
        elif kind == "pickle":
            path.write_bytes(pickle.dumps(obj))
        elif kind == "npz":
            buf = io.BytesIO()
            payload = np.empty(1, dtype=object)
            payload[0] = _Payload(marker)
            np.savez(buf, mask=np.zeros(1, np.uint8), shape=np.array([1, 1]),
                     boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                     info=payload)
            path.write_bytes(buf.getvalue())
        else:
            raise ValueError(kind)
        return path

    return plant


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_sites(root, sites=1, images_per_site=8, seed=0, size=64)
    return root / "site_1"


def _refused(argv: list[str], named: Path, marker: Path, capsys) -> str:
    """Run the CLI; it must fail, name ``named`` in one line, and never run the payload."""
    try:
        code = main(argv)
    except SystemExit as exc:  # a command's own one-line refusal
        code, err = exc.code, f"{capsys.readouterr().err} {exc}"
    except Exception as exc:  # noqa: BLE001 - a command that lets the error through
        code, err = 1, str(exc)
    else:
        err = capsys.readouterr().err
    assert not marker.exists(), "the planted pickle ran"
    assert code not in (0, None), f"{argv[0]} accepted a malicious file"
    assert str(named) in err, err
    assert "Traceback" not in err
    return err


def test_the_planted_files_would_run_code(tmp_path, marker, evil):
    """Without the safeguards each planted file runs its payload (so the tests below
    would fail on a loader that unpickles freely)."""
    torch.load(evil(tmp_path / "a.pt"), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(evil(tmp_path / "b.json", "pickle").read_bytes())
    assert marker.exists()
    marker.unlink()
    with np.load(evil(tmp_path / "c.npz", "npz"), allow_pickle=True) as z:
        z["info"]
    assert marker.exists()


def test_train_resume_state(site, tmp_path, marker, evil, capsys):
    out = tmp_path / "run"
    last = evil(out / "checkpoints" / "last.pt")
    err = _refused(["train", str(site), "--out", str(out), "--preset", "tiny",
                    "--image-size", "64", "--epochs", "1", "--threads", "1"],
                   last, marker, capsys)
    assert "refused" in err and "--no-resume" in err


def test_train_weights_file(site, tmp_path, marker, evil, capsys):
    weights = evil(tmp_path / "backbone.pth")
    _refused(["train", str(site), "--out", str(tmp_path / "run"), "--preset", "tiny",
              "--image-size", "64", "--epochs", "1", "--threads", "1",
              "--weights", str(weights)], weights, marker, capsys)


def test_central_validation_state(site, tmp_path, marker, evil):
    """``checkpoints/best_state.npz`` of a finished run, read again on resume."""
    cfg = EndoFedConfig.from_mapping({"preset": "tiny", "image-size": 64, "batch-size": 4,
                                      "threads": 1, "local-epochs": 1})
    out = tmp_path / "run"
    train_central(cfg, [site], out, progress=False)
    best = out / "checkpoints" / "best_state.npz"
    evil(best, "npz")
    with pytest.raises(ValueError, match="best_state.npz"):
        train_central(cfg, [site], out, progress=False)
    assert not marker.exists()


def test_server_run_state(tmp_path, marker, evil):
    run_dir = tmp_path / "runs" / "study"
    save_run_state(run_dir, RunState(round=1, arrays={"w": np.zeros(2, np.float32)}))
    last = evil(run_dir / "checkpoints" / "last.pt")
    with pytest.raises(UnreadableFileError, match="refused") as info:
        load_run_state(run_dir)
    assert str(last) in str(info.value)
    round_file = evil(run_dir / "checkpoints" / "round_001.pt", "pickle")
    with pytest.raises(UnreadableFileError) as info:
        load_checkpoint(round_file)
    assert str(round_file) in str(info.value)
    assert not marker.exists()


def _model_file(tmp_path: Path) -> Path:
    model = build_model(preset="tiny", num_classes=1, image_size=64)
    return save_checkpoint(tmp_path / "good.pt", model, extra={"class_names": ["lesion"]})


def test_audit_model_and_run_state(site, tmp_path, marker, evil, capsys):
    run_dir = tmp_path / "train-out"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"preset": "tiny", "image-size": 64}))
    model = evil(run_dir / "model.pt")
    _refused(["privacy-audit", str(run_dir), "--data", str(site)], model, marker, capsys)

    fed = tmp_path / "fed-run"
    last = evil(fed / "checkpoints" / "last.pt")
    (fed / "final_model.pt").write_bytes(_model_file(tmp_path).read_bytes())
    _refused(["privacy-audit", str(fed), "--data", str(site)], last, marker, capsys)


def test_predict_model(site, tmp_path, marker, evil, capsys):
    model = evil(tmp_path / "model.pt")
    _refused(["predict", str(model), str(site / "images"), "--out", str(tmp_path / "p")],
             model, marker, capsys)


def test_evaluate_model(site, tmp_path, marker, evil, capsys):
    model = evil(tmp_path / "model.pt")
    _refused(["evaluate", str(model), str(site), "--out", str(tmp_path / "e")],
             model, marker, capsys)


def test_learned_overlay_detector_file(tmp_path, marker, evil):
    from endofed.shared.overlay_detector.detector import LearnedDetector

    path = evil(tmp_path / "overlay.pt")
    with pytest.raises(ValueError, match="overlay.pt"):
        LearnedDetector(PreprocessConfig(detector_path=path))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_privacy_ledger(site, tmp_path, marker, evil, capsys, kind):
    path = evil(tmp_path / "state" / "central" / "privacy-ledger.json", kind)
    with pytest.raises(LedgerError) as info:
        PrivacyLedger(path, site="central", epsilon_target=8.0, delta=1e-5)
    assert str(path) in str(info.value)
    with pytest.raises(LedgerError) as info:
        read_ledger_summary(path)
    assert str(path) in str(info.value)
    assert not marker.exists()

    out = tmp_path / "dp-run"  # the ledger `endofed train -c dp-epsilon=...` keeps in --out
    ledger = evil(out / "privacy-ledger.json", kind)
    _refused(["train", str(site), "--out", str(out), "--preset", "tiny", "--image-size", "64",
              "--epochs", "1", "--threads", "1", "-c", "dp-epsilon=8"], ledger, marker,
             capsys)


def test_preprocess_cache_entry(site, tmp_path, marker, evil, caplog):
    records = scan_site(site).records[:1]
    config = PreprocessConfig(wavelet_levels=1)
    SiteCache(tmp_path / "cache", config).get(records[0])
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    evil(entry, "npz")
    assert zipfile.is_zipfile(entry)
    cache = SiteCache(tmp_path / "cache", config)
    with caplog.at_level(logging.WARNING):
        cache.get(records[0])
    assert not marker.exists()
    assert cache.computed == 1 and str(entry) in caplog.text  # recomputed, file named
