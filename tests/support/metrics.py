"""Reading a live server's Prometheus endpoint in tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, list]:
    """Samples by sample name (`..._total`, `..._bucket`, ...)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, sample_name: str, **labels) -> float:
    """The sum of the samples named `sample_name` whose labels include `labels`."""
    return sum(s.value for s in samples.get(sample_name, []) if all(s.labels.get(k) == v for k, v in labels.items()))
