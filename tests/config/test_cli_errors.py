"""CLI errors for users (issue 14 item 7): one line on stderr, exit code 2, traceback
only with ``--debug``; strict ``-c`` keys per command (item 1)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from endofed.cli import (
    EXIT_FAILURE,
    EXIT_USER_ERROR,
    USER_ERRORS,
    build_parser,
    describe_error,
    main,
)
from endofed.commands._common import config_from_args
from endofed.shared.config import ConfigError
from endofed.shared.model.presets import get_preset


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_a_typo_in_a_key_exits_2_and_writes_nothing(tmp_path, kvasir_site, capsys):
    # Old code: exit 0, trained without DP, wrote "dp-epislon" nowhere and DP nowhere.
    site = kvasir_site({"a": [(10, 10, 40, 40)], "b": None})
    out = tmp_path / "run"
    code, err = _run(["train", str(site), "--out", str(out), "--preset", "tiny",
                      "-c", "dp-epislon=1"], capsys)
    assert code == EXIT_USER_ERROR
    assert err == "endofed train: unknown key 'dp-epislon' (did you mean 'dp-epsilon'?)\n"
    assert not out.exists()


@pytest.mark.parametrize(("key", "value"), [("strategy", "fedadam"), ("num-server-rounds", "5"),
                                            ("secagg", "true"), ("central-dp", "server-fixed"),
                                            ("run-name", "..")])
def test_train_refuses_a_key_it_cannot_honour(tmp_path, key, value, capsys):
    out = tmp_path / "run"
    code, err = _run(["train", str(tmp_path), "--out", str(out), "-c", f"{key}={value}"], capsys)
    assert code == EXIT_USER_ERROR
    assert err.startswith(f"endofed train: config key '{key}': train does not use it")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_train_accepts_the_dp_keys(tmp_path):
    # train runs DP-SGD through endofed.privacy, so its DP keys are honoured, not refused.
    args = build_parser().parse_args(["train", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--preset", "tiny", "-c", "dp-epsilon=8",
                                      "-c", "dp-delta=1e-6"])
    cfg = config_from_args(args)
    assert cfg.privacy.epsilon == 8.0 and cfg.privacy.delta == 1e-6
    assert cfg.model.preset == "tiny"
    assert cfg.data.image_size == get_preset("tiny").image_size


def test_simulate_refuses_keys_its_flags_set(tmp_path, capsys):
    out = tmp_path / "grid"
    code, err = _run(["simulate", "--out", str(out), "-c", "strategy=fedadam"], capsys)
    assert code == EXIT_USER_ERROR and "use --arms" in err and not out.exists()
    code, err = _run(["simulate", "--out", str(out), "-c", "proximal-mu=-1"], capsys)
    assert code == EXIT_USER_ERROR and "'proximal-mu': must be >= 0" in err


@pytest.mark.parametrize("argv", [["--preset", "nope"], ["-c", "batch-size=many"],
                                  ["-c", "dp-epsilon=nan"], ["-c", "novalue"]])
def test_bad_values_are_one_line(tmp_path, argv, capsys):
    code, err = _run(["train", str(tmp_path), "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_data_folder_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["train", str(missing), "--out", str(tmp_path / "o"), "--preset", "tiny"]
    code, err = _run(argv, capsys)
    assert code == EXIT_USER_ERROR
    assert err.startswith("endofed train: ") and str(missing) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    for debug in (["--debug", *argv], [*argv, "--debug"]):  # before or after the command
        code, err = _run(debug, capsys)
        assert code == EXIT_USER_ERROR and "Traceback (most recent call last)" in err


def test_a_commands_own_refusal_exits_2(tmp_path, capsys):
    assert main(["certs", str(tmp_path), "--sites", "a"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # keys exist: refused without --force
        main(["certs", str(tmp_path), "--sites", "a"])
    assert info.value.code == EXIT_USER_ERROR  # old code: 1
    assert "--force" in str(info.value)
    assert capsys.readouterr().err.count("\n") == 1


def test_verbose_and_debug_parse_on_nested_commands(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["site", "check", str(tmp_path), "--debug", "-v"])
    assert args.debug and args.verbose
    args = parser.parse_args(["-v", "site", "check", str(tmp_path)])
    assert args.verbose and not args.debug


def test_error_classification():
    assert describe_error(KeyboardInterrupt()) == (EXIT_USER_ERROR, "interrupted")
    assert describe_error(ConfigError("config key 'x': bad")) == (EXIT_USER_ERROR,
                                                                   "config key 'x': bad")
    assert describe_error(FileNotFoundError(2, "No such file or directory", "m.pt")) == (
        EXIT_USER_ERROR, "m.pt: No such file or directory")
    code, line = describe_error(RuntimeError("boom\n  detail"))
    assert code == EXIT_FAILURE and line.startswith("RuntimeError: boom (") and "\n" not in line


def test_user_error_names_resolve():
    import importlib

    for name in USER_ERRORS:
        module, _, cls = name.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), cls), Exception), name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_is_one_line_and_exit_2(tmp_path, sig):
    """Ctrl-C, and SIGTERM (which before killed the process without cleanup, leaving a
    simulation's SuperLink orphaned), unwind into one line and exit 2."""
    out = tmp_path / "synth"
    proc = subprocess.Popen(
        [sys.executable, "-m", "endofed.cli", "synth", str(out), "--sites", "50",
         "--images-per-site", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a background job (CI under `cmd &`) inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler: give the child the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(out.glob("site_1/images/*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_USER_ERROR
    assert err.strip().splitlines()[-1] == "endofed synth: interrupted"
    assert "Traceback" not in err


def test_a_damaged_model_file_is_a_user_error_for_predict(tmp_path, capsys):
    """A truncated / foreign model file is the user's input: one line naming it, exit 2."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"PK\x03\x04 not really a torch zip")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    code, err = _run(["predict", str(model), str(image), "--out", str(tmp_path / "o")], capsys)
    assert code == EXIT_USER_ERROR  # before: 1, as for a bug
    assert str(model) in err and err.count("\n") == 1
