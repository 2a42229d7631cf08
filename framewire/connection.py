"""Connection flags shared by every client-side CLI verb."""

from __future__ import annotations

import argparse
import os


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_server: str = "localhost:8500",
                             server_help: str = "HOST:PORT of the server") -> None:
    """--server, plus the security flags (add_security_arguments)."""
    parser.add_argument("--server", default=default_server, help=server_help)
    add_security_arguments(parser)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS (--tls-ca, --tls-cert, --tls-key, --tls-server-name) and --token."""
    group = parser.add_argument_group("security")
    group.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate (turns TLS on)")
    group.add_argument("--tls-cert", help="PEM client certificate, for servers that require mutual TLS")
    group.add_argument("--tls-key", help="PEM private key of --tls-cert")
    group.add_argument("--tls-server-name", help="name to expect in the server's certificate (default: the host)")
    group.add_argument("--token", default=os.environ.get("FRAMEWIRE_TOKEN"),
                       help="bearer token for servers with --tokens-file [env FRAMEWIRE_TOKEN]")


def security_from_args(args: argparse.Namespace) -> dict:
    """`credentials`, `metadata` and `channel_options` for the security flags."""
    from .client import tls_credentials

    tls = args.tls_ca or args.tls_cert or args.tls_key
    return {
        "credentials": tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None,
        "metadata": (("authorization", f"Bearer {args.token}"),) if args.token else (),
        "channel_options": (("grpc.ssl_target_name_override", args.tls_server_name),) if args.tls_server_name else (),
    }


def client_from_args(args: argparse.Namespace, **kwargs):
    """A Client configured from the connection flags (plus `kwargs`)."""
    from .client import Client

    return Client(args.server, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, server_name=args.tls_server_name, **kwargs)
