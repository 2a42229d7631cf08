"""Connection flags shared by every client-side CLI verb."""

from __future__ import annotations

import argparse
import os


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_server: str = "localhost:8500") -> None:
    """--server, TLS (--tls-ca, --tls-cert, --tls-key, --tls-server-name) and --token."""
    parser.add_argument("--server", default=default_server, help="HOST:PORT of the server")
    group = parser.add_argument_group("security")
    group.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate (turns TLS on)")
    group.add_argument("--tls-cert", help="PEM client certificate, for servers that require mutual TLS")
    group.add_argument("--tls-key", help="PEM private key of --tls-cert")
    group.add_argument("--tls-server-name", help="name to expect in the server's certificate (default: the host)")
    group.add_argument("--token", default=os.environ.get("FRAMEWIRE_TOKEN"),
                       help="bearer token for servers with --tokens-file [env FRAMEWIRE_TOKEN]")


def client_from_args(args: argparse.Namespace, **kwargs):
    """A Client configured from the connection flags (plus `kwargs`)."""
    from .client import Client

    return Client(args.server, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, server_name=args.tls_server_name, **kwargs)
