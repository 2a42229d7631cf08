"""Merging front ends' expositions into one /metrics (service/metrics_merge.py).

Two real ServerMetrics stand for two front ends: each records its own
requests and batches through its recording methods, samples a GPU through the
stand-in NVML (NVML cannot run here), and reports the model versions a
repository snapshot gives it (`models()`: real VersionSlots carrying the
figures a loaded version reports, since loading real models needs worker
processes that unit tests do not start). Each front end's text comes from
prometheus_client's generate_latest or its real HTTP endpoint, and the merge
is read back with prometheus_client's parser.
"""

from __future__ import annotations

import http.server
import math
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from framewire.service.domain import ModelState
from framewire.service.gpu import GpuSampler
from framewire.service.compute_curve import CurvePoint
from framewire.service.latency_budget import BudgetStatus
from framewire.service.metrics import ServerMetrics
from framewire.service.metrics_merge import (
    CONTENT_TYPE,
    DEFAULT_GAUGE_RULE,
    GAUGE_RULE_NAMES,
    GAUGE_RULES,
    MAX,
    SUM,
    cumulative_only,
    fetch_and_merge,
    gauge_rule,
    merge_and_report,
    merge_expositions,
)
from framewire.service.repository import VersionSlot
from support.nvml import FakeGpu, FakeNvml

GPU_UUID = "GPU-00000000-1111-2222-3333-444444444444"
ODD_MODEL = 'we"ird\\name\nx'


@dataclass
class LoadedFigures:
    """What a loaded version (ServedModel) shows the metrics collector."""

    queue_depth: int
    queue_capacity: int
    payload_bytes: int
    budget_status: BudgetStatus | None = None
    device_forwards: float = 0.0


def budget(arrival_rate: float, curve_seconds: float, target: int, refused: int) -> BudgetStatus:
    return BudgetStatus(
        budget_seconds=0.1, curve=(CurvePoint(1, curve_seconds / 2, 5, 5), CurvePoint(8, curve_seconds, 5, 5)),
        arrival_rate=arrival_rate, target_batch_size=target, batch_size_limit=16, last_batch_size=target,
        refused=refused, probes=1, superseded=2, dropped_over_budget=3, batches=10, predicted_seconds_sum=0.5,
        actual_seconds_sum=0.6, missed=1, last_predicted_seconds=0.05, last_actual_seconds=0.06)


def front_end(*, utilization: int, depth: int, payload: int, status: BudgetStatus | None,
              unavailable_version: bool = False, gpu: bool = True) -> ServerMetrics:
    """A ServerMetrics as one front end has it: the repository snapshot, the sampled GPU."""
    sampler = GpuSampler(FakeNvml([FakeGpu(uuid=GPU_UUID, utilization=utilization,
                                           processes=[(1, 3 * 2**30), (2, 2**30)])]), pids=lambda: {1, 2})
    sampler.sample()
    slots = [VersionSlot("tiny", 1, Path("models/tiny/1"), (0, 0, 0), state=ModelState.READY,
                         served=LoadedFigures(depth, 64, payload, status))]
    if unavailable_version:
        slots.append(VersionSlot("tiny", 2, Path("models/tiny/2"), (0, 0, 0), state=ModelState.UNAVAILABLE))
    return ServerMetrics(sampler if gpu else None, models=lambda: {"tiny": slots})


@pytest.fixture
def pair():
    """Two front ends, driven differently."""
    a = front_end(utilization=80, depth=5, payload=1000, status=budget(30.0, 0.02, 4, refused=2),
                  unavailable_version=True)
    b = front_end(utilization=90, depth=7, payload=500, status=budget(50.0, 0.03, 8, refused=5))
    for _ in range(3):
        a.request("native", "tiny", 1, "OK", 0.004)
    a.request("native", "tiny", 1, "INVALID_ARGUMENT", 0.001)
    a.request("native", ODD_MODEL, "", "NOT_FOUND", 0.001)
    a.served("tiny", 1, preprocess=0.003, queue=0.002)
    a.batch("tiny", 1, 4, 0.02)
    a.batch("tiny", 1, 8, 0.03)
    for _ in range(2):
        b.request("oip", "tiny", 1, "OK", 0.2)
    b.request("native", "tiny", 1, "OK", 0.04)
    b.request("native", ODD_MODEL, "", "NOT_FOUND", 0.001)
    b.served("tiny", 1, preprocess=0.3, queue=0.02)
    b.batch("tiny", 1, 16, 0.4)
    return a, b


