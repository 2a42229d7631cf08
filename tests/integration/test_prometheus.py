"""The dashboard, the HPA's metric and the alerting rules, evaluated by a real Prometheus.

One real server (a stand-in NVML, as NVML cannot run here, reporting a GPU
whose memory is 97% used) serves steady traffic: good requests, requests the
client gets wrong (INVALID_ARGUMENT), and on a second model, whose batches
wait a minute to fill, one request of 7 images held in its 8-image queue
while larger ones are refused (UNAVAILABLE). A version that cannot load
(UNAVAILABLE) sits next to the good one. Debian's `prometheus` scrapes the
server, and a second target where nothing listens, every second with the
rules of deploy/prometheus loaded. Then, through Prometheus' HTTP API: every
query of deploy/grafana/framewire.json returns a finite number, the
variables list values, the Prometheus adapter's rule for the HPA's metric
returns the queue, and each alert is pending for what was arranged and only
for that.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from framewire.client import Client, FramewireError
from support.artifacts import export_tiny
from support.dashboard import DASHBOARD, label_values_args, queries
from support.images import encode, random_image
from support.nvml import FakeGpu, FakeNvml
from support.prometheus import PrometheusServer, free_port
from support.server import RunningServer
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "framewire-rules.yaml"
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter-rules.yaml"
HPA = ROOT / "deploy" / "kubernetes" / "efficientnet-lite0" / "hpa.yaml"
#: What Grafana puts in place of `$__rate_interval` here: a few scrapes.
RATE_INTERVAL = "30s"
HELD_IMAGES = 7
QUEUE_SIZE = 8
GPU_MEMORY = 141 * 2**30

#: For each alert in the rules file, the labels of the one series it must be
#: pending (or firing) for, given what the fixture arranges.
EXPECTED_ALERTS = {
    "FramewireDown": {"pod": "framewire-1"},
    "FramewireHighErrorRate": {"model": "slowq"},
    "FramewireQueueSaturated": {"model": "slowq", "version": "1"},
    "FramewireGpuMemoryNearlyFull": {"gpu": "0", "name": "NVIDIA H200"},
    "FramewireModelUnavailable": {"model": "tiny", "version": "2"},
}


class Traffic:
    """Requests in background threads until `stop()`; see the module doc."""

    def __init__(self, address: str):
        self.address = address
        self.done = threading.Event()
        self.codes: dict[str, int] = {}
        self._lock = threading.Lock()
        images = [encode(random_image(i)) for i in range(8)]
        self.threads = [
            threading.Thread(target=self._steady, args=(images,), daemon=True),
            threading.Thread(target=self._held, args=(images,), daemon=True),
            threading.Thread(target=self._refused, args=(images,), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _count(self, code: str) -> None:
        with self._lock:
            self.codes[code] = self.codes.get(code, 0) + 1

    def _call(self, fn) -> None:
        try:
            fn()
            self._count("OK")
        except FramewireError as exc:
            self._count(exc.code.name)

    def _steady(self, images) -> None:
        with Client(self.address, timeout=60, retries=0) as client:
            sent = 0
            while not self.done.wait(0.05):
                sent += 1
                image = b"" if sent % 5 == 0 else images[sent % len(images)]
                self._call(lambda: client.predict(image, model="tiny"))

    def _held(self, images) -> None:
        # Waits in the queue for its batch to fill (a minute), or for the drain at the end.
        with Client(self.address, timeout=180, retries=0) as client:
            self._call(lambda: client.batch_predict(images[:HELD_IMAGES], model="slowq"))

    def _refused(self, images) -> None:
        with Client(self.address, timeout=60, retries=0) as client:
            while not self.done.wait(0.5):
                self._call(lambda: client.batch_predict(images + images[:1], model="slowq"))

    def stop(self) -> None:
        self.done.set()


def finite(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result if math.isfinite(float(sample["value"][1]))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, prometheus, instance) after traffic has been scraped a few times."""
    repo = tmp_path_factory.mktemp("prometheus-repo")
    export_tiny(repo, "tiny", 1)
    (repo / "tiny" / "2").mkdir()
    (repo / "tiny" / "2" / "model.fwa").write_bytes(b"not an artifact")
    export_tiny(repo, "slowq", 1, seed=1)
    nvml = FakeNvml([FakeGpu(memory_used=int(GPU_MEMORY * 0.97), memory_total=GPU_MEMORY,
                             processes=[(os.getpid(), 3 * 2**30)])])
    slow = {"max_batch_size": QUEUE_SIZE, "max_queue_size": QUEUE_SIZE, "max_queue_delay_us": 60_000_000}
    with RunningServer(repo=str(repo), nvml=nvml, version_policy="all", model_overrides={"slowq": slow}) as server:
        instance = f"127.0.0.1:{server.server.state.metrics_port}"
        # Labelled as the ServiceMonitor's scrape would be, for the adapter's rule.
        targets = [
            {"targets": [instance], "labels": {"namespace": "framewire", "pod": "framewire-0"}},
            {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"namespace": "framewire", "pod": "framewire-1"}},
        ]
        traffic = Traffic(server.address)
        try:
            with PrometheusServer([{"job_name": "framewire", "static_configs": targets}], [RULES]) as prometheus:
                wait_until(lambda: finite(prometheus.query(f'framewire_queue_depth{{model="slowq"}} == {HELD_IMAGES}')),
                           120, "the held request in the queue")
                for code in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE"):
                    wait_until(lambda: finite(prometheus.query(
                        f'count_over_time(framewire_requests_total{{code="{code}"}}[{RATE_INTERVAL}]) >= 5')),
                        120, f"five scraped samples of {code} requests")
                yield server, prometheus, instance
        finally:
            traffic.stop()
    assert traffic.codes.get("OK", 0) > 0 and traffic.codes.get("UNAVAILABLE", 0) > 0, traffic.codes


