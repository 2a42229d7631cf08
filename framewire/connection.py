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


#: Words of gRPC's message when a channel never got a working connection.
_CONNECT_FAILURES = ("failed to connect to all addresses", "Socket closed", "Ssl handshake failed",
                     "Connection reset by peer")
#: The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def transport_hint(target: str, *, tls: bool, details: str, timeout: float = 1.0) -> str:
    """When `details` (a gRPC error message) says a channel to `target`
    could not connect, look at what the server speaks; if it is TLS and this
    client speaks plaintext, or the other way round, say what to pass.
    Returns "" otherwise (including when the server cannot be reached at all)."""
    if not any(words in details for words in _CONNECT_FAILURES):
        return ""
    address = _host_port(target)
    if address is None:
        return ""
    if not tls and _speaks_tls(address, timeout):
        return ("the server speaks TLS and this client does not: pass --tls-ca with the CA that signed "
                "its certificate (tls_ca= in Python; --tls-cert/--tls-key too if it asks for a client certificate)")
    if tls and _speaks_plaintext_http2(address, timeout):
        return ("the server speaks plaintext (no TLS) and this client speaks TLS: leave out "
                "--tls-ca/--tls-cert/--tls-key (tls_ca= in Python), or serve TLS with --tls-cert/--tls-key")
    return ""


def _host_port(target: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port`, `[v6]:port`, `dns:///host:port` or `ipv4:host:port` target."""
    import re

    target = re.sub(r"^(dns:(//[^/]*)?/|ipv4:|ipv6:)", "", target).split(",")[0]
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", target)
    if match is None:
        return None
    host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return host, int(port)


def _speaks_tls(address: tuple[str, int], timeout: float) -> bool:
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS; nothing is sent
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(address, timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=address[0]):
            return True
    except (OSError, ValueError):
        return False


def _speaks_plaintext_http2(address: tuple[str, int], timeout: float) -> bool:
    import socket

    try:
        with socket.create_connection(address, timeout=timeout) as raw:
            raw.sendall(_H2_PREFACE)
            header = b""
            while len(header) < 9:
                chunk = raw.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    return header[3] == 0x04  # the server's first frame is SETTINGS
