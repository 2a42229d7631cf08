"""deploy/grafana/framewire.json queries what a real server exports.

A server on the tiny model serves real traffic (and one refused request, so
error series exist) with a stand-in NVML, so the GPU families exist too; its
/metrics page is then scraped once. Every metric and label the dashboard's
panels and variables read must be on that page, every framewire family on
the page must be on the dashboard, and the file must import: one Prometheus
datasource input, unique panel ids, balanced queries, units on the panels.
"""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from framewire.client import Client, FramewireError
from support.dashboard import (DASHBOARD, LEGEND_LABEL, all_panels, graphs, label_names, metric_names,
                               missing_metrics, panel_queries, panel_unit, queries, selectors, unbalanced,
                               variable_query)
from support.images import encode, random_image
from support.nvml import FakeNvml
from support.server import RunningServer

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: Labels Prometheus attaches to every series it scrapes; the server never sends them.
TARGET_LABELS = frozenset({"instance", "job"})
#: The unit a panel shows for metrics whose name ends so (`_bucket` dropped).
UNIT_BY_SUFFIX = {
    "_seconds": "s",
    "_bytes": "bytes",
    "_watts": "watt",
    "_celsius": "celsius",
    "_hertz": "hertz",
    "_ratio": "percentunit",
}
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def text() -> str:
    return DASHBOARD.read_text()


@pytest.fixture(scope="module")
def dashboard(text) -> dict:
    return json.loads(text)


@pytest.fixture(scope="module")
def scraped(tiny_repo) -> list:
    """The samples on a real server's /metrics page after real traffic and one refused request."""
    with RunningServer(repo=str(tiny_repo), nvml=FakeNvml()) as server:
        with Client(server.address, timeout=60, retries=0) as client:
            for seed in range(6):
                assert client.predict(encode(random_image(seed)), model="tiny").model == "tiny"
            with pytest.raises(FramewireError) as refused:
                client.predict(b"", model="tiny")
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
            page = response.read().decode()
    return [sample for family in text_string_to_metric_families(page) for sample in family.samples]


