"""One /metrics from several front ends: merging their Prometheus expositions.

With `--frontends N`, N front-end processes serve one gRPC port and each
keeps its own `ServerMetrics`. The operator scrapes one `/metrics`; the
supervisor builds it by fetching every front end's exposition and merging
them here. The merged text is what one process serving all the traffic
would have shown:

- Counters, histograms (`_bucket`, `_sum`, `_count`) and summaries (`_sum`,
  `_count`) are summed per identical label set. A summary's `quantile`
  samples cannot be combined from the processes' quantiles and are left out
  (framewire exports no summary).
- `_created` samples (the text format shows them as gauge families
  `<counter>_created`) take the minimum: the series has been counting since
  its first process began. Kept rather than dropped so that the merged page
  has the same series as a single front end's, and merging one exposition
  gives it back unchanged.
- Gauges follow a rule per family (`GAUGE_RULES`): `sum` for figures each
  process holds a part of, `max` for figures every process reads of the same
  shared thing (a GPU, the repository, a setting), `first` for the first
  process's value. A gauge missing from the table takes `max`: summing a
  shared figure multiplies it by N (a GPU at 180 % utilisation, a model state
  of 2, doubled limits) and breaks `== 1` alerts, while taking the max of a
  per-process figure under-reports at worst by a factor N and never shows a
  value no process has. `tests/unit/test_metrics_merge.py` fails when
  framewire exports a gauge the table does not name, so a new gauge gets a
  decision.
- Untyped samples are merged like gauges (by the table, else `max`).
- The client library's process collectors: `process_cpu_seconds_total` is a
  counter (summed); resident and virtual memory and open descriptors are
  summed; the descriptor limit, the start time (the latest start) and
  `python_info` take `max`. None is dropped, so a dashboard built on a single
  front end's page keeps working.

HELP and TYPE appear once per family, with the first process's help text;
families come in the order first seen (a `_created` family right after its
own); samples carry no timestamps (the merged value is "now"). The text is
written by prometheus_client's own `generate_latest` (label escaping, Go
float spelling such as `+Inf` and `NaN`), in the 0.0.4 text format
(`CONTENT_TYPE`).

An exposition that does not parse is skipped: `merge_and_report` and
`fetch_and_merge` say which and why; `merge_expositions` just leaves it out.
A family whose type differs between processes (two versions during an
upgrade) keeps the first process's type; the other process's samples of it
are left out and reported.

Limits of merging: when a front end restarts (or its scrape fails and it is
left out), the summed counters drop, which Prometheus reads as a counter
reset, so `rate()` over that moment over-counts. `fetch_and_merge(cache=...)`
bridges failed scrapes with the front end's last good text.
"""

from __future__ import annotations

import math
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

#: The merged text's content type (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

SUM, MAX, MIN, FIRST = "sum", "max", "min", "first"
GAUGE_RULE_NAMES = (SUM, MAX, FIRST)
DEFAULT_GAUGE_RULE = MAX

