"""``endofed site check``: JSON and table output, exit codes."""

from __future__ import annotations

import argparse
import json

from endofed.commands import site as site_command


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="endofed")
    site_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_check_json(kvasir_site, capsys):
    root = kvasir_site({"a": [(10, 10, 40, 40), (60, 50, 90, 80)], "b": [], "c": None})
    (root / "images" / "broken.jpg").write_bytes(b"")
    assert _run(["site", "check", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 4 and out["usable"] == 3
    assert out["boxes"] == 2 and out["classes"] == {"lesion": 2}
    assert out["images_without_lesions"] == 2
    assert out["sizes"]["height"] == {"min": 96, "median": 96.0, "max": 96}
    assert out["sizes"]["width"]["max"] == 128
    assert len(out["problems"]) == 1 and out["problems"][0]["path"].endswith("broken.jpg")
    assert out["problems"][0]["reason"] == "empty file"


def test_check_table(kvasir_site, capsys):
    root = kvasir_site({"a": [(10, 10, 40, 40)]})
    (root / "images" / "broken.jpg").write_bytes(b"junk")
    assert _run(["site", "check", str(root), "--layout", "kvasir"]) == 0
    text = capsys.readouterr().out
    assert "usable" in text and "lesion" in text and "broken.jpg" in text


def test_nothing_usable_exits_non_zero(tmp_path, capsys):
    assert _run(["site", "check", str(tmp_path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["usable"] == 0 and "expected" in out["error"]
    assert _run(["site", "check", str(tmp_path)]) == 1
    assert "manifest" in capsys.readouterr().err


def test_registered_in_cli():
    from endofed.cli import COMMANDS

    assert COMMANDS["site"] == "endofed.commands.site"
