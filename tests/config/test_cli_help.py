"""The CLI explains itself: every ``--help`` of every command and action names its values
(no ``CFG_*`` metavar), documents every flag, shows an example, and ``--version`` and the
renamed commands' old names work."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys

import pytest

from endofed.cli import DEPRECATED_COMMANDS, _subparsers, build_parser, main

PARSER = build_parser()
PARSERS = [PARSER, *_subparsers(PARSER)]


def _params(parsers: list[argparse.ArgumentParser]) -> list:
    return [pytest.param(p, id=p.prog) for p in parsers]


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS
            and not isinstance(a, argparse._SubParsersAction)]


def test_walk_finds_every_command_and_action() -> None:
    progs = {p.prog for p in PARSERS}
    for name in ("synth", "train", "simulate", "demo", "privacy-audit", "site check",
                 "site ledger", "overlay-detector train", "overlay-detector eval"):
        assert f"endofed {name}" in progs
    assert not {"endofed audit", "endofed overlay"} & progs  # aliases are not parsers


@pytest.mark.parametrize("parser", _params(PARSERS))
def test_no_cfg_metavar(parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "CFG_" not in text, text
    for action in parser._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        assert "CFG_" not in metavar


@pytest.mark.parametrize("parser", _params(PARSERS))
def test_every_flag_has_help(parser: argparse.ArgumentParser) -> None:
    undocumented = [a.option_strings or [a.dest] for a in _visible(parser)
                    if not (a.help or "").strip()]
    assert not undocumented, f"{parser.prog}: no help for {undocumented}"


@pytest.mark.parametrize("parser", _params(PARSERS))
def test_every_parser_has_an_example(parser: argparse.ArgumentParser) -> None:
    epilog = (parser.epilog or "").strip()
    assert epilog.lower().startswith("example"), f"{parser.prog}: epilog {epilog!r}"
    # the example is printed as written (its command on its own line)
    assert "\n  endofed " in parser.format_help(), parser.format_help()


@pytest.mark.parametrize("parser", _params(PARSERS))
def test_defaults_are_shown(parser: argparse.ArgumentParser) -> None:
    """A flag with a real default states it (the shared formatter or its own text)."""
    formatter = parser._get_formatter()
    for action in _visible(parser):
        default = action.default
        if (not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or default == []):
            continue
        text = formatter._expand_help(action)
        assert "default" in text.lower(), f"{parser.prog} {action.option_strings}: {text}"


def test_default_text_matches_the_value() -> None:
    """Spot checks against the values the code uses (not just the word 'default')."""
    from endofed.commands.train import TRAIN_DEFAULTS

    helps = {p.prog: p.format_help() for p in PARSERS}
    train = " ".join(helps["endofed train"].split())
    assert f"(default: {TRAIN_DEFAULTS['preset']}, for this command; the config default " \
           "is tiny)" in train
    assert "--lr LR learning rate (default: 0.001)" in train
    simulate = " ".join(helps["endofed simulate"].split())
    assert "(default: central,local,fedavg)" in simulate
    assert "--rounds N federated rounds R (default: 5)" in simulate
    demo = " ".join(helps["endofed demo"].split())
    assert "(default: 128)" in demo and "(default: runs/demo)" in demo
    assert "federated" in demo and "deleted" in demo  # says what it replaces


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"endofed {importlib.metadata.version('endofed')}"
    assert f"torch {importlib.metadata.version('torch')}" in lines[1]
    assert f"flwr {importlib.metadata.version('flwr')}" in lines[1]


def test_version_from_a_shell() -> None:
    out = subprocess.run([sys.executable, "-m", "endofed.cli", "--version"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[0] == f"endofed {importlib.metadata.version('endofed')}"


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_COMMANDS.items()))
def test_old_command_names_still_work(old: str, new: str, capsys) -> None:
    """The old name parses to the same command, and running it says it is deprecated."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices[old] is sub.choices[new]
    with pytest.raises(SystemExit):
        main([old, "--help"])
    assert f"endofed {new}" in capsys.readouterr().out


def test_old_audit_name_prints_a_deprecation_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("endofed: deprecated: 'endofed audit' is now 'endofed privacy-audit'; "
                      "the old name goes away in the next release")
    assert err[1].startswith("endofed privacy-audit: ") and "missing" in err[1]


def test_old_overlay_name_prints_a_deprecation_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["overlay", "eval", str(tmp_path / "nope.pt"), "--images", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'endofed overlay' is now 'endofed overlay-detector'" in err
    assert "endofed overlay-detector eval: " in err


def test_comma_list_and_deprecated_repeat(capsys) -> None:
    args = build_parser().parse_args(["privacy-audit", "run", "--data", "a,b"])
    assert [str(p) for p in args.data] == ["a", "b"]
    assert "deprecated" not in capsys.readouterr().err
    args = build_parser().parse_args(["privacy-audit", "run", "--data", "a", "--data", "b,c"])
    assert [str(p) for p in args.data] == ["a", "b", "c"]
    assert "repeating --data is deprecated" in capsys.readouterr().err
    args = build_parser().parse_args(["certs", "--out", "o", "--sites", "x",
                                      "--superlink-host", "h1,10.0.0.5"])
    assert args.superlink_host == ["h1", "10.0.0.5"]


def test_out_flag_and_old_positional(tmp_path) -> None:
    """synth and certs take --out like every other command; the old positional works."""
    from endofed.commands._common import out_path

    parser = build_parser()
    assert out_path(parser.parse_args(["synth", "--out", "d"])).name == "d"
    assert out_path(parser.parse_args(["synth", "d"])).name == "d"
    with pytest.raises(SystemExit, match="--out DIR is required"):
        out_path(parser.parse_args(["synth"]))
    assert main(["synth", "--out", str(tmp_path / "s"), "--sites", "1",
                 "--images-per-site", "1", "--size", "64"]) == 0
    assert (tmp_path / "s" / "site_1" / "images").is_dir()