#: Every gauge framewire exports (service/metrics.py, its GPU figures from
#: service/gpu.py, and the client library's process collectors): family name
#: -> (rule, why). The sum rules assume each front end runs its own batchers
#: (today's runners): if batching moves into a device worker that every front
#: end reports on (issue 14), queue depth, capacity and arrival rate become `max`.
GAUGE_RULES: dict[str, tuple[str, str]] = {
    # Per model version, from each front end's batchers.
    "framewire_queue_depth": (SUM, "each front end's batcher holds its own waiting images"),
    "framewire_queue_capacity": (SUM, "each front end's batcher has its own --max-queue-size queue; summed like "
                                      "the depth, so depth / capacity stays the fill ratio the alert reads"),
    "framewire_model_state": (MAX, "every front end reports the same version; keeps 0/1 (a sum would show 2), a "
                                   "state any front end is in shows 1"),
    # Per model version, with --latency-budget-ms.
    "framewire_latency_budget_seconds": (MAX, "a setting, the same in every front end"),
    "framewire_budget_compute_seconds": (MAX, "each front end learns its own curve; the slowest prediction is the "
                                              "one that limits"),
    "framewire_budget_arrival_rate": (SUM, "each front end admits its share of the load"),
    "framewire_budget_target_batch_size": (MAX, "a size chosen per front end, not a quantity; the largest chosen"),
    "framewire_budget_admission_margin": (MAX, "each front end widens its own; the most cautious"),
    "framewire_budget_batch_size_limit": (MAX, "a limit per front end, not a quantity; the largest allowed"),
    # Per GPU, from NVML: every front end reads the same device.
    "framewire_gpu_utilization_ratio": (MAX, "the same GPU, read by every front end"),
    "framewire_gpu_memory_used_bytes": (MAX, "the same GPU's memory, read by every front end"),
    "framewire_gpu_memory_total_bytes": (MAX, "the same GPU's memory, read by every front end"),
    "framewire_gpu_process_memory_bytes": (MAX, "each front end counts itself plus the shared device workers; a "
                                                "sum would count the workers N times (front ends hold no device "
                                                "memory)"),
    "framewire_gpu_power_watts": (MAX, "the same GPU, read by every front end"),
    "framewire_gpu_power_limit_watts": (MAX, "the same GPU's limit, read by every front end"),
    "framewire_gpu_temperature_celsius": (MAX, "the same GPU, read by every front end"),
    "framewire_gpu_sm_clock_hertz": (MAX, "the same GPU, read by every front end"),
    # prometheus_client's ProcessCollector and PlatformCollector.
    "process_resident_memory_bytes": (SUM, "each process has its own memory"),
    "process_virtual_memory_bytes": (SUM, "each process has its own address space"),
    "process_open_fds": (SUM, "each process has its own descriptors"),
    "process_max_fds": (MAX, "a limit per process, the same in each"),
    "process_start_time_seconds": (MAX, "the latest start: time() minus it is the time since a front end last "
                                        "(re)started, when the summed counters last reset"),
    "python_info": (MAX, "an info gauge (1 with labels), the same in each process"),
}


@dataclass
class _Family:
    name: str
    type: str
    documentation: str
    #: (sample name, sorted labels) -> each process's value, in first-seen order.
    values: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = field(default_factory=dict)


def merge_expositions(texts: Sequence[str]) -> str:
    """The merge of several Prometheus text expositions, as one 0.0.4
    exposition; a text that does not parse is left out (see `merge_and_report`)."""
    return merge_and_report(texts)[0]


