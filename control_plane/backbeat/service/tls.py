"""TLS for the gRPC and admin HTTP servers (and the clients that call them).

Configured with ``--tls-cert``/``--tls-key`` (env ``BACKBEAT_TLS_CERT``/``BACKBEAT_TLS_KEY``,
PEM files); ``--tls-ca`` (``BACKBEAT_TLS_CA``) is the bundle clients trust (default: the
server's own certificate, which suits a self-signed one). Without a certificate the servers
listen in plain text (e.g. behind a mesh or load balancer that terminates TLS).
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS needs both --tls-cert and --tls-key (or neither)")
        for name in (self.cert_file, self.key_file, self.ca_file):
            if name and not Path(name).is_file():
                raise ValueError(f"TLS file {name} does not exist")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsSettings:
        return cls(
            cert_file=getattr(args, "tls_cert", "") or "",
            key_file=getattr(args, "tls_key", "") or "",
            ca_file=getattr(args, "tls_ca", "") or "",
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.enabled:
            return None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())]
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """What a client (e.g. a follower forwarding SetTempo) trusts."""
        ca = self.ca_file or self.cert_file
        return grpc.ssl_channel_credentials(Path(ca).read_bytes() if ca else None)

    def server_ssl_context(self) -> ssl.SSLContext | None:
        if not self.enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--tls-cert",
        default=env("BACKBEAT_TLS_CERT", ""),
        help="PEM certificate for gRPC and the admin API (env BACKBEAT_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", default=env("BACKBEAT_TLS_KEY", ""), help="PEM private key (BACKBEAT_TLS_KEY)"
    )
    parser.add_argument(
        "--tls-ca",
        default=env("BACKBEAT_TLS_CA", ""),
        help="CA bundle clients trust (BACKBEAT_TLS_CA; default: the certificate itself)",
    )
