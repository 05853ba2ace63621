"""TLS and SuperNode authentication of a loopback deployment, checked before any start.

One :class:`DeploymentSecurity` says how the SuperLink listens (plain HTTP, or TLS
with ``--ssl-*`` files and optionally ``--enable-supernode-auth``), what the
SuperNodes, the ``flwr`` CLI and the readiness check trust (``root_certificates``,
default: the CA certificate), and which flags each process gets.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from endofed.simulations.flwr_home import CONNECTION_NAME, SuperLinkConnection


def existing_file(path: Path | str, what: str) -> Path:
    """``path`` resolved; FileNotFoundError naming ``what`` if it is not a file."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"{what} {resolved}: no such file")
    return resolved


@dataclass(frozen=True)
class DeploymentSecurity:
    """Validated security settings; build it with :meth:`from_options`."""

    insecure: bool = True
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certfile: Path | None = None
    root_certificates: Path | None = None
    enable_supernode_auth: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        insecure: bool = True,
        root_certificates: Path | None = None,
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        ssl_ca_certfile: Path | None = None,
        enable_supernode_auth: bool = False,
    ) -> DeploymentSecurity:
        """Check the combination and the files (ValueError / FileNotFoundError).

        ``insecure=True`` takes no TLS file and no SuperNode authentication; TLS needs
        the SuperLink's certificate, key and CA certificate.
        """
        tls = {"root_certificates": root_certificates, "ssl_certfile": ssl_certfile,
               "ssl_keyfile": ssl_keyfile, "ssl_ca_certfile": ssl_ca_certfile}  # fmt: skip
        if insecure:
            conflicting = [k for k, v in tls.items() if v is not None]
            if enable_supernode_auth:
                conflicting.append("enable_supernode_auth")
            if conflicting:
                raise ValueError(
                    f"insecure=True conflicts with {conflicting}; pass insecure=False for TLS"
                )
            return cls()
        files = {k: v for k, v in tls.items() if v is not None}
        missing = [k for k in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certfile")
                   if k not in files]  # fmt: skip
        if missing:
            raise ValueError(f"TLS (insecure=False) needs {missing}")
        files.setdefault("root_certificates", files["ssl_ca_certfile"])
        checked = {k: existing_file(v, k) for k, v in files.items()}
        return cls(insecure=False, enable_supernode_auth=enable_supernode_auth, **checked)

    def superlink_args(self) -> list[str]:
        """``flower-superlink`` flags: ``--insecure``, or the TLS files (+ node auth)."""
        if self.insecure:
            return ["--insecure"]
        args = [
            "--ssl-ca-certfile", str(self.ssl_ca_certfile),
            "--ssl-certfile", str(self.ssl_certfile),
            "--ssl-keyfile", str(self.ssl_keyfile),
        ]  # fmt: skip
        if self.enable_supernode_auth:
            args.append("--enable-supernode-auth")
        return args

    def supernode_args(self, *, trust_ca: bool = True) -> list[str]:
        """``flower-supernode`` flags; ``trust_ca=False`` relies on the system CAs only."""
        if self.insecure:
            return ["--insecure"]
        return ["--root-certificates", str(self.root_certificates)] if trust_ca else []

    def connection(self, address: str) -> SuperLinkConnection:
        """The ``flwr`` CLI's connection to the SuperLink at ``address``."""
        if self.insecure:
            return SuperLinkConnection(CONNECTION_NAME, address, insecure=True)
        return SuperLinkConnection(
            CONNECTION_NAME, address, insecure=False, root_certificates=self.root_certificates
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """Client TLS context trusting ``root_certificates`` (``None``: plain HTTP)."""
        if self.insecure:
            return None
        return ssl.create_default_context(cafile=str(self.root_certificates))
