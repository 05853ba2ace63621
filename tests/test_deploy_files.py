"""deploy/: the service files name programs, flags and settings that exist (issue 15).

The unit files are parsed with configparser; each ``ExecStart`` must start a console
script of this installation, every ``--flag`` it passes must be one the installed tool
accepts (its own ``--help``), and every ``${VAR}`` must be in the environment template.
The hospital unit is run for real as ``endofed site join --dry-run`` on a synthetic
site, so its node config is the one the SuperNode would get. The Dockerfile is checked
statically (CI does not build the image).
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

from endofed.shared.data.synthetic import write_sites

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = {"superlink": DEPLOY / "systemd" / "endofed-superlink.service",
         "supernode": DEPLOY / "systemd" / "endofed-supernode.service"}
ENV_TEMPLATE = DEPLOY / "endofed.env.example"
VENV_BIN = "/opt/endofed/venv/bin/"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def _exec_start(path: Path) -> list[str]:
    value = _unit(path)["Service"]["ExecStart"]
    return shlex.split(value.replace("\\\n", " "))


def _env_template() -> dict[str, str]:
    out = {}
    for line in ENV_TEMPLATE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key == key.strip() and value == value.strip(), line
            out[key] = value
    return out


def _console_scripts() -> set[str]:
    return {ep.name for ep in metadata.entry_points(group="console_scripts")}


@cache
def _help_flags(tool: str) -> frozenset[str]:
    exe = Path(sys.executable).parent / tool
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120,
                         check=True)
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.stdout))


def _flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--") and a != "--"]


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_file_parses_and_has_what_a_service_needs(role: str) -> None:
    unit = _unit(UNITS[role])
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] == "endofed" and service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == f"/etc/endofed/{role}.env"
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in service["Environment"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    argv = _exec_start(UNITS[role])
    assert argv[0].startswith(VENV_BIN)
    program = argv[0].removeprefix(VENV_BIN)
    assert program in _console_scripts(), f"{program} is no console script here"
    assert (Path(sys.executable).parent / program).exists()
    missing = set(_VAR.findall(" ".join(argv))) - set(_env_template())
    assert not missing, f"{UNITS[role].name} uses {missing}, not in {ENV_TEMPLATE.name}"


def test_superlink_unit_flags_are_flower_superlink_flags() -> None:
    argv = _exec_start(UNITS["superlink"])
    assert argv[0].endswith("/flower-superlink")
    unknown = set(_flags(argv[1:])) - _help_flags("flower-superlink")
    assert not unknown, f"flower-superlink does not accept {unknown}"
    assert "--disable-runtime-dependency-installation" in argv


def test_supernode_unit_runs_as_a_site_join_dry_run(tmp_path: Path) -> None:
    """The hospital's ExecStart, with the template's values and a synthetic site, is
    accepted by `endofed site join`, and what it would exec is a valid SuperNode call."""
    write_sites(tmp_path / "data", sites=1, images_per_site=3, seed=0, size=64)
    env = {**_env_template(), "ENDOFED_DATA_PATH": str(tmp_path / "data" / "site_1")}
    argv = [_VAR.sub(lambda m: env[m.group(1)], a) for a in _exec_start(UNITS["supernode"])]
    argv = [str(tmp_path / "state") if a == "/var/lib/endofed" else a for a in argv]
    program = Path(sys.executable).parent / Path(argv[0]).name
    res = subprocess.run([str(program), *argv[1:3], "--dry-run", *argv[3:]],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    supernode = shlex.split(res.stdout.strip().splitlines()[-1])
    assert Path(supernode[0]).name == "flower-supernode"
    unknown = set(_flags(supernode[1:])) - _help_flags("flower-supernode")
    assert not unknown, f"flower-supernode does not accept {unknown}"
    node_config = supernode[supernode.index("--node-config") + 1]
    assert 'site-name="hospital-a"' in node_config and 'dp-epsilon=8' in node_config
    assert f'state-dir="{tmp_path / "state"}"' in node_config
    assert supernode[supernode.index("--root-certificates") + 1] == env["ENDOFED_CA_CERT"]
    # exit code 2 (no usable data) is not restarted in a loop
    assert _unit(UNITS["supernode"])["Service"]["RestartPreventExitStatus"] == "2"


def test_dockerfile_is_pinned_cpu_and_installs_the_package_with_the_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    with (ROOT / "pyproject.toml").open("rb") as fh:
        package_dirs = set(tomllib.load(fh)["tool"]["setuptools"]["package-dir"].values())
    copied = {m.group(1) for m in re.finditer(r"^COPY (\w+) \./\1$", text, re.M)}
    assert copied == package_dirs  # every installed folder, nothing else
    assert "COPY requirements.lock pyproject.toml README.md ./" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "pip install -c /tmp/cpu.lock ." in text
    # the filter the image applies to the lock: CUDA and torch out, the rest kept
    pattern = re.search(r"grep -vE '([^']+)' requirements\.lock", text).group(1)
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    kept = [ln for ln in lock if not re.match(pattern, ln)]
    assert not [ln for ln in kept if re.match(r"(nvidia-|cuda-|torch==|triton==)", ln)]
    assert "torchvision==" not in " ".join(kept) and "flwr==" in " ".join(kept)
    assert len(kept) > len(lock) / 2
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and all(f"!{d}/" in ignore for d in package_dirs)


def test_deployment_doc_points_at_the_files() -> None:
    doc = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    for path in (*UNITS.values(), ENV_TEMPLATE, DEPLOY / "Dockerfile"):
        assert str(path.relative_to(ROOT)) in doc, path


# --- deploy/compose.yaml --------------------------------------------------------------

COMPOSE = DEPLOY / "compose.yaml"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")


def _compose() -> dict:
    import yaml

    with COMPOSE.open() as fh:
        return yaml.safe_load(fh)


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path or volume, mode) of a service's short-form volumes."""
    out = {}
    for spec in service["volumes"]:  # SOURCE:TARGET[:MODE]; SOURCE may be ${VAR:-default}
        m = re.fullmatch(r"(?P<src>.+?):(?P<dst>/[^:]*)(?::(?P<mode>ro|rw))?", spec)
        assert m, f"unreadable volume {spec!r}"
        out[m["dst"]] = (m["src"], m["mode"] or "rw")
    return out


