"""A loopback Flower deployment: a SuperLink plus one ``flower-supernode`` per site.

Unlike the simulation runtime, every site is a real SuperNode process with its own
``--node-config`` (its data folder, its name), as ``endofed site join`` starts it at
a hospital; TLS and SuperNode authentication are optional
(:mod:`endofed.simulations.deployment_security`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endofed.shared.util.processes import ManagedProcess, spawn
from endofed.simulations.deployment_security import DeploymentSecurity, existing_file
from endofed.simulations.flwr_cli import flwr_executable, parse_json_output, strip_ansi
from endofed.simulations.flwr_home import CONNECTION_NAME, SuperLinkConnection
from endofed.simulations.flwr_run import FlowerRunError
from endofed.simulations.loopback import LOOPBACK, find_free_port
from endofed.simulations.run_config import ConfigValue, format_run_config
from endofed.simulations.superlink import PrivateSuperLink

logger = logging.getLogger(__name__)


@dataclass
class SuperNodeSite:
    """One site of a :class:`LocalDeployment`: its node config and its SuperNode."""

    node_config: dict[str, ConfigValue]
    port: int = 0
    proc: ManagedProcess | None = None
    restarts: int = 0
    # SuperNode authentication: (private key, public key); the public key is
    # registered with the SuperLink unless ``register`` is False.
    auth_key: tuple[Path, Path] | None = None
    register: bool = True
    trust_ca: bool = True  # False: start without --root-certificates (system CAs)
    node_id: int | None = None
    runner: ManagedProcess | None = None  # the EndoFed site runner (site_runner=True)
    state_dir: Path | None = None  # the site's approvals and audit trail (site_runner=True)


def _key_pair(pair: tuple[Path, Path], owner: str = "") -> tuple[Path, Path]:
    """(private, public) key files, checked; ``owner`` prefixes the error message."""
    private, public = pair
    return (existing_file(private, f"{owner}private key"),
            existing_file(public, f"{owner}public key"))  # fmt: skip


class LocalDeployment(PrivateSuperLink):
    """A SuperLink plus one ``flower-supernode`` per site, all on loopback.

    Each site's dict becomes that SuperNode's ``--node-config`` (e.g.
    ``{"data-path": "/data/a", "site-name": "a", "partition-id": 0}``).

    TLS (``insecure=False``): the SuperLink gets ``--ssl-ca-certfile``,
    ``--ssl-certfile`` and ``--ssl-keyfile``; SuperNodes, the ``flwr`` CLI connection
    in the private ``FLWR_HOME`` and the readiness check trust ``root_certificates``
    (default: ``ssl_ca_certfile``). The certificate must name ``127.0.0.1`` (see
    :func:`endofed.privacy.certs.generate_certificates`).

    SuperNode authentication (``enable_supernode_auth=True``, needs TLS): the
    SuperLink runs with ``--enable-supernode-auth``; ``auth_keys[i]`` = (private key,
    public key) of site ``i`` in OpenSSH format; each public key is registered with
    ``flwr supernode register`` before the SuperNodes start, and SuperNode ``i`` gets
    ``--auth-supernode-private-key``. A SuperNode whose key is not registered is
    refused by the SuperLink (and exits).

    Site runner (``site_runner=True``): every SuperNode runs with ``--isolation
    process`` and an EndoFed site runner (``python -m endofed.client.runner``) beside it,
    as ``endofed site join`` starts them; the runner claims the SuperNode's tasks with a
    per-site secret (``--superexec-auth-secret-file``), runs only apps approved in the
    site's state dir (:meth:`site_state_dir`; node config ``state-dir`` if given) and
    writes its audit trail there. Without it each message runs in a fresh
    ``flwr-clientapp`` (Flower's default isolation).
    """

    def __init__(
        self,
        app_dir: Path,
        *,
        sites: Sequence[Mapping[str, ConfigValue]],
        insecure: bool = True,
        root_certificates: Path | None = None,
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        ssl_ca_certfile: Path | None = None,
        enable_supernode_auth: bool = False,
        auth_keys: Sequence[tuple[Path, Path]] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        startup_timeout: float = 60.0,
        keep_temp: bool = False,
        site_runner: bool = False,
    ) -> None:
        if not sites:
            raise ValueError("LocalDeployment needs at least one site")
        self.security = DeploymentSecurity.from_options(
            insecure=insecure, root_certificates=root_certificates, ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile, ssl_ca_certfile=ssl_ca_certfile,
            enable_supernode_auth=enable_supernode_auth,
        )  # fmt: skip
        if enable_supernode_auth:
            if auth_keys is None or len(auth_keys) != len(sites):
                raise ValueError(
                    f"enable_supernode_auth needs one (private, public) key pair per site: "
                    f"{len(sites)} site(s), {0 if auth_keys is None else len(auth_keys)} pair(s)"
                )
        elif auth_keys is not None:
            raise ValueError("auth_keys given but enable_supernode_auth is False")
        self.site_runner = site_runner
        self.sites = [SuperNodeSite(dict(s)) for s in sites]
        for i, site in enumerate(self.sites):
            format_run_config(site.node_config)  # validate early
            if auth_keys is not None:
                site.auth_key = _key_pair(auth_keys[i], f"site {i} ")
        super().__init__(
            app_dir, env=env, log_dir=log_dir, cwd=cwd, startup_timeout=startup_timeout,
            keep_temp=keep_temp,
        )  # fmt: skip

    # -- SuperLink ---------------------------------------------------------------------
    def _connection(self) -> SuperLinkConnection:
        return self.security.connection(self.address)

    def _ssl_context(self) -> ssl.SSLContext | None:
        return self.security.ssl_context()

    def _superlink_args(self, port: int) -> list[str]:
        return [
            *self.security.superlink_args(), "--disable-runtime-dependency-installation",
            "--host", LOOPBACK, "--port", str(port),
        ]  # fmt: skip

    def _start(self) -> None:
        self._start_superlink()
        for site in self.sites:
            self._register_site(site)
        for i in range(len(self.sites)):
            self._start_supernode(i)
        self.wait_for_nodes()

    # -- SuperNodes ------------------------------------------------------------------
    def register_supernode(self, public_key: Path, name: str | None = None) -> int:
        """``flwr supernode register PUBLIC_KEY``: allow a key; returns the node id."""
        args = ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
        if name:
            args[4:4] = ["--name", name]
        res = self.flwr(*args)
        try:
            node_id = parse_json_output(res.stdout).get("node-id")
        except ValueError:
            node_id = None
        if res.returncode != 0 or node_id is None:
            raise FlowerRunError(
                f"could not register SuperNode key {public_key} (exit {res.returncode}): "
                f"{strip_ansi(res.stdout + res.stderr).strip()[-500:]}"
            )
        logger.info("registered SuperNode key %s as node %s", public_key, node_id)
        return int(node_id)

    def _register_site(self, site: SuperNodeSite) -> None:
        if site.auth_key is None or not site.register or site.node_id is not None:
            return
        name = site.node_config.get("site-name")
        site.node_id = self.register_supernode(
            site.auth_key[1], name=str(name) if isinstance(name, str) and name else None
        )

    def site_state_dir(self, i: int) -> Path:
        """Site ``i``'s state dir: node config ``state-dir``, else one in the log dir."""
        site = self.sites[i]
        if site.state_dir is None:
            given = site.node_config.get("state-dir")
            site.state_dir = (Path(str(given)) if given
                              else self.log_dir / f"site-{i}-state").resolve()
            site.state_dir.mkdir(parents=True, exist_ok=True)
        return site.state_dir

    def approve_app(self, sites: Sequence[int] | None = None, *,
                    app_dir: Path | None = None) -> str:
        """Approve the bundle ``flwr run`` builds from ``app_dir`` (default: this
        deployment's app) at ``sites`` (default: all), as ``endofed site approve``
        does; returns its hash."""
        from flwr.cli.build import build_fab_from_disk

        from endofed.privacy.approvals import ApprovalStore

        digest = hashlib.sha256(build_fab_from_disk(Path(app_dir or self.app_dir))).hexdigest()
        for i in range(len(self.sites)) if sites is None else sites:
            ApprovalStore(self.site_state_dir(i)).approve_hash(digest, note="test deployment")
        return digest

    def _runner_secret(self, i: int) -> Path:
        path = self.log_dir / f"site-{i}-runner.secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(secrets.token_bytes(32))
        return path

    def _start_runner(self, i: int, suffix: str) -> None:
        site = self.sites[i]
        argv = [sys.executable, "-m", "endofed.client.runner",
                "--runtime-api", f"{LOOPBACK}:{site.port}", "--insecure",
                "--state-dir", str(self.site_state_dir(i)),
                "--auth-secret-file", str(self._runner_secret(i)), "--poll", "0.1"]
        site.runner = spawn(f"site-runner-{i}", argv, env=self.env, token=self.token,
                            log_path=self.log_dir / f"site-runner-{i}{suffix}.log",
                            cwd=self.cwd)
        self.processes.append(site.runner)

    def _start_supernode(self, i: int) -> None:
        site = self.sites[i]
        site.port = find_free_port()
        security = self.security.supernode_args(trust_ca=site.trust_ca)
        if site.auth_key is not None:
            security += ["--auth-supernode-private-key", str(site.auth_key[0])]
        if self.site_runner:
            security += ["--isolation", "process",
                         "--superexec-auth-secret-file", str(self._runner_secret(i))]
        argv = [
            str(flwr_executable("flower-supernode")),
            *security,
            "--superlink", self.address,
            "--host", LOOPBACK,
            "--port", str(site.port),
            "--node-config", format_run_config(site.node_config),
        ]  # fmt: skip
        suffix = f".{site.restarts}" if site.restarts else ""
        site.proc = spawn(
            f"supernode-{i}",
            argv,
            env=self.env,
            token=self.token,
            log_path=self.log_dir / f"supernode-{i}{suffix}.log",
            cwd=self.cwd,
        )
        self.processes.append(site.proc)
        if self.site_runner:
            self._start_runner(i, suffix)

    def add_supernode(
        self,
        node_config: Mapping[str, ConfigValue],
        *,
        auth_key: tuple[Path, Path] | None = None,
        register: bool = True,
        trust_ca: bool = True,
        wait: bool = True,
    ) -> int:
        """Start one more SuperNode (e.g. a site joining late); returns its index.

        ``register=False`` starts it with ``auth_key`` but without registering the
        public key; ``trust_ca=False`` starts it without ``--root-certificates``.
        Both exist to check that the SuperLink refuses such nodes: with ``wait=False``
        nothing waits for the node to come online.
        """
        if self.superlink is None or self._stopped:
            raise RuntimeError("deployment not started (use it as a context manager)")
        format_run_config(node_config)
        site = SuperNodeSite(dict(node_config), register=register, trust_ca=trust_ca)
        if auth_key is not None:
            site.auth_key = _key_pair(auth_key)
        self.sites.append(site)
        i = len(self.sites) - 1
        self._register_site(site)
        before = len(self.online_nodes()) if wait else 0
        self._start_supernode(i)
        if wait:
            self.wait_for_nodes(count=before + 1)
        return i

    def supernode_process(self, i: int) -> ManagedProcess | None:
        """The running process of SuperNode ``i`` (``None`` if stopped)."""
        return self.sites[i].proc

    def runner_process(self, i: int) -> ManagedProcess | None:
        """The site runner of SuperNode ``i`` (``None`` without ``site_runner``)."""
        return self.sites[i].runner

    def online_nodes(self) -> list[dict[str, Any]]:
        """SuperNodes the SuperLink reports as ``online`` (``flwr supernode list``)."""
        res = self.flwr("supernode", "list", CONNECTION_NAME, "--format", "json")
        try:
            nodes = parse_json_output(res.stdout).get("nodes", [])
        except ValueError:
            logger.debug("unparsable `flwr supernode list` output: %s", res.stdout + res.stderr)
            return []
        return [n for n in nodes if n.get("status") == "online"]

    def wait_for_nodes(self, count: int | None = None, timeout: float | None = None) -> None:
        """Block until ``count`` (default: all running) SuperNodes are online."""
        count = count if count is not None else sum(s.proc is not None for s in self.sites)
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for site in self.sites:
                for proc in (site.proc, site.runner):
                    if proc is not None and not proc.running():
                        raise FlowerRunError(
                            f"{proc.name} exited with code {proc.popen.returncode}; "
                            f"see {proc.log_path}:\n{proc.log_tail()}"
                        )
            online = self.online_nodes()
            if len(online) >= count:
                return
            time.sleep(0.5)
        raise FlowerRunError(
            f"only {len(online)} of {count} SuperNodes came online within "
            f"{timeout or self.startup_timeout:.0f}s; logs in {self.log_dir}"
        )

    def kill_supernode(self, i: int) -> None:
        """Stop SuperNode ``i`` (its whole process tree)."""
        site = self.sites[i]
        if site.runner is not None:
            site.runner.stop(grace=5.0)
            site.runner = None
        if site.proc is None:
            return
        site.proc.stop(grace=5.0)
        site.proc = None

    def restart_supernode(self, i: int, *, wait: bool = True) -> None:
        """(Re)start SuperNode ``i`` with its node config; wait until it is online."""
        self.kill_supernode(i)
        self.sites[i].restarts += 1
        before = len(self.online_nodes()) if wait else 0
        self._start_supernode(i)
        if wait:
            self.wait_for_nodes(count=before + 1)