def grafana(query: str, instance: str) -> str:
    """A dashboard query as Grafana sends it: every model, this instance."""
    values = {"model": ".*", "instance": re.escape(instance).replace("\\", "\\\\"), "__rate_interval": RATE_INTERVAL}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], query)


def test_every_dashboard_query_returns_numbers(stack):
    import json

    server, prometheus, instance = stack
    dashboard = json.loads(DASHBOARD.read_text())
    panel_targets = [(where, q) for where, q in queries(dashboard) if where.startswith("panel")]
    assert len(panel_targets) > 25
    empty, results = [], {}
    for where, query in panel_targets:
        result = prometheus.query(grafana(query, instance))
        results.setdefault(where, []).extend(result)
        if not finite(result):
            empty.append(f"{where}: {query}\n    -> {result}")
    assert not empty, "queries that returned no number:\n" + "\n".join(empty)

    def by(where: str, *labels: str) -> dict:
        return {tuple(s["metric"].get(label) for label in labels): float(s["value"][1]) for s in results[where]}

    # The numbers mean what the panels say.
    fill = by("panel 'Queue fill' target A", "model", "version")
    assert set(fill) == {("tiny", "1"), ("slowq", "1")} and fill[("slowq", "1")] == HELD_IMAGES / QUEUE_SIZE
    # tiny's steady client has one image in flight at most (queue of 1024 by default).
    assert fill[("tiny", "1")] in (0.0, 1 / 1024), fill
    assert by("panel 'Model state' target A", "model", "version") == {
        ("tiny", "1"): 2.0, ("tiny", "2"): 3.0, ("slowq", "1"): 2.0}
    assert set(by("panel 'GPU utilisation' target A").values()) == {0.87}
    errors = by("panel 'Error ratio by model' target A", "model")
    assert errors[("slowq",)] == 1.0 and 0.05 < errors[("tiny",)] < 0.4, errors


def test_the_dashboard_variables_list_values(stack):
    import json

    _, prometheus, instance = stack
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for where, query in queries(dashboard):
        if where.startswith("variable"):
            selector, label = label_values_args(grafana(query, instance))
            found[where] = set(prometheus.label_values(label, selector or None))
    assert {"tiny", "slowq"} <= found["variable $model"]
    assert instance in found["variable $instance"]


def test_the_hpa_metric_comes_through_the_adapter_rule(stack):
    _, prometheus, _ = stack
    adapter = yaml.safe_load(yaml.safe_load(ADAPTER.read_text())["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    hpa = yaml.safe_load(HPA.read_text())
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
    series = prometheus.series(rule["seriesQuery"])
    assert {(s["namespace"], s["pod"]) for s in series} == {("framewire", "framewire-0")}
    query = (rule["metricsQuery"].replace("<<.Series>>", re.match(r"\w+", rule["seriesQuery"]).group(0))
             .replace("<<.LabelMatchers>>", 'namespace="framewire",pod=~"framewire-0|framewire-1"')
             .replace("<<.GroupBy>>", "pod"))
    result = prometheus.query(query)
    assert [s["metric"] for s in result] == [{"pod": "framewire-0"}]
    # The held request's images, plus at most the one image of tiny's steady
    # client when a scrape found it queued.
    assert 0 < float(result[0]["value"][1]) <= HELD_IMAGES + 1


def test_each_alert_is_pending_for_what_was_arranged_and_nothing_else(stack):
    _, prometheus, _ = stack
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == set(EXPECTED_ALERTS), "give every alert a case in EXPECTED_ALERTS"
    loaded = wait_until(lambda: [r for r in prometheus.rules() if r.get("lastEvaluation", "").startswith("2")],
                        60, "a first evaluation of the rules")
    assert {r["name"]: r["health"] for r in loaded} == dict.fromkeys(EXPECTED_ALERTS, "ok")

    def active() -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for alert in prometheus.alerts():
            if alert["state"] in ("pending", "firing"):
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    alerts = wait_until(lambda: (found := active()).keys() >= EXPECTED_ALERTS.keys() and found, 60,
                        "every alert to be pending")
    for name, labels in EXPECTED_ALERTS.items():
        matching = [a for a in alerts[name] if all(a.get(k) == v for k, v in labels.items())]
        assert len(alerts[name]) == len(matching) == 1, f"{name}: {alerts[name]}"


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: apt-get install -y prometheus (.ci/run does)"
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in done.stdout, done.stdout + done.stderr