def _compose_section() -> str:
    doc = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    start = re.search(r"^## (\d+\. )?Docker Compose", doc, re.M).start()
    end = doc.find("\n## ", start + 1)
    return doc[start:end if end > 0 else None]


def test_compose_parses_and_builds_every_service_from_the_dockerfile() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"superlink", *HOSPITALS}
    for name, service in services.items():
        assert service["image"] == "endofed:0.1.0", name
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() \
            == DEPLOY / "Dockerfile"
        assert service["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    declared = set(compose["volumes"])
    assert declared == {"superlink-state", *(f"{h}-state" for h in HOSPITALS)}


def test_compose_superlink_has_tls_auth_and_only_flags_flower_accepts() -> None:
    service = _compose()["services"]["superlink"]
    argv = service["command"]
    assert argv[0] == "flower-superlink"
    unknown = set(_flags(argv[1:])) - _help_flags("flower-superlink")
    assert not unknown, f"flower-superlink does not accept {unknown}"
    opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert "--disable-runtime-dependency-installation" in argv
    mounts = _mounts(service)
    for flag, name in (("--ssl-ca-certfile", "ca.crt"), ("--ssl-certfile", "superlink.crt"),
                       ("--ssl-keyfile", "superlink.key")):
        # the file the flag names is mounted read-only from the `endofed certs` folder
        assert mounts[opts[flag]] == (f"./pki/{name}", "ro"), flag
    assert mounts["/srv/endofed"] == ("superlink-state", "rw")
    assert service["ports"] == [f"{opts['--port']}:{opts['--port']}"]


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_compose_supernode_joins_with_its_data_read_only_and_its_own_key(hospital) -> None:
    services = _compose()["services"]
    service = services[hospital]
    argv = service["command"]
    assert argv[:3] == ["endofed", "site", "join"]  # the pre-flight check + site runner
    split = argv.index("--")
    join = dict(a.split("=", 1) for a in argv[3:split])
    supernode = dict(a.split("=", 1) for a in argv[split + 1:])
    unknown = set(join) - _help_flags("endofed") - _site_join_flags()
    assert not unknown, f"endofed site join does not accept {unknown}"
    unknown = set(supernode) - _help_flags("flower-supernode")
    assert not unknown, f"flower-supernode does not accept {unknown}"
    port = next(a for a in services["superlink"]["command"] if a.startswith("--port="))
    assert join["--superlink"] == f"superlink:{port.split('=')[1]}"
    assert join["--site-name"] == hospital
    mounts = _mounts(service)
    data_host, data_mode = mounts[join["--data-path"]]
    assert data_mode == "ro", "a hospital's images must be mounted read-only"
    assert hospital.split("-")[1].upper() in data_host  # ${ENDOFED_DATA_A:-...}
    assert mounts[join["--state-dir"]] == (f"{hospital}-state", "rw")
    assert mounts[supernode["--root-certificates"]] == ("./pki/ca.crt", "ro")
    key = supernode["--auth-supernode-private-key"]
    assert mounts[key] == (f"./pki/supernodes/{hospital}/auth.key", "ro")
    assert service["depends_on"] == ["superlink"]
    # nothing else is mounted writable, and no other hospital's key or data
    writable = {t for t, (_, mode) in mounts.items() if mode != "ro"}
    assert writable == {join["--state-dir"]}
    others = [h for h in HOSPITALS if h != hospital]
    assert not [s for s, _ in mounts.values() if any(o in s for o in others)]


@cache
def _site_join_flags() -> frozenset[str]:
    exe = Path(sys.executable).parent / "endofed"
    res = subprocess.run([str(exe), "site", "join", "--help"], capture_output=True,
                         text=True, timeout=120, check=True)
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.stdout))


def test_deployment_doc_describes_the_compose_services_and_mounts() -> None:
    section = _compose_section()
    assert "deploy/compose.yaml" in section
    for name in ("superlink", *HOSPITALS):
        assert f"`{name}`" in section, name
    services = _compose()["services"]
    targets = {t for s in services.values() for t in _mounts(s)}
    for target in targets:
        assert f"`{target}`" in section, f"{target} is mounted but not described"
    assert "read-only" in section and "endofed certs" in section