def text_of(metrics: ServerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def families(text: str) -> dict:
    """name -> (type, help, {(sample name, labels): value}), for a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} appears twice"
        out[family.name] = (family.type, family.documentation,
                            {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples})
    return out


def value(parsed: dict, family: str, sample: str | None = None, **labels) -> float:
    samples = parsed[family][2]
    matches = [v for (name, sl), v in samples.items()
               if name == (sample or family) and all(dict(sl).get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, f"{sample or family}{labels}: {len(matches)} samples"
    return matches[0]


def merged_of(*texts: str) -> tuple[dict, str]:
    text, problems = merge_and_report(list(texts))
    assert problems == []
    return families(text), text


def test_counters_and_histograms_are_summed_per_label_set(pair):
    a, b = (text_of(m) for m in pair)
    merged, _ = merged_of(a, b)
    fa, fb = families(a), families(b)
    for name, (kind, _, samples) in merged.items():
        if kind not in ("counter", "histogram"):
            continue
        for key, got in samples.items():
            expected = fa.get(name, (0, 0, {}))[2].get(key, 0.0) + fb.get(name, (0, 0, {}))[2].get(key, 0.0)
            assert got == pytest.approx(expected), (name, key)
    # The same, as an operator reads it.
    assert value(merged, "framewire_requests", "framewire_requests_total", api="native", code="OK") == 4
    assert value(merged, "framewire_requests", "framewire_requests_total", api="oip", code="OK") == 2
    assert value(merged, "framewire_requests", "framewire_requests_total", model=ODD_MODEL) == 2
    assert value(merged, "framewire_inferences", "framewire_inferences_total") == 28
    assert value(merged, "framewire_executions", "framewire_executions_total") == 3
    assert value(merged, "framewire_payload_bytes", "framewire_payload_bytes_total") == 1500
    batch = "framewire_batch_size"
    assert value(merged, batch, f"{batch}_bucket", le="4.0") == 1
    assert value(merged, batch, f"{batch}_bucket", le="8.0") == 2
    assert value(merged, batch, f"{batch}_bucket", le="+Inf") == 3
    assert (value(merged, batch, f"{batch}_count"), value(merged, batch, f"{batch}_sum")) == (3, 28)
    latency = "framewire_request_duration_seconds"
    assert value(merged, latency, f"{latency}_bucket", api="native", le="0.005") == 3
    assert value(merged, latency, f"{latency}_bucket", api="native", le="0.05") == 4
    assert value(merged, latency, f"{latency}_count", api="oip") == 2
    assert value(merged, latency, f"{latency}_sum", api="oip") == pytest.approx(0.4)
    assert value(merged, "framewire_budget_refusals", "framewire_budget_refusals_total") == 7
    assert value(merged, "framewire_budget_dropped", "framewire_budget_dropped_total", reason="superseded") == 4
    assert value(merged, "process_cpu_seconds", "process_cpu_seconds_total") == pytest.approx(
        value(fa, "process_cpu_seconds", "process_cpu_seconds_total")
        + value(fb, "process_cpu_seconds", "process_cpu_seconds_total"))


def test_gauges_each_process_holds_part_of_are_summed(pair):
    a, b = (text_of(m) for m in pair)
    merged, _ = merged_of(a, b)
    assert value(merged, "framewire_queue_depth", model="tiny", version="1") == 12
    assert value(merged, "framewire_queue_capacity", model="tiny", version="1") == 128
    assert value(merged, "framewire_budget_arrival_rate") == 80.0
    for name in ("process_resident_memory_bytes", "process_open_fds"):
        assert value(merged, name) == value(families(a), name) + value(families(b), name)


def test_gauges_of_one_shared_thing_are_not_doubled(pair):
    a, b = (text_of(m) for m in pair)
    merged, _ = merged_of(a, b)
    gpu = {"gpu": "0", "uuid": GPU_UUID}
    assert value(merged, "framewire_gpu_utilization_ratio", **gpu) == pytest.approx(0.9)
    assert value(merged, "framewire_gpu_memory_total_bytes", **gpu) == 141 * 2**30
    assert value(merged, "framewire_gpu_process_memory_bytes", **gpu) == 4 * 2**30
    assert value(merged, "framewire_gpu_power_watts", **gpu) == 512.0
    assert value(merged, "framewire_model_state", version="1", state="READY") == 1
    assert value(merged, "framewire_model_state", version="1", state="LOADING") == 0
    # Only one front end has version 2 at all: its state shows as it is.
    assert value(merged, "framewire_model_state", version="2", state="UNAVAILABLE") == 1
    assert value(merged, "framewire_latency_budget_seconds") == 0.1
    assert value(merged, "framewire_budget_compute_seconds", batch_size="8") == 0.03
    assert value(merged, "framewire_budget_target_batch_size") == 8
    assert value(merged, "framewire_budget_batch_size_limit") == 16
    assert value(merged, "python_info") == 1
    assert value(merged, "process_max_fds") == value(families(a), "process_max_fds")


def test_created_samples_take_the_earliest(pair):
    a, b = (text_of(m) for m in pair)
    merged, text = merged_of(a, b)
    fa, fb = families(a), families(b)
    key = ("framewire_requests_created",
           (("api", "native"), ("code", "OK"), ("model", "tiny"), ("version", "1")))
    assert merged["framewire_requests_created"][2][key] == min(fa["framewire_requests_created"][2][key],
                                                              fb["framewire_requests_created"][2][key])
    # A _created family follows its own family, as in prometheus_client's text.
    lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    for i, line in enumerate(lines):
        name = line.split()[2]
        if name.endswith("_created"):
            base = name[: -len("_created")]
            assert lines[i - 1].split()[2] in (base, f"{base}_total"), name


def test_every_family_once_with_its_help_and_type_in_first_seen_order(pair):
    # Only the second front end sees a GPU: its GPU families come after the first's families.
    a = text_of(front_end(utilization=80, depth=1, payload=0, status=None, gpu=False))
    b = text_of(pair[1])
    merged, text = merged_of(a, b)
    names_a, names_b = list(families(a)), list(families(b))
    expected = names_a + [n for n in names_b if n not in names_a]
    assert [n for n in merged if not n.endswith("_created")] == [n for n in expected if not n.endswith("_created")]
    assert set(merged) == set(expected)
    assert "framewire_gpu_utilization_ratio" in merged and "framewire_gpu_utilization_ratio" not in names_a
    assert value(merged, "framewire_budget_arrival_rate") == 50.0  # the first's family is there, empty
    for name, (kind, help_text, _) in merged.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert text.count(f"# HELP {shown} ") == 1 and text.count(f"# TYPE {shown} ") == 1, name
        assert help_text == (families(a).get(name) or families(b)[name])[1]


def test_one_exposition_merges_to_itself(pair):
    a = text_of(pair[0])
    assert merge_expositions([a]) == a


def test_label_values_are_escaped_and_come_back_whole(pair):
    merged, text = merged_of(*(text_of(m) for m in pair))
    assert '\\"' in text and "\\\\" in text and "\\n" in text  # escaped on the wire
    assert value(merged, "framewire_requests", "framewire_requests_total", model=ODD_MODEL, code="NOT_FOUND") == 2


def test_an_unparsable_exposition_is_skipped_and_reported(pair):
    a, b = (text_of(m) for m in pair)
    html = "<html><body>502 Bad Gateway</body></html>\n"
    truncated = a[: a.index("framewire_requests_total{") + 30]  # cut mid-sample
    text, problems = merge_and_report([a, html, b, truncated], names=["fe0", "fe1", "fe2", "fe3"])
    assert len(problems) == 2
    assert problems[0].startswith("fe1: not a Prometheus text exposition") and "left out" in problems[0]
    assert problems[1].startswith("fe3: not a Prometheus text exposition")
    assert families(text) == families(merge_expositions([a, b]))
    assert merge_expositions([html]) == ""
    assert merge_and_report([html])[1][0].startswith("exposition 1 of 1: ")


def test_a_family_whose_type_differs_keeps_the_first_type_and_is_reported():
    first = ("# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total 3\n"
             "# HELP up Up.\n# TYPE up gauge\nup 1\n")
    second = ("# HELP jobs_total Jobs.\n# TYPE jobs_total gauge\njobs_total 5\n"
              "# HELP up Up.\n# TYPE up gauge\nup 1\n")
    text, problems = merge_and_report([first, second], names=["old", "new"])
    assert problems == [
        "new: jobs_total is a gauge here but a counter in an earlier exposition; its samples were left out"]
    merged = families(text)
    assert text.count("# TYPE jobs_total ") == 1
    assert merged["jobs"][0] == "counter" and value(merged, "jobs", "jobs_total") == 3
    assert value(merged, "up") == 1


def test_special_values_and_untyped_samples():
    first = ("# HELP temp T.\n# TYPE temp gauge\ntemp NaN\n# HELP lag L.\n# TYPE lag gauge\nlag +Inf\n"
             "# HELP framewire_queue_depth Q.\n# TYPE framewire_queue_depth gauge\nframewire_queue_depth 2\n"
             "loose 4 1700000000000\n")
    second = ("# HELP temp T.\n# TYPE temp gauge\ntemp 3\n# HELP lag L.\n# TYPE lag gauge\nlag 1\n"
              "# HELP framewire_queue_depth Q.\n# TYPE framewire_queue_depth gauge\nframewire_queue_depth NaN\n"
              "loose 6\n")
    merged, text = merged_of(first, second)
    assert value(merged, "temp") == 3  # max ignores a process that had no number
    assert value(merged, "lag") == math.inf and "lag +Inf" in text
    assert math.isnan(value(merged, "framewire_queue_depth")) and "framewire_queue_depth NaN" in text
    assert value(merged, "loose") == 6 and "1700000000000" not in text  # untyped: by the table (max), no timestamp
    assert merged_of("x 1\n", "x NaN\n")[0]["x"][2][("x", ())] == 1
    assert math.isnan(merged_of("x NaN\n", "x NaN\n")[0]["x"][2][("x", ())])


def test_prometheus_own_parser_and_linter_accept_the_merge(pair):
    """promtool reads the text with Prometheus' parser: one TYPE per name, samples after it, escapes, floats."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: apt-get install -y prometheus (.ci/run does)"
    special = "# HELP lag L.\n# TYPE lag gauge\nlag{q=\"a\\\\b\"} +Inf\nlag{q=\"c\"} NaN\n"
    text = merge_expositions([text_of(pair[0]), special, text_of(pair[1]), special])
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    assert 'lag{q="a\\\\b"} +Inf' in text and 'lag{q="c"} NaN' in text


def test_every_gauge_framewire_exports_has_a_rule(pair):
    """A new gauge must be given a rule; a gauge no longer exported must leave the table."""
    text = text_of(pair[0])
    parsed = families(text)
    cumulative = {n for n, (kind, _, _) in parsed.items() if kind in ("counter", "histogram", "summary")}
    gauges = {n for n, (kind, _, samples) in parsed.items()
              if kind in ("gauge", "unknown") and n.removesuffix("_created") not in cumulative}
    assert "framewire_gpu_sm_clock_hertz" in gauges and "framewire_budget_compute_seconds" in gauges
    assert gauges - set(GAUGE_RULES) == set(), "give each new gauge a rule in GAUGE_RULES"
    assert set(GAUGE_RULES) - gauges == set(), "GAUGE_RULES names gauges framewire no longer exports"
    for name, (rule, why) in GAUGE_RULES.items():
        assert rule in GAUGE_RULE_NAMES and why, name


def test_an_unknown_gauge_takes_the_maximum():
    assert DEFAULT_GAUGE_RULE == MAX and gauge_rule("someone_elses_gauge") == MAX
    assert gauge_rule("framewire_queue_depth") == SUM
    merged, _ = merged_of("# TYPE g gauge\ng 2\n", "# TYPE g gauge\ng 5\n")
    assert value(merged, "g") == 5


def test_the_content_type_is_the_0_0_4_text_format():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


# ------------------------------------------------------------ fetch_and_merge


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


class Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>not metrics</html>\n"
        self.send_response(503 if self.path == "/busy" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def served(pair):
    """The pair's real /metrics endpoints, plus an HTTP server that answers garbage."""
    urls = [f"http://127.0.0.1:{m.serve('127.0.0.1', 0)}/metrics" for m in pair]
    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=garbage.serve_forever, daemon=True)
    thread.start()
    yield urls, f"http://127.0.0.1:{garbage.server_port}/metrics"
    for m in pair:
        m.close()
    garbage.shutdown()
    garbage.server_close()


def test_fetch_and_merge_reads_every_front_end(served):
    (a, b), garbage = served
    dead = refused_url()
    busy = garbage.replace("/metrics", "/busy")
    text, errors = fetch_and_merge([a, dead, b, garbage, busy], timeout=10)
    assert len(errors) == 3
    assert errors[2] == f"{busy}: fetching failed (HTTPError: HTTP Error 503: Service Unavailable); left out"
    assert errors[0].startswith(f"{dead}: fetching failed (URLError") and "refused" in errors[0].lower()
    assert errors[1].startswith(f"{garbage}: not a Prometheus text exposition") and errors[1].endswith("left out")
    merged = families(text)
    assert value(merged, "framewire_inferences", "framewire_inferences_total") == 28
    assert value(merged, "framewire_queue_depth") == 12
    assert value(merged, "framewire_gpu_utilization_ratio") == pytest.approx(0.9)


def test_a_cache_bridges_a_failed_scrape_with_the_last_good_figures(pair, served):
    (a, b), garbage = served
    cache: dict[str, str] = {}
    assert fetch_and_merge([a, b], timeout=10, cache=cache)[1] == []
    assert set(cache) == {a, b}
    pair[0].request("native", "tiny", 1, "OK", 0.004)
    pair[1].close()  # the second front end stops answering
    text, errors = fetch_and_merge([a, b], timeout=10, cache=cache)
    assert len(errors) == 1 and errors[0].startswith(f"{b}: fetching failed")
    assert errors[0].endswith("its last good figures stand in")
    merged = families(text)
    assert value(merged, "framewire_inferences", "framewire_inferences_total") == 28  # no dip
    assert value(merged, "framewire_requests", "framewire_requests_total", api="native", code="OK") == 5
    # Without a cache the missing front end's figures are simply absent.
    text, errors = fetch_and_merge([a, b], timeout=10)
    assert len(errors) == 1 and value(families(text), "framewire_inferences", "framewire_inferences_total") == 12
    # A garbage answer is a failure too: the last good text stands in and stays cached.
    good = cache[garbage] = text_of(pair[0])
    text, errors = fetch_and_merge([garbage], timeout=10, cache=cache)
    assert cache[garbage] == good
    assert errors[0].startswith(f"{garbage}: not a Prometheus text exposition")
    assert errors[0].endswith("its last good figures stand in")
    assert value(families(text), "framewire_inferences", "framewire_inferences_total") == 12


def test_fetch_and_merge_of_no_front_ends_is_an_empty_page():
    assert fetch_and_merge([], timeout=1) == ("", [])


def test_a_front_end_that_does_not_answer_in_time_is_reported():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        text, errors = fetch_and_merge([url], timeout=0.3)
    assert text == "" and len(errors) == 1 and errors[0].startswith(f"{url}: fetching failed")
    assert "timed out" in errors[0]


def test_an_exited_front_ends_counts_stay_in_the_sums_and_its_gauges_go(pair, served):
    """A front end that exits leaves its last counts (cumulative_only) to be
    added in: the one started in its place counts from zero, and the sums do
    not step back (Prometheus would read that as a counter reset)."""
    (a, b), _ = served
    retired = cumulative_only(text_of(pair[1]))
    kinds = {family.type for family in text_string_to_metric_families(retired)}
    assert kinds <= {"counter", "histogram"} and "framewire_queue_depth" not in retired
    assert cumulative_only("not an exposition") == ""
    # The second front end is gone; its replacement (here: a fresh ServerMetrics) counts from zero.
    fresh = front_end(utilization=90, depth=1, payload=0, status=None)
    url = f"http://127.0.0.1:{fresh.serve('127.0.0.1', 0)}/metrics"
    try:
        merged = families(fetch_and_merge([a, url], timeout=10, retired=retired)[0])
    finally:
        fresh.close()
    assert value(merged, "framewire_inferences", "framewire_inferences_total") == 28  # 12 + 16 retired + 0
    assert value(merged, "framewire_request_duration_seconds", "framewire_request_duration_seconds_count",
                 api="oip") == 2
    assert value(merged, "framewire_queue_depth") == 5 + 1  # the live front ends' only
