"""`framewire status` (one report) and `framewire top` (a live terminal view).

Both print the server's status document: the JSON its live page draws and
`/api/status` serves, also carried by GetServerStatus (`status_json`). They
ask the gRPC port (`--server`, with the usual TLS and token flags) or, with
`--metrics HOST:PORT`, the metrics listener; either way the figures are the
same. See framewire/status_view.py for what is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from .connection import add_connection_arguments, connection_from_args
from .status_view import render


class StatusUnavailable(Exception):
    """The status document could not be read; the message says why and what to do."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="print a server's devices and models once",
                       description="Print a server's devices, processes (CPU, memory) and models (state and reason, "
                                   "throughput, latency, batch sizes, queue, errors) once.")
    _add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.set_defaults(handler=_status)

    p = sub.add_parser("top", help="a live view of a server (q or Ctrl-C quits)",
                       description="A live terminal view of a server, refreshed every --interval seconds; "
                                   "q or Ctrl-C quits.")
    _add_source_arguments(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(handler=_top)


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="read /api/status from the server's metrics listener (--metrics-port) instead of "
                        "asking the gRPC port")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")


def fetch_document(args: argparse.Namespace) -> dict:
    """The server's status document, from --metrics or the gRPC port."""
    if args.metrics:
        return _from_metrics(args.metrics, args.timeout)
    from .client import Client, FramewireError

    try:
        with Client(connection_from_args(args), timeout=args.timeout, retries=0) as client:
            status = client.server_status()
    except FramewireError as exc:
        raise StatusUnavailable(str(exc)) from None
    if not status.status_json:
        raise StatusUnavailable("the server sends no status document (a framewire older than this client); "
                                "upgrade it, or read its metrics with --metrics HOST:PORT")
    return json.loads(status.status_json)


def _from_metrics(address: str, timeout: float) -> dict:
    import urllib.error
    import urllib.request

    base = address if "://" in address else f"http://{address}"
    url = base.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"{url} answered HTTP {exc.code}: is that a framewire metrics port?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(f"cannot read {url}: {reason}") from None
    except ValueError:
        raise StatusUnavailable(f"{url} did not answer JSON: is that a framewire metrics port?") from None


def _source(args: argparse.Namespace) -> str:
    return args.metrics or args.server


def _status(args: argparse.Namespace) -> int:
    try:
        document = fetch_document(args)
    except StatusUnavailable as exc:
        print(f"framewire status: {_source(args)}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render(document, server=_source(args), width=terminal_width(sys.stdout)))
    return 0


def terminal_width(stream) -> int | None:
    """The terminal's columns, or None when `stream` is not a terminal (print full rows)."""
    if not stream.isatty():
        return None
    return shutil.get_terminal_size((80, 24)).columns


def _top(args: argparse.Namespace) -> int:
    if args.once:
        try:
            print(render(fetch_document(args), server=_source(args), width=terminal_width(sys.stdout)))
        except StatusUnavailable as exc:
            print(f"framewire top: {_source(args)}: {exc}", file=sys.stderr)
            return 1
        return 0
    with _Keys() as keys:
        try:
            while True:
                try:
                    frame = render(fetch_document(args), server=_source(args), width=terminal_width(sys.stdout))
                except StatusUnavailable as exc:
                    frame = f"framewire top: {_source(args)}: {exc}"
                sys.stdout.write("\x1b[H\x1b[2J" + frame.replace("\n", "\r\n") + "\r\n\r\n(q quits)")
                sys.stdout.flush()
                if keys.wait_for("q", args.interval):
                    break
        except KeyboardInterrupt:
            pass
    sys.stdout.write("\r\n")
    return 0


class _Keys:
    """Reads single key presses from a terminal (nothing when stdin is not one)."""

    def __enter__(self):
        self._saved = None
        if sys.stdin.isatty():
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved)

    def wait_for(self, key: str, seconds: float) -> bool:
        """Wait up to `seconds`; True when `key` was pressed."""
        if self._saved is None:
            time.sleep(seconds)
            return False
        import select

        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sys.stdin], [], [], remaining)
            if ready and sys.stdin.read(1).lower() == key:
                return True
        return False
