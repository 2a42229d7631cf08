"""A real Prometheus (Debian's `prometheus` package) on a loopback port, for tests.

`PrometheusServer(scrape_configs, rule_files)` writes a temporary
configuration, starts `prometheus` with a temporary database, waits until
it is ready and answers its HTTP API (`query`, `series`, `label_values`,
`alerts`, `rules`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml


class PrometheusError(Exception):
    """Prometheus refused a query, or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """`prometheus` in a subprocess; use as a context manager."""

    def __init__(self, scrape_configs: list[dict], rule_files: list[str] = (), *, interval: str = "1s",
                 ready_timeout: float = 60.0):
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed: apt-get install -y prometheus (.ci/run does)")
        self.folder = Path(tempfile.mkdtemp(prefix="framewire-prometheus-"))
        config = {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
                  "rule_files": [str(f) for f in rule_files], "scrape_configs": scrape_configs}
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.folder / "prometheus.log", "w+")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.folder / 'prometheus.yml'}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.close()
                raise PrometheusError(f"prometheus did not become ready:\n{output}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        return (self.folder / "prometheus.log").read_text()

    def api(self, path: str, **params) -> object:
        """The `data` of a GET on /api/v1/<path>."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's vector (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def series(self, selector: str) -> list[dict]:
        return self.api("series", **{"match[]": selector})

    def label_values(self, label: str, selector: str | None = None) -> list[str]:
        return self.api(f"label/{label}/values", **({"match[]": selector} if selector else {}))

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