def merge_and_report(texts: Sequence[str], names: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """(merged text, problems): each problem names the exposition (by
    `names`, else its position) that was left out, wholly or a family of it, and why."""
    names = list(names) if names is not None else [f"exposition {i + 1} of {len(texts)}" for i in range(len(texts))]
    if len(names) != len(texts):
        raise ValueError(f"{len(names)} names for {len(texts)} expositions")
    parsed: list[tuple[str, list[Metric]]] = []
    problems: list[str] = []
    for name, text in zip(names, texts):
        metrics, problem = _parse(name, text)
        if problem is not None:
            problems.append(f"{problem}; left out")
        else:
            parsed.append((name, metrics))
    text, conflicts = _merge(parsed)
    return text, problems + conflicts


def cumulative_only(text: str) -> str:
    """`text` with only its counters, histograms and summaries: what a front
    end that has exited leaves to the sums (its gauges described a process
    that is gone). Empty for a text that does not parse."""
    metrics, problem = _parse("a retired exposition", text)
    if problem is not None:
        return ""
    return generate_latest(_Collected([m for m in metrics if m.type in _CUMULATIVE])).decode("utf-8")


def fetch_and_merge(urls: Sequence[str], timeout: float,
                    cache: dict[str, str] | None = None, retired: str = "") -> tuple[str, list[str]]:
    """GET every URL (a front end's /metrics) in parallel and merge the answers.

    Returns (merged text, errors): one error per URL that failed (refused,
    timed out, not 200, not UTF-8, not an exposition), naming it. With
    `cache` (a dict the caller keeps between calls), each URL's last good
    text stands in for a failed one (still reported), so one missed scrape
    does not make the summed counters dip, which Prometheus would read as a
    counter reset. `retired` (a `cumulative_only` text: the last counts of
    front ends that have exited) is added in, so that a front end started
    again, counting from zero, does not make the sums step back either.
    """
    def get(url: str) -> tuple[str | None, list[Metric], str | None]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                text = response.read().decode("utf-8")
        except Exception as exc:  # URLError, HTTPError, timeouts, UnicodeDecodeError: all mean "no figures"
            return None, [], f"{url}: fetching failed ({type(exc).__name__}: {exc})"
        metrics, problem = _parse(url, text)
        return text, metrics, problem

    answers = []
    if urls:
        with ThreadPoolExecutor(max_workers=min(len(urls), 32), thread_name_prefix="metrics-fetch") as pool:
            answers = list(pool.map(get, urls))
    errors: list[str] = []
    parsed: list[tuple[str, list[Metric]]] = []
    for url, (text, metrics, error) in zip(urls, answers):
        if error is None:
            if cache is not None:
                cache[url] = text
            parsed.append((url, metrics))
        elif cache is not None and url in cache:
            errors.append(f"{error}; its last good figures stand in")
            parsed.append((url, _parse(url, cache[url])[0]))
        else:
            errors.append(f"{error}; left out")
    if retired:
        parsed.append(("retired front ends", _parse("retired front ends", retired)[0]))
    text, conflicts = _merge(parsed)
    return text, errors + conflicts


def gauge_rule(family: str) -> str:
    """The rule a gauge family merges by (`max` when the table does not name it)."""
    return GAUGE_RULES.get(family, (DEFAULT_GAUGE_RULE, ""))[0]


# ------------------------------------------------------------------ internals

_CUMULATIVE = ("counter", "histogram", "summary")


def _parse(name: str, text: str) -> tuple[list[Metric], str | None]:
    """(every family of `text`, None), or ([], why not): parsed in full, so a
    bad line anywhere fails the whole text."""
    try:
        return list(text_string_to_metric_families(text)), None
    except Exception as exc:  # the parser raises ValueError, IndexError... on malformed text
        return [], f"{name}: not a Prometheus text exposition ({type(exc).__name__}: {exc})"


def _merge(parsed: list[tuple[str, list[Metric]]]) -> tuple[str, list[str]]:
    """(merged text, type conflicts) of (name, families) pairs."""
    families: dict[str, _Family] = {}
    problems: list[str] = []
    for name, metrics in parsed:
        for metric in metrics:
            # Keyed by the name the text shows (a counter's with `_total`), so a
            # counter `x` and a gauge `x_total` are one family in conflict, not two.
            shown = f"{metric.name}_total" if metric.type == "counter" else metric.name
            family = families.get(shown)
            if family is None:
                family = families[shown] = _Family(metric.name, metric.type, metric.documentation)
            elif family.type != metric.type:
                problems.append(f"{name}: {shown} is a {metric.type} here but a {family.type} in an earlier "
                                f"exposition; its samples were left out")
                continue
            for sample in metric.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                family.values.setdefault(key, []).append(float(sample.value))
    return generate_latest(_Collected(list(_merged(families)))).decode("utf-8"), problems


def _merged(families: dict[str, _Family]) -> Iterable[Metric]:
    created = {f"{family.name}_created" for family in families.values() if family.type in _CUMULATIVE}
    created = {name for name in created if name in families and families[name].type == "gauge"}
    for shown, family in families.items():
        if shown in created:
            continue
        yield _combine(family)
        if family.type in _CUMULATIVE and f"{family.name}_created" in created:
            yield _combine(families[f"{family.name}_created"], created=True)


def _combine(family: _Family, created: bool = False) -> Metric:
    metric = Metric(family.name, family.documentation, family.type)
    for (sample_name, labels), values in family.values.items():
        rule = _rule(family, sample_name, dict(labels), created)
        if rule is None:
            continue
        metric.samples.append(Sample(sample_name, dict(labels), _apply(rule, values)))
    return metric


def _rule(family: _Family, sample_name: str, labels: dict, created: bool) -> str | None:
    if created or (family.type in _CUMULATIVE and sample_name == f"{family.name}_created"):
        return MIN
    if family.type == "summary" and sample_name == family.name and "quantile" in labels:
        return None
    if family.type in _CUMULATIVE:
        return SUM
    return gauge_rule(family.name)


def _apply(rule: str, values: list[float]) -> float:
    if rule == SUM:
        return math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)
    if rule == FIRST:
        return values[0]
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return math.nan
    return max(numbers) if rule == MAX else min(numbers)


class _Collected:
    """The merged families, in the shape generate_latest reads."""

    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics
