"""The operator's pages on the metrics listener, next to /metrics.

| path | what |
| --- | --- |
| `/` | the live page: models, GPUs, processes, 15 minutes of charts |
| `/static/<file>` | its script and style sheet (shipped in the package) |
| `/api/status` | the status document (see status_document), refreshed every second |
| `/api/history` | the last 15 minutes of samples, oldest first |
| anything else | Prometheus' exposition (`/metrics`) |

The page loads nothing from the network: its assets come from this package
and a Content-Security-Policy of 'self' keeps it that way. Same listener,
same exposure as /metrics: `--metrics-host` / `--metrics-port`.
"""

from __future__ import annotations

import re
import socket
import threading
from importlib import resources
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

#: The page's files, served from the package (never from the network).
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
]


def static_files() -> dict[str, bytes]:
    """Every file of the page, by name, read from the installed package."""
    folder = resources.files(__package__).joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir()
            if entry.is_file() and any(entry.name.endswith(suffix) for suffix in STATIC_TYPES)}


class OperatorPages:
    """A WSGI app: the page, its assets and its JSON, then `fallback` (/metrics)."""

    def __init__(self, document: Callable[[], bytes], history: Callable[[], bytes]):
        self.document = document
        self.history = history
        self.files = static_files()

    def app(self, fallback: Callable) -> Callable:
        """The WSGI app answering our paths and handing the rest to `fallback`."""

        def operator_app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            routed = self._route(path)
            if routed is None:
                return fallback(environ, start_response)
            if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
                return [b""]
            status, content_type, body = routed()
            start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                    ("Cache-Control", "no-store"), *_SECURITY_HEADERS])
            return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

        return operator_app

    def _route(self, path: str):
        if path in ("/", "/index.html"):
            return lambda: self._file("index.html")
        if path == "/api/status":
            return lambda: ("200 OK", "application/json", self.document())
        if path == "/api/history":
            return lambda: ("200 OK", "application/json", self.history())
        if path.startswith("/static/"):
            return lambda: self._file(path[len("/static/"):])
        return None

    def _file(self, name: str):
        body = self.files.get(name) if _STATIC_NAME.match(name) else None
        if body is None:
            return "404 Not Found", "text/plain; charset=utf-8", f"no such file: {name}\n".encode()
        suffix = name[name.rindex("."):]
        return "200 OK", STATIC_TYPES[suffix], body

    def serve(self, host: str, port: int, fallback: Callable) -> WSGIServer:
        """Listen on host:port in a daemon thread; returns the server (`.server_port`)."""
        return start_wsgi(host, port, self.app(fallback))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a scraper every few seconds is not news
        pass


def start_wsgi(host: str, port: int, app: Callable) -> WSGIServer:
    """A threading WSGI server for `app` on host:port (IPv6 hosts too)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(_ThreadingServer):
        address_family = family

    server = make_server(address[0], port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
