"""How a client reaches a framewire server, in one place: the target, TLS
and mutual TLS, the bearer token, message limits, keepalive, and retrying
the failures that mean "try again".

    from framewire.connection import Connection

    connection = Connection("localhost:8500", token="fw_...", tls_ca="ca.pem")
    channel = connection.channel()

`Client`, `CameraStream` (and `Client.stream`), `score_images`, the
`status`, `top` and `describe` verbs and the load toolkit all build their
channels from a `Connection`, take its fields as keyword arguments, and
explain failures the same way (`Connection.error`: what to pass when one
side speaks TLS and the other does not, which limit a too-large message
broke). `RetryPolicy` is the one backoff: exponential with jitter, on the
status codes it names; unary calls retry through it and a broken stream is
reopened through it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The codes after which the same request may well succeed: the server is
#: starting, restarting or draining, or its queue is full.
TRY_AGAIN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

T = TypeVar("T")


class FramewireError(Exception):
    """A call failed; `code` is the gRPC status, `message` what the server said."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(f"{code.name}: {message}")


class LocalRpcError(grpc.RpcError):
    """A failure the client itself finds (the server ended a stream early, no
    server is ready yet), with a status code like a server's, so that
    RetryPolicy treats it like any other."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()


@dataclass(frozen=True)
class Connection:
    """Where a server is and how to talk to it.

    `token` is sent as `authorization: Bearer <token>`, after `metadata`.
    Any of `tls_ca` (the CA that signed the server's certificate), `tls_cert`
    and `tls_key` (this client's certificate, for mutual TLS) makes the
    channel TLS, as do ready-made `credentials`; `server_name` overrides the
    name the server's certificate must carry. `max_message_bytes` bounds
    what is sent and received. `keepalive_seconds` sends an HTTP/2 ping after
    that long without traffic, so a connection a middlebox dropped is found
    (servers refuse pings more often than every 300 s unless told to allow
    them). `reconnect_backoff` is the first and the longest wait between
    gRPC's own attempts to reconnect a channel. `channel_options` go to gRPC
    last, overriding the rest.
    """

    target: str
    token: str | None = None
    tls_ca: str | Path | None = None
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    server_name: str | None = None
    credentials: grpc.ChannelCredentials | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    keepalive_seconds: float | None = None
    reconnect_backoff: tuple[float, float] = (0.1, 1.0)
    channel_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "metadata", tuple(tuple(pair) for pair in self.metadata))
        object.__setattr__(self, "channel_options", tuple(tuple(pair) for pair in self.channel_options))
        if not self.target:
            raise ValueError("no server given; pass HOST:PORT (--server)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate and its key go together (--tls-cert and --tls-key)")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes={self.max_message_bytes} is too small; at least 1")
        if self.keepalive_seconds is not None and self.keepalive_seconds <= 0:
            raise ValueError(f"keepalive_seconds={self.keepalive_seconds} must be positive (None: no pings)")
        first, longest = self.reconnect_backoff
        if not 0 < first <= longest:
            raise ValueError(f"reconnect_backoff={self.reconnect_backoff} must be (first, longest) seconds, "
                             "0 < first <= longest")

    @property
    def tls(self) -> bool:
        """Whether the channel speaks TLS."""
        return self.credentials is not None or bool(self.tls_ca or self.tls_cert or self.tls_key)

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call sends: `metadata`, then the token."""
        if self.token:
            return (*self.metadata, ("authorization", f"Bearer {self.token}"))
        return self.metadata

    def with_target(self, target: str) -> "Connection":
        """The same settings for another server."""
        return dataclasses.replace(self, target=target)

    def options(self) -> list[tuple[str, Any]]:
        """The gRPC channel options these settings make."""
        first, longest = self.reconnect_backoff
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", int(first * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(first * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(longest * 1000)),
        ]
        if self.keepalive_seconds is not None:
            options += [("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
                        ("grpc.keepalive_timeout_ms", 20_000)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return [*options, *self.channel_options]

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.credentials is not None:
            return self.credentials
        if self.tls:
            return tls_credentials(self.tls_ca, self.tls_cert, self.tls_key)
        return None

    def channel(self) -> grpc.Channel:
        """A new blocking channel to the server."""
        credentials = self._channel_credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, options=self.options())
        return grpc.secure_channel(self.target, credentials, options=self.options())

    def aio_channel(self) -> "grpc.aio.Channel":
        """A new asyncio channel to the server (create it inside the event loop)."""
        credentials = self._channel_credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options())
        return grpc.aio.secure_channel(self.target, credentials, options=self.options())

    def check_size(self, request) -> None:
        """Raise FramewireError (RESOURCE_EXHAUSTED) when `request` is over
        `max_message_bytes`, before it is sent, naming the limits that matter."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise FramewireError(grpc.StatusCode.RESOURCE_EXHAUSTED, oversize_message(size, self.max_message_bytes))

    def error(self, exc: grpc.RpcError, *, probe: bool = True) -> FramewireError:
        """`exc` as a FramewireError that says what to do where gRPC's own
        words do not. With `probe`, a connection that failed is looked at to
        tell a TLS mismatch (a second or two at most)."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and probe:
            hint = transport_hint(self.target, tls=self.tls, details=details)
            details = f"{details}; {hint}" if hint else details
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            details = refused_size_message(details) or details
        trailing = dict(exc.trailing_metadata() or ())
        return FramewireError(code, details, trailing.get("x-request-id", ""))


def as_connection(target: str | Connection, **options) -> Connection:
    """A Connection to `target` (a HOST:PORT, or a Connection that
    `options`, the other fields of Connection, then change)."""
    if isinstance(target, Connection):
        return dataclasses.replace(target, **options) if options else target
    return Connection(target, **options)


def tls_credentials(ca=None, cert=None, key=None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (`ca` None: the system's roots)."""
    if bool(cert) != bool(key):
        raise ValueError("a client certificate and its key go together (--tls-cert and --tls-key)")
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))


# --- retrying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are tried again, how often, and how long to wait first.

    A failure whose code is in `codes` is tried again, one in `once_codes`
    once per operation, up to `attempts` attempts in a row without progress
    (see Retrying.reset; None: until the caller stops). The n-th failure in
    a row waits `backoff` * 2**(n-1)
    seconds, at most `max_backoff`, times a random factor between 0.5 and
    1.5 so that many clients of one restarted server do not come back in
    step.
    """

    attempts: int | None = 4
    backoff: float = 0.1
    max_backoff: float = 5.0
    codes: frozenset = TRY_AGAIN_CODES
    once_codes: frozenset = frozenset()

    def __post_init__(self):
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts={self.attempts} is too small; at least 1 (1: never retry)")
        if self.backoff < 0:
            raise ValueError(f"backoff={self.backoff} must not be negative (seconds)")
        if self.max_backoff < self.backoff:
            raise ValueError(f"max_backoff={self.max_backoff} is below backoff={self.backoff}")

    def retryable(self, code: grpc.StatusCode) -> bool:
        """Whether a failure with `code` may be tried again at all."""
        return code in self.codes or code in self.once_codes

    def delay(self, failures: int, draw: float) -> float:
        """Seconds to wait after the `failures`-th failure in a row; `draw`
        (0 to 1) picks the jitter."""
        return min(self.max_backoff, self.backoff * 2 ** (failures - 1)) * (0.5 + draw)

    def run(self, attempt: Callable[[], T], *, on_retry: Callable[[grpc.RpcError, float], bool | None] | None = None,
            sleep: Callable[[float], None] = time.sleep, draw: Callable[[], float] = random.random) -> T:
        """`attempt()` under this policy (see Retrying.run)."""
        return Retrying(self, sleep=sleep, draw=draw).run(attempt, on_retry=on_retry)


class Retrying:
    """The attempts of one operation under a RetryPolicy. `sleep` and `draw`
    (the jitter's random number) are injectable so tests need no clock."""

    def __init__(self, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
                 draw: Callable[[], float] = random.random):
        self.policy = policy
        self.failures = 0
        self._sleep = sleep
        self._draw = draw
        self._once_used: set[grpc.StatusCode] = set()

    def reset(self) -> None:
        """The operation made progress (a stream got an answer): the next
        failure waits the shortest time again."""
        self.failures = 0

    def run(self, attempt: Callable[[], T], *,
            on_retry: Callable[[grpc.RpcError, float], bool | None] | None = None) -> T:
        """Call `attempt()` until it returns, and return what it returned.
        When it raises grpc.RpcError that the policy retries, call
        `on_retry(error, delay)` (returning False gives up), wait `delay`
        seconds and try again; otherwise re-raise the error."""
        while True:
            try:
                return attempt()
            except grpc.RpcError as exc:
                delay = self._next_delay(exc.code())
                if delay is None or (on_retry is not None and on_retry(exc, delay) is False):
                    raise
            self._sleep(delay)

    def _next_delay(self, code: grpc.StatusCode) -> float | None:
        policy = self.policy
        if not policy.retryable(code):
            return None
        if policy.attempts is not None and self.failures + 1 >= policy.attempts:
            return None
        if code not in policy.codes:  # a once-code
            if code in self._once_used:
                return None
            self._once_used.add(code)
        self.failures += 1
        return policy.delay(self.failures, self._draw())


# --- the CLI's connection flags ------------------------------------------------------------


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_server: str = "localhost:8500",
                             server_help: str = "HOST:PORT of the server") -> None:
    """--server, plus the security and keepalive flags (add_security_arguments)."""
    parser.add_argument("--server", default=default_server, help=server_help)
    add_security_arguments(parser)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS (--tls-ca, --tls-cert, --tls-key, --tls-server-name), --token, --keepalive-seconds and
    --max-message-bytes: every verb that connects takes the same flags."""
    group = parser.add_argument_group("connection")
    group.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate (turns TLS on)")
    group.add_argument("--tls-cert", help="PEM client certificate, for servers that require mutual TLS")
    group.add_argument("--tls-key", help="PEM private key of --tls-cert")
    group.add_argument("--tls-server-name", help="name to expect in the server's certificate (default: the host)")
    group.add_argument("--token", default=os.environ.get("FRAMEWIRE_TOKEN"),
                       help="bearer token for servers with --tokens-file [env FRAMEWIRE_TOKEN]")
    group.add_argument("--keepalive-seconds", type=float,
                       help="ping the server after this long without traffic, to notice a dropped connection "
                            "(default: no pings; servers refuse pings more often than every 300 s)")
    group.add_argument("--max-message-bytes", type=positive_message_bytes,
                       help="largest message this client sends or receives (default 64 MiB; the server has its "
                            "own --max-message-bytes)")


def positive_message_bytes(text: str) -> int:
    """argparse type for --max-message-bytes: a positive number of bytes."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def connection_options(args: argparse.Namespace) -> dict:
    """The Connection fields the CLI flags set (all but the target)."""
    options = {"token": args.token, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
               "server_name": args.tls_server_name, "keepalive_seconds": args.keepalive_seconds}
    if getattr(args, "max_message_bytes", None):
        options["max_message_bytes"] = args.max_message_bytes
    return options


def connection_from_args(args: argparse.Namespace) -> Connection:
    """The Connection to --server that the CLI flags describe."""
    return Connection(args.server, **connection_options(args))


# --- explaining failures -------------------------------------------------------------------


def oversize_message(size: int, limit: int) -> str:
    """Why a request of `size` bytes is not sent, and the settings that matter."""
    return (f"the request is {size:,} bytes, over this client's message limit of {limit:,} "
            f"(Client(max_message_bytes=...), --max-message-bytes of framewire predict, score and stream); the server has its own "
            f"(framewire serve --max-message-bytes, default 64 MiB) and refuses encoded images over its "
            f"--max-image-bytes (default 32 MiB): resize or re-encode the image, or raise the limits on both sides")


def refused_size_message(details: str) -> str | None:
    """gRPC's `Received message larger than max (N vs. M)` from the server,
    said with the setting that raises the limit; None for other messages."""
    match = re.search(r"Received message larger than max \((\d+) vs\. (\d+)\)", details)
    if match is None or "CLIENT" in details:
        return None
    size, limit = int(match.group(1)), int(match.group(2))
    return (f"the request is {size:,} bytes, over the server's message limit of {limit:,} (its "
            f"--max-message-bytes): resize or re-encode the image, or raise the limit on the server")


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
