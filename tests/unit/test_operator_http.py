"""Routing on the metrics listener: the page, its files, its JSON, then /metrics."""

from __future__ import annotations

import fnmatch
import io
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from framewire.service.operator_http import OperatorPages, static_files

ROOT = Path(__file__).resolve().parents[2]


def call(app, path: str, method: str = "GET"):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def metrics_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"# metrics for " + environ["PATH_INFO"].encode()]


def app():
    return OperatorPages(lambda: b'{"schema":1}', lambda: b'{"samples":[]}').app(metrics_app)


def test_the_page_its_files_and_its_json():
    status, headers, body = call(app(), "/")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/html") and b"<html" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    assert call(app(), "/api/status")[2] == b'{"schema":1}'
    assert call(app(), "/api/history")[2] == b'{"samples":[]}'
    assert call(app(), "/static/app.js")[1]["Content-Type"].startswith("text/javascript")
    assert call(app(), "/static/style.css")[1]["Content-Type"].startswith("text/css")


def test_everything_else_is_prometheus():
    assert call(app(), "/metrics")[2] == b"# metrics for /metrics"
    assert call(app(), "/favicon.ico")[2] == b"# metrics for /favicon.ico"


def test_missing_files_and_other_methods_are_refused():
    for path in ("/static/nope.js", "/static/../metrics.py", "/static/.hidden.js", "/static/"):
        assert call(app(), path)[0] == "404 Not Found", path
    status, headers, _ = call(app(), "/api/status", method="POST")
    assert status == "405 Method Not Allowed" and headers["Allow"] == "GET, HEAD"
    status, headers, body = call(app(), "/api/status", method="HEAD")
    assert status == "200 OK" and body == b"" and headers["Content-Length"] == str(len(b'{"schema":1}'))


def test_every_file_of_the_page_ships_in_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["framewire.service"]
    files = sorted(p.relative_to(ROOT / "service").as_posix() for p in (ROOT / "service" / "static").iterdir())
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), files
    assert set(static_files()) == {Path(f).name for f in files} >= {"index.html", "app.js", "style.css"}


def test_the_page_loads_only_its_own_files():
    page = static_files()["index.html"].decode()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert "http" not in static_files()["app.js"].decode().replace("http://www.w3.org/2000/svg", "")
