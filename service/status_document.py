"""The status document: one JSON object saying what a server is doing now.

It is what `/api/status` serves on the metrics listener, what the page at
`/` draws, and what `framewire status` and `framewire top` print (they
get it from GetServerStatus's `status_json`, or from `/api/status`). Built
by `build_document(inputs, history)` from a `StatusInputs` and the
`StatusHistory` the same inputs were just recorded in. Fields (schema 1):

- `time` (unix seconds), `server` (version, uptime, serving, devices,
  dtype, CPU fallback reason, ports, and the CPU percent (of one core) and
  RSS/PSS bytes of all its processes together), `host` (CPU count, CPU
  percent of the whole machine, memory total and available).
- `processes`: the front end and each worker process once: role, pid,
  model, version, instance (of the first version it hosts), `models` (every
  version it hosts, "name:version"), CPU percent, RSS and PSS bytes.
- `gpus`: per GPU NVML sees, utilisation, memory used / total / this
  server's, power and limit, temperature, SM clock; `gpu_note` says why
  the list is empty ("no GPU: ...").
- `models`: per model version, state (a word) and reason, device, task,
  artifact (weights sha256, signer), queue depth and capacity, `now` (rates
  and mean times over the last 5 s), `minute` (rates, p50/p99 latency and
  average batch size over the last minute, and mean times), `totals` since
  load, `batch_sizes` ([size, batches] since load), `workers` (state, pid,
  restarts), `requests_by_code` (of its model name), `budget` (null without
  --latency-budget-ms: the budget, the learned compute-time curve, arrival
  rate, target and largest batch size, mean predicted vs actual latency of
  the oldest item per batch, refusals, items dropped or superseded, probes).
- `requests_by_code` for every model name, `_unknown` included.
- `sample`: this moment's history sample (what `/api/history` lists).

Absent figures are null, never zeros passed off as readings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from .status_history import StatusHistory, rounded
from .status_inputs import StatusInputs, VersionFigures

SCHEMA = 1
#: The short window `now` figures average over, in seconds.
NOW_SECONDS = 5.0
#: The window of the `minute` mean times, in seconds.
MINUTE_SECONDS = 60.0


def build_document(inputs: StatusInputs, history: StatusHistory, sample: dict) -> dict:
    """The status document for `inputs`, whose history sample is `sample`."""
    server = dataclasses.asdict(inputs.server)
    server["devices"] = list(inputs.server.devices)
    server["uptime_seconds"] = round(inputs.server.uptime_seconds, 1)
    server.update(cpu_percent=sample["server_cpu_percent"], rss_bytes=sample["server_rss_bytes"],
                  pss_bytes=sample["server_pss_bytes"])
    return {
        "schema": SCHEMA,
        "time": round(inputs.time, 3),
        "server": server,
        "host": {**dataclasses.asdict(inputs.host), "cpu_percent": rounded(inputs.host.cpu_percent, 3)},
        "processes": [{
            "role": p.role.role, "pid": p.role.pid, "model": p.role.model, "version": p.role.version,
            "instance": p.role.instance, "models": list(p.role.models), "cpu_percent": rounded(p.cpu_percent, 3),
            "rss_bytes": p.rss_bytes, "pss_bytes": p.pss_bytes,
        } for p in inputs.processes],
        "gpus": [_gpu(g) for g in inputs.gpus],
        "gpu_note": inputs.gpu_note,
        "models": [_version(v, history, inputs.requests_by_code.get(v.model, {})) for v in inputs.versions],
        "requests_by_code": inputs.requests_by_code,
        "sample": sample,
    }


def _gpu(reading) -> dict:
    figures = dataclasses.asdict(reading)
    clock = figures.pop("sm_clock_hertz")
    figures["sm_clock_mhz"] = None if clock is None else round(clock / 1e6)
    for name in ("power_watts", "power_limit_watts"):
        figures[name] = rounded(figures[name])
    return figures


def _version(v: VersionFigures, history: StatusHistory, codes: dict[str, int]) -> dict:
    now = history.window(v.key, NOW_SECONDS) or {}
    minute_times = history.window(v.key, MINUTE_SECONDS) or {}
    minute = {name: rounded(value) for name, value in v.minute.items()}
    for name in ("queue_ms", "compute_ms", "preprocess_ms"):
        minute[name] = rounded(minute_times.get(name))
    minute["window_seconds"] = minute_times.get("window_seconds")
    return {
        "model": v.model,
        "version": v.version,
        "state": v.state,
        "reason": v.reason,
        "device": v.device,
        "task": v.task,
        "artifact": dataclasses.asdict(v.artifact),
        "queue_depth": v.queue_depth,
        "queue_capacity": v.queue_capacity,
        "max_batch_size": v.max_batch_size,
        "now": {name: rounded(value) for name, value in now.items()},
        "minute": minute,
        "totals": {"requests_ok": v.requests_ok, "requests_failed": v.requests_failed, "images": v.images,
                   "batches": v.batches},
        "batch_sizes": sorted([size, count] for size, count in v.batch_sizes.items()),
        "workers": [dataclasses.asdict(w) for w in v.workers],
        "requests_by_code": codes,
        "budget": v.budget,
    }


def visible_json(document: bytes, allowed: Callable[[str], bool]) -> str:
    """The serialised `document` as text, less every model `allowed` refuses
    (a token limited to some models sees only those, as in ListModels)."""
    parsed = json.loads(document or b"{}")
    names = {m["model"] for m in parsed.get("models", [])} | set(parsed.get("requests_by_code", {}))
    if all(allowed(name) for name in names):
        return document.decode()
    parsed["models"] = [m for m in parsed["models"] if allowed(m["model"])]
    parsed["requests_by_code"] = {k: v for k, v in parsed["requests_by_code"].items() if allowed(k)}
    processes = []
    for p in parsed["processes"]:
        hosted = [m for m in p.get("models", []) if allowed(m.rpartition(":")[0])]
        if p["role"] != "worker" or hosted or (not p.get("models") and allowed(p["model"])):
            if p["role"] == "worker" and p.get("models"):
                first = hosted[0].rpartition(":")
                p.update(models=hosted, model=first[0], version=int(first[2]))
            processes.append(p)
    parsed["processes"] = processes
    sample = parsed.get("sample", {})
    sample["models"] = {k: v for k, v in sample.get("models", {}).items() if allowed(k.rpartition(":")[0])}
    return json.dumps(parsed, separators=(",", ":"))
