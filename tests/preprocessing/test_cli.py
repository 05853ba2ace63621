import json

from endofed.cli import main
from endofed.shared.data.synthetic import write_site


def test_endofed_preprocess_command(tmp_path, capsys):
    site = tmp_path / "site"
    write_site(site, n_images=3, seed=2, size=(80, 96))
    out = tmp_path / "out"
    rc = main(["preprocess", str(site), "--out", str(out), "--no-wavelet", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["failed"] == 0
    assert (out / "images").is_dir() and (out / "bboxes.json").is_file()
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["config"]["wavelet"] is False and report["config"]["median"] is True


def test_endofed_preprocess_rejects_unknown_detector(tmp_path, caplog):
    site = tmp_path / "site"
    write_site(site, n_images=1, seed=2, size=(80, 96))
    rc = main(["preprocess", str(site), "--out", str(tmp_path / "o"), "--detector", "nope",
               "--no-progress"])
    assert rc == 2
    assert "unknown overlay detector" in caplog.text


def test_endofed_preprocess_learned_detector_needs_its_checkpoint(tmp_path, caplog):
    site = tmp_path / "site"
    write_site(site, n_images=1, seed=2, size=(80, 96))
    rc = main(["preprocess", str(site), "--out", str(tmp_path / "o"), "--detector", "learned",
               "--detector-path", str(tmp_path / "missing.pt"), "--no-progress"])
    assert rc == 2
    assert "missing.pt does not exist" in caplog.text
    rc = main(["preprocess", str(site), "--out", str(tmp_path / "o"), "--detector", "learned",
               "--no-progress"])
    assert rc == 2
    assert "detector_path" in caplog.text
