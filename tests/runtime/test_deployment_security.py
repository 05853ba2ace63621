"""LocalDeployment over TLS with authenticated SuperNodes (real flwr processes), and its flags."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from endofed.privacy.certs import CertBundle, generate_certificates
from endofed.simulations.deployment import LocalDeployment
from endofed.simulations.deployment_security import DeploymentSecurity
from endofed.simulations.flwr_run import FlowerRunError


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    out = tmp_path_factory.mktemp("certs")
    return generate_certificates(out, ["site-0", "site-1", "rogue"], days=2)


def _site(i: int, n: int) -> dict[str, str | int]:
    return {"partition-id": i, "num-partitions": n, "site-name": f"site-{i}"}


def _keys(bundle: CertBundle, name: str) -> tuple[Path, Path]:
    return bundle.sites[name].private_key, bundle.sites[name].public_key


def _tls(bundle: CertBundle) -> dict[str, Path]:
    return {
        "ssl_ca_certfile": bundle.ca_cert,
        "ssl_certfile": bundle.server_cert,
        "ssl_keyfile": bundle.server_key,
    }


def _wait_exit(deployment: LocalDeployment, i: int, timeout: float = 60.0) -> str:
    proc = deployment.supernode_process(i)
    assert proc is not None
    deadline = time.monotonic() + timeout
    while proc.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not proc.running(), f"supernode-{i} is still running after {timeout}s"
    return proc.log_path.read_text(errors="replace")


@pytest.mark.slow
def test_authenticated_nodes_join_and_unregistered_key_is_refused(
    smoke_app: Path, tmp_path: Path, certs: CertBundle
) -> None:
    deployment = LocalDeployment(
        smoke_app,
        sites=[_site(0, 1)],
        insecure=False,
        **_tls(certs),
        enable_supernode_auth=True,
        auth_keys=[_keys(certs, "site-0")],
        log_dir=tmp_path / "logs",
    )
    with deployment:
        online = deployment.online_nodes()
        assert [n["node-id"] for n in online] == [str(deployment.sites[0].node_id)]

        rogue = deployment.add_supernode(
            _site(1, 2), auth_key=_keys(certs, "rogue"), register=False, wait=False
        )
        log = _wait_exit(deployment, rogue)
        assert "Failed to activate SuperNode" in log
        assert len(deployment.online_nodes()) == 1
        superlink_log = deployment.superlink.log_path.read_text() if deployment.superlink else ""
        assert "No SuperNode found with the given public key" in superlink_log

        superlink_argv = deployment.superlink.argv if deployment.superlink else []
        node_argv = deployment.processes[1].argv
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in superlink_argv
    assert "--insecure" not in superlink_argv
    assert node_argv[node_argv.index("--root-certificates") + 1] == str(certs.ca_cert)
    key_arg = node_argv[node_argv.index("--auth-supernode-private-key") + 1]
    assert key_arg == str(certs.sites["site-0"].private_key)
    assert deployment.alive_processes() == {}


def test_supernode_without_ca_certificate_cannot_connect(
    smoke_app: Path, tmp_path: Path, certs: CertBundle
) -> None:
    with LocalDeployment(
        smoke_app, sites=[_site(0, 1)], insecure=False, **_tls(certs), log_dir=tmp_path / "l"
    ) as deployment:
        untrusting = deployment.add_supernode(_site(1, 2), trust_ca=False, wait=False)
        log = _wait_exit(deployment, untrusting)
        assert "CERTIFICATE_VERIFY_FAILED" in log
        assert len(deployment.online_nodes()) == 1
        node_argv = deployment.processes[-1].argv
    assert "--root-certificates" not in node_argv and "--insecure" not in node_argv


def test_misconfiguration_is_reported_before_anything_starts(
    smoke_app: Path, tmp_path: Path, certs: CertBundle
) -> None:
    with pytest.raises(ValueError, match="insecure=True conflicts"):
        LocalDeployment(smoke_app, sites=[_site(0, 1)], ssl_certfile=certs.server_cert)
    with pytest.raises(ValueError, match="needs"):
        LocalDeployment(smoke_app, sites=[_site(0, 1)], insecure=False)
    with pytest.raises(ValueError, match="one .private, public. key pair per site"):
        LocalDeployment(
            smoke_app, sites=[_site(0, 2), _site(1, 2)], insecure=False, **_tls(certs),
            enable_supernode_auth=True, auth_keys=[_keys(certs, "site-0")],
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="nope.crt"):
        LocalDeployment(
            smoke_app, sites=[_site(0, 1)], insecure=False,
            **{**_tls(certs), "ssl_certfile": tmp_path / "nope.crt"},
        )  # fmt: skip
    with pytest.raises(ValueError, match="enable_supernode_auth is False"):
        LocalDeployment(
            smoke_app, sites=[_site(0, 1)], insecure=False, **_tls(certs),
            auth_keys=[_keys(certs, "site-0")],
        )  # fmt: skip


def test_security_flags_of_each_process(certs: CertBundle) -> None:
    plain = DeploymentSecurity.from_options()
    assert plain.superlink_args() == ["--insecure"] == plain.supernode_args()
    assert plain.ssl_context() is None and plain.connection("127.0.0.1:1").insecure
    tls = DeploymentSecurity.from_options(insecure=False, **_tls(certs),
                                          enable_supernode_auth=True)  # fmt: skip
    assert tls.root_certificates == certs.ca_cert.resolve()  # defaults to the CA
    args = tls.superlink_args()
    assert args[args.index("--ssl-certfile") + 1] == str(certs.server_cert.resolve())
    assert args[-1] == "--enable-supernode-auth" and "--insecure" not in args
    assert tls.supernode_args() == ["--root-certificates", str(certs.ca_cert.resolve())]
    assert tls.supernode_args(trust_ca=False) == []
    conn = tls.connection("127.0.0.1:2")
    assert not conn.insecure and conn.root_certificates == certs.ca_cert.resolve()
    assert tls.ssl_context() is not None


@pytest.mark.slow
def test_node_without_key_is_refused(smoke_app: Path, tmp_path: Path, certs: CertBundle) -> None:
    with LocalDeployment(
        smoke_app, sites=[_site(0, 1)], insecure=False, **_tls(certs),
        enable_supernode_auth=True, auth_keys=[_keys(certs, "site-0")],
        log_dir=tmp_path / "logs",
    ) as deployment:  # fmt: skip
        anonymous = deployment.add_supernode(_site(1, 2), wait=False)
        _wait_exit(deployment, anonymous)
        assert len(deployment.online_nodes()) == 1
        with pytest.raises(FlowerRunError, match="supernode-1 exited"):
            deployment.wait_for_nodes(count=2, timeout=5)


@pytest.mark.slow
def test_run_over_tls_with_authenticated_nodes_completes(
    smoke_app: Path, tmp_path: Path, certs: CertBundle
) -> None:
    out = tmp_path / "server-out.json"
    with LocalDeployment(
        smoke_app,
        sites=[_site(0, 2), _site(1, 2)],
        insecure=False,
        **_tls(certs),
        enable_supernode_auth=True,
        auth_keys=[_keys(certs, "site-0"), _keys(certs, "site-1")],
        log_dir=tmp_path / "logs",
    ) as deployment:
        config = (tmp_path / "logs").parent / "flwr-config.toml"
        config.write_text((deployment.flwr_home / "config.toml").read_text())
        result = deployment.run(
            {"min-nodes": 2, "num-server-rounds": 1, "fraction-evaluate": 0.0,
             "out-path": str(out)},
            timeout=300,
        ).check()  # fmt: skip
    assert result.status == "finished:completed"
    summary = json.loads(out.read_text())
    assert [p["partition-id"] for p in summary["participants"]["1"]] == [0, 1]
    want = 1 * (1 + 4) / (1 + 2)  # FedAvg of (p+1) updates weighted by 10(p+1)
    assert summary["final-arrays"] == [pytest.approx([want, want])]
    flwr_config = config.read_text()
    assert f'root-certificates = "{certs.ca_cert}"' in flwr_config
    assert "insecure = false" in flwr_config