@pytest.fixture(scope="module")
def exported(scraped) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry."""
    labels: dict[str, set[str]] = {}
    for sample in scraped:
        labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


# ------------------------------------------------------------------ the helpers themselves

def test_metric_names_finds_selectors_and_skips_functions_labels_and_variables():
    expr = ('histogram_quantile(0.99, sum by (model, le) (rate(framewire_request_duration_seconds_bucket'
            '{code="OK", model=~"$model"}[$__rate_interval])))'
            ' / ignoring(api) group_left sum without (code) (increase(framewire_requests_total[5m] offset 1h))'
            ' or vector(1e-9) and on (model) framewire_queue_depth > bool 0')
    assert metric_names(expr) == {"framewire_request_duration_seconds_bucket", "framewire_requests_total",
                                  "framewire_queue_depth"}
    assert metric_names('label_values(framewire_requests_total{code=~"O,K"}, model)') == {"framewire_requests_total"}
    assert metric_names("label_values(model)") == set()
    assert label_names('sum by (model, api) (rate(x{code!="O}K", version=~"1|2"}[1m]))') == {
        "model", "api", "code", "version"}
    assert label_names('label_values(framewire_model_state{model=~"$model"}, instance)') == {"model", "instance"}
    assert label_names("x{a='}', b!~\"c\"}") == {"a", "b"}


def test_a_misspelt_metric_is_reported():
    exported = {"framewire_requests_total", "framewire_request_duration_seconds_bucket"}
    dashboard_queries = [
        ("panel 'ok'", 'sum(rate(framewire_requests_total{code="OK"}[5m]))'),
        ("panel 'typo'", "histogram_quantile(0.5, sum by (le) (rate(framewire_request_duration_second_bucket[5m])))"),
        ("variable $model", "label_values(framewire_request_total, model)"),
    ]
    assert missing_metrics(dashboard_queries, exported) == [
        "panel 'typo': framewire_request_duration_second_bucket",
        "variable $model: framewire_request_total",
    ]


def test_unbalanced_brackets_are_reported():
    assert unbalanced('sum(rate(x{a="(}"}[5m]))') is None
    assert unbalanced("sum(rate(x[5m])") == "unclosed '('"
    assert unbalanced("sum(rate(x{a=\"b\"]))") == "unexpected ']' at 16"


# ------------------------------------------------------------------ the file

def test_the_file_is_pretty_printed_json(text, dashboard):
    assert text == json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n", \
        "reformat with json.dumps(indent=2) so diffs stay small"


def test_it_imports_with_one_prometheus_datasource_input(text, dashboard):
    assert dashboard["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "description": dashboard["__inputs"][0]["description"],
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
    }]
    assert set(re.findall(r"\$\{DS_\w+\}", text)) == {"${DS_PROMETHEUS}"}
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["id"] is None
    for panel in graphs(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]
    required_panels = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert {panel["type"] for panel in graphs(dashboard)} <= required_panels


def test_panels_have_unique_ids_targets_and_room_of_their_own(dashboard):
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']!r} overlaps {occupied[(x, y)]!r}"
                occupied[(x, y)] = panel["title"]
    for panel in graphs(dashboard):
        assert panel["title"] and panel["targets"], panel
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        if panel["type"] == "heatmap":
            assert all(target.get("format") == "heatmap" for target in panel["targets"]), panel["title"]


def test_every_query_has_balanced_brackets(dashboard):
    problems = [f"{where}: {why}" for where, query in queries(dashboard) if (why := unbalanced(query))]
    assert not problems, "\n".join(problems)


def test_the_model_variable_filters_every_panel_that_has_models(dashboard, exported):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    assert variable_query(model).replace(" ", "") == "label_values(framewire_requests_total,model)"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    assert "allValue" not in variables["instance"], "All must list framewire's targets: process_* is everyone's"
    unfiltered = []
    for where, query in panel_queries(dashboard):
        for metric, matchers in selectors(query):
            wanted = {"instance": ("=~", '"$instance"')}
            if "model" in exported.get(metric, ()):
                wanted["model"] = ("=~", '"$model"')
            unfiltered += [f"{where}: {metric} lacks {label}{op}{value}"
                           for label, (op, value) in wanted.items() if matchers.get(label) != (op, value)]
    assert len(panel_queries(dashboard)) > 20 and not unfiltered, "\n".join(unfiltered)


def test_gpu_and_latency_panels_show_units(dashboard):
    wrong = []
    for panel in graphs(dashboard):
        names = {name.removesuffix("_bucket") for target in panel["targets"] for name in metric_names(target["expr"])}
        units = {unit for name in names for suffix, unit in UNIT_BY_SUFFIX.items() if name.endswith(suffix)}
        if len(units) > 1:
            wrong.append(f"{panel['title']!r} mixes {sorted(units)}")
        elif units and panel_unit(panel) != next(iter(units)):
            wrong.append(f"{panel['title']!r} has unit {panel_unit(panel)!r}, not {next(iter(units))!r}")
    assert not wrong, "\n".join(wrong)
    titled = {panel["title"]: panel_unit(panel) for panel in graphs(dashboard)}
    assert titled["Request latency p50 / p90 / p99"] == "s"
    assert titled["GPU memory"] == "bytes" and titled["GPU power"] == "watt"


# ------------------------------------------------------------------ against the server

def test_the_scrape_has_traffic_errors_and_gpus(scraped):
    by_name = {}
    for sample in scraped:
        by_name.setdefault(sample.name, []).append(sample)
    ok = [s for s in by_name["framewire_requests_total"] if s.labels["code"] == "OK" and s.labels["model"] == "tiny"]
    refused = [s for s in by_name["framewire_requests_total"] if s.labels["code"] == "INVALID_ARGUMENT"]
    assert sum(s.value for s in ok) == 6 and sum(s.value for s in refused) == 1
    assert sum(s.value for s in by_name["framewire_inferences_total"]) >= 6
    assert [s.labels["name"] for s in by_name["framewire_gpu_utilization_ratio"]] == ["NVIDIA H200"]


def test_every_metric_the_dashboard_queries_is_exported(dashboard, exported):
    assert len(queries(dashboard)) > 20
    missing = missing_metrics(queries(dashboard), set(exported))
    assert not missing, "not on the server's /metrics page:\n" + "\n".join(missing)


def test_every_label_the_dashboard_uses_is_exported(dashboard, exported):
    def carried(query: str) -> set[str]:
        return set(TARGET_LABELS).union(*(exported.get(name, set()) for name in metric_names(query)))

    unknown = []
    for panel in graphs(dashboard):
        for target in panel["targets"]:
            used = label_names(target["expr"]) | set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
            unknown += [f"panel {panel['title']!r} target {target['refId']}: {label}"
                        for label in sorted(used - carried(target["expr"]))]
    for variable in dashboard["templating"]["list"]:
        query = variable_query(variable)
        unknown += [f"variable ${variable['name']}: {label}" for label in sorted(label_names(query) - carried(query))]
    assert not unknown, "labels no queried metric carries:\n" + "\n".join(unknown)


def test_every_framewire_family_is_on_the_dashboard(dashboard, exported):
    queried = set().union(*(metric_names(query) for _, query in queries(dashboard)))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported
                if name.startswith("framewire_") and not name.endswith("_created")}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in queried}
    assert families - shown == set(), "exported but on no panel; add a panel for it"
