"""One status document for a server of several front ends.

With `--frontends N`, N front-end processes serve one gRPC port and share
the model worker processes; each front end samples its own status document
(service/status_document.py). `merge_status(documents)` turns theirs into
the one document an operator sees, in the same schema (1), so `framewire
status` / `top`, the page at `/` and every other reader work unchanged.
The first document is the answering front end's; "front end k" below is
the k-th document (or the index the document names as `server.frontend`,
where it does). Rules, field by field:

- `schema`: 1. `time`: the newest. `host`: the answering front end's.
  `gpus` and `gpu_note`: of the first document that lists GPUs (every front
  end's NVML sees the same GPUs), else the answering one's.
- `server`: the answering front end's version, devices, dtype, fallback
  reason and ports; `uptime_seconds` the longest; `serving` true only when
  every front end is serving. `cpu_percent`, `rss_bytes`, `pss_bytes`: the
  sums over the merged `processes`, each process once (the documents' own
  totals all count the shared workers): the answering front end's totals
  plus the readings of the processes it does not list. Added: `frontends`
  (documents merged), `frontends_serving`, `frontends_missing` (entries of
  `documents` that were not a schema-1 document with a `server` object:
  None for a front end that did not answer, or a malformed one).
- `processes`: each front end's own row once (by pid), with `frontend`
  added; each worker once by pid, its `models` united in order of first
  sight, its CPU and memory the first front end's reading that has one
  (every front end reads the same /proc figures, a moment apart).
- `models`, one per (model, version), in order of first sight:
  - `state`: the worst any front end reports (READY < DRAINING < LOADING <
    UNAVAILABLE < any other word), so a version some front ends cannot
    serve is not shown READY while a share of the calls fail. When front
    ends disagree (state, reason, or one does not list the version),
    `reason` says which front end reports what; otherwise it is the
    answering one's. Added: `frontends_ready`, how many report READY.
  - `device`, `task`, `artifact`, `max_batch_size` and any field not named
    here: of the first front end that lists the version.
  - `queue_depth`, `queue_capacity`: sums (each front end has its own
    queue). `totals`, `batch_sizes` (per size), `requests_by_code`: sums.
  - `now` and `minute`: rates (`requests_per_second`, `errors_per_second`,
    `images_per_second`, `batches_per_second`) summed; mean times
    (`queue_ms`, `compute_ms`, `preprocess_ms`) weighted by the requests
    they average (requests per second times the window); the latency
    percentiles the largest of the front ends' (the pooled percentile lies
    between the smallest and the largest: this is an upper bound, high by
    at most the spread between front ends); `average_batch_size` weighted
    by batches;
    `window_seconds` the longest.
  - `workers`: each once, by pid (instances inside a front end, pid 0, are
    that front end's own and all listed); the first front end's entry.
  - `budget`: each front end batches for itself, so the chosen batch size,
    limit, last batch and learned curve are the first budgeted front end's;
    `arrival_rate_per_second` and the counters (`batches`, `refused`,
    `dropped_over_budget`, `superseded`, `probes`, `missed`) are sums, the
    mean predicted and actual times weighted by batches, the admission
    margin the largest. Added:
    `frontends`, how many budgets were merged. None when no front end has
    one.
- `requests_by_code`: summed per model and code.
- `sample` (this moment's history sample): `time` the newest; per version,
  rates and `queue_depth` summed, `queue_ms` / `compute_ms` weighted by
  requests per second, latency percentiles the largest; `gpus` and
  `host_cpu_percent` from the same document as `gpus`/`host`; the server
  CPU and memory figures as in `server`.

A document that is not a schema-1 object with a `server` object is left
out (and counted in `frontends_missing`); inside one that is, a section or
entry of the wrong shape is left out and the rest merged. A second document
of the same front end (the same front-end pid) is left out, so a peer list
that names the answering front end again counts nothing twice. Merging one
document gives that document back, plus the added fields. No document at
all gives `{}`, which readers already meet before a server's first sample.
The result shares the parts it takes unchanged (`host`, `gpus`,
artifacts, ...) with the input documents: serialise it, or copy it before
changing it.
"""

from __future__ import annotations

from typing import Iterable

from .status_history import rounded

SCHEMA = 1
#: Model states from best to worst; a word not listed here ranks worst.
STATE_ORDER = ("READY", "DRAINING", "LOADING", "UNAVAILABLE")
RATES = ("requests_per_second", "errors_per_second", "images_per_second", "batches_per_second")
MEAN_TIMES = ("queue_ms", "compute_ms", "preprocess_ms")
PERCENTILES = ("latency_p50_ms", "latency_p99_ms")
BUDGET_COUNTERS = ("batches", "refused", "dropped_over_budget", "superseded", "probes", "missed")
PROCESS_FIGURES = ("cpu_percent", "rss_bytes", "pss_bytes")


def merge_status(documents: list[dict | None]) -> dict:
    """The status documents of a server's front ends (the answering one's
    first) as one document of the same schema; see the module doc."""
    usable: list[tuple[int, dict]] = []
    seen: set[int] = set()
    for position, d in enumerate(documents):
        if not _usable(d):
            continue
        pid = _frontend_pid(d)
        if pid is None or pid not in seen:
            usable.append((_frontend_index(d, position), d))
            seen.add(pid)
    missing = sum(not _usable(d) for d in documents)
    if not usable:
        return {}
    base = usable[0][1]
    gpu_source = next((d for _, d in usable if _list(d.get("gpus"))), base)
    processes, added = _processes(usable)
    merged = dict(base)
    merged.update(
        schema=SCHEMA,
        time=_largest(d.get("time") for _, d in usable),
        server=_server([d["server"] for _, d in usable], added, missing=missing),
        processes=processes,
        gpus=_list(gpu_source.get("gpus")),
        gpu_note=gpu_source.get("gpu_note", base.get("gpu_note", "")),
        models=_models(usable),
        requests_by_code=_sum_codes(d.get("requests_by_code") for _, d in usable),
    )
    if isinstance(base.get("sample"), dict):
        merged["sample"] = _sample([d.get("sample") for _, d in usable], base, gpu_source, merged["server"])
    return merged


# ------------------------------------------------------------------ numbers


def _number(value) -> float | int | None:
    """`value` when it is a finite number, else None (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _known(values: Iterable) -> list:
    return [n for n in (_number(v) for v in values) if n is not None]


def _sum(values: Iterable, digits: int | None = None):
    """The sum of the known values (None when none is); one value as it is."""
    known = _known(values)
    if len(known) <= 1:
        return known[0] if known else None
    total = sum(known)
    return rounded(total, digits) if digits is not None and isinstance(total, float) else total


def _largest(values: Iterable):
    known = _known(values)
    return max(known) if known else None


def _weighted(pairs: Iterable[tuple]) -> float | None:
    """The mean of the known values weighted by theirs weights; a plain mean
    when no weight is known, the value itself when only one is known."""
    known = [(v, w) for v, w in ((_number(v), _number(w)) for v, w in pairs) if v is not None]
    if len(known) <= 1:
        return known[0][0] if known else None
    weights = [max(w or 0, 0) for _, w in known]
    if not sum(weights):
        weights = [1] * len(known)
    return rounded(sum(v * w for (v, _), w in zip(known, weights)) / sum(weights))


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ documents


def _usable(document) -> bool:
    return isinstance(document, dict) and document.get("schema") == SCHEMA and isinstance(document.get("server"), dict)


def _frontend_pid(document: dict) -> int | None:
    """The pid of the front end that built `document`, None where it lists none."""
    for process in _list(document.get("processes")):
        if isinstance(process, dict) and process.get("role") == "front end" and isinstance(process.get("pid"), int):
            return process["pid"]
    return None


def _frontend_index(document, position: int) -> int:
    named = _dict(document).get("server", {})
    named = named.get("frontend") if isinstance(named, dict) else None
    return named if isinstance(named, int) and not isinstance(named, bool) else position


def _server(servers: list[dict], added: dict[str, list], missing: int) -> dict:
    merged = dict(servers[0])
    serving = [s.get("serving") is True for s in servers]
    merged.update(
        uptime_seconds=_largest(s.get("uptime_seconds") for s in servers),
        serving=all(serving),
        **{field: _sum([merged.get(field), *added[field]], digits=3 if field == "cpu_percent" else None)
           for field in PROCESS_FIGURES},
        frontends=len(servers),
        frontends_serving=sum(serving),
        frontends_missing=missing,
    )
    return merged


def _processes(usable: list[tuple[int, dict]]) -> tuple[list[dict], dict[str, list]]:
    """Every process once, and the CPU and memory readings that the
    answering document's own server totals do not hold yet (those of
    processes, or figures, first known from another front end)."""
    fronts: dict = {}
    workers: dict[int, dict] = {}
    others: list[dict] = []
    added: dict[str, list] = {field: [] for field in PROCESS_FIGURES}
    for position, (frontend, document) in enumerate(usable):
        for process in _list(document.get("processes")):
            if not isinstance(process, dict):
                continue
            pid, role = process.get("pid"), process.get("role")
            real_pid = isinstance(pid, int) and pid > 0
            if role == "worker" and real_pid and pid in workers:
                _unite(workers[pid], process, added)
                continue
            if role == "front end":
                key = pid if real_pid else ("no pid", frontend)
                if key in fronts:
                    continue
                fronts[key] = {**process, "frontend": frontend}
            elif role == "worker" and real_pid:
                workers[pid] = {**process, "models": list(_list(process.get("models")))}
            elif process in others:
                continue
            else:
                others.append(process)
            if position:  # a process the answering document does not list
                for field in PROCESS_FIGURES:
                    added[field].append(process.get(field))
    return [*fronts.values(), *workers.values(), *others], added


def _unite(worker: dict, seen_again: dict, added: dict[str, list]) -> None:
    """A shared worker as another front end lists it: the versions it hosts
    there too, and the figures the first listing could not read."""
    for hosted in _list(seen_again.get("models")):
        if hosted not in worker["models"]:
            worker["models"].append(hosted)
    for field in PROCESS_FIGURES:
        if worker.get(field) is None and seen_again.get(field) is not None:
            worker[field] = seen_again[field]
            added[field].append(seen_again[field])


# ------------------------------------------------------------------ models


def _models(usable: list[tuple[int, dict]]) -> list[dict]:
    listings: dict[tuple[str, int], list[tuple[int, dict]]] = {}
    for frontend, document in usable:
        for model in _list(document.get("models")):
            if not isinstance(model, dict) or not isinstance(model.get("model"), str) \
                    or not isinstance(model.get("version"), int):
                continue
            listings.setdefault((model["model"], model["version"]), []).append((frontend, model))
    frontends = [frontend for frontend, _ in usable]
    return [_version(entries, frontends) for entries in listings.values()]


def _rank(state) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def _version(entries: list[tuple[int, dict]], frontends: list[int]) -> dict:
    models = [m for _, m in entries]
    merged = dict(models[0])
    states = [m["state"] for m in models if isinstance(m.get("state"), str)]
    merged.update(
        state=max(states, key=_rank) if states else merged.get("state"),
        reason=_reason(entries, frontends),
        frontends_ready=sum(state == "READY" for state in states),
        queue_depth=_sum(m.get("queue_depth") for m in models),
        queue_capacity=_sum(m.get("queue_capacity") for m in models),
        now=_window([_dict(m.get("now")) for m in models]),
        minute=_window([_dict(m.get("minute")) for m in models]),
        totals={name: _sum(_dict(m.get("totals")).get(name) for m in models)
                for name in _keys(_dict(m.get("totals")) for m in models)},
        batch_sizes=_batch_sizes(m.get("batch_sizes") for m in models),
        workers=_workers(entries),
        requests_by_code=_sum_counts(m.get("requests_by_code") for m in models),
        budget=_budget([m["budget"] for m in models if isinstance(m.get("budget"), dict)]),
    )
    return merged


def _reason(entries: list[tuple[int, dict]], frontends: list[int]) -> str:
    """The answering front end's reason, or who says what when front ends disagree."""
    groups: dict[tuple, list[int]] = {}
    for frontend, model in entries:
        groups.setdefault((model.get("state"), model.get("reason") or ""), []).append(frontend)
    listed = {frontend for frontend, _ in entries}
    absent = [frontend for frontend in frontends if frontend not in listed]
    if len(groups) == 1 and not absent:
        return entries[0][1].get("reason", "")

    def who(indexes: list[int]) -> str:
        return ("front end " if len(indexes) == 1 else "front ends ") + ", ".join(map(str, indexes))

    parts = [f"{state} on {who(indexes)}" + (f" ({reason})" if reason else "")
             for (state, reason), indexes in groups.items()]
    if absent:
        parts.append(f"not listed by {who(absent)}")
    return "front ends disagree: " + "; ".join(parts)


def _keys(dicts: Iterable[dict]) -> list:
    """Every key of `dicts`, in order of first sight."""
    keys: dict = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    return list(keys)


def _window(windows: list[dict]) -> dict:
    """`now` or `minute`: rates summed, mean times weighted by requests, percentiles the largest."""
    merged = {}
    for name in _keys(windows):
        values = [w.get(name) for w in windows if name in w]
        if name in RATES:
            merged[name] = _sum(values, digits=4)
        elif name in MEAN_TIMES:
            merged[name] = _weighted((w.get(name), _requests(w)) for w in windows)
        elif name in PERCENTILES or name == "window_seconds":
            merged[name] = _largest(values)
        elif name == "average_batch_size":
            merged[name] = _average_batch_size(windows)
        else:
            merged[name] = next((v for v in values if v is not None), values[0])
    return merged


def _requests(window: dict) -> float | None:
    """About how many requests a window's mean times average: its successful
    requests per second times its length (the rate alone where the length is unknown)."""
    rate, seconds = _number(window.get("requests_per_second")), _number(window.get("window_seconds"))
    return None if rate is None else rate * (seconds if seconds else 1)


def _average_batch_size(windows: list[dict]) -> float | None:
    """Images over batches, the batches of each front end being its images over its average."""
    pairs = [(_number(w.get("images_per_second")), _number(w.get("average_batch_size"))) for w in windows]
    batched = [(images, size) for images, size in pairs if images is not None and size]
    if len(batched) == 1:
        return batched[0][1]
    if batched:
        return rounded(sum(images for images, _ in batched) / sum(images / size for images, size in batched))
    return next((size for _, size in pairs if size is not None), None)


def _batch_sizes(lists: Iterable) -> list[list[int]]:
    counts: dict[int, int] = {}
    for entries in lists:
        for entry in _list(entries):
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and _number(entry[0]) is not None \
                    and _number(entry[1]) is not None:
                counts[entry[0]] = counts.get(entry[0], 0) + entry[1]
    return sorted([size, count] for size, count in counts.items())


def _workers(entries: list[tuple[int, dict]]) -> list[dict]:
    workers: dict = {}
    for frontend, model in entries:
        for worker in _list(model.get("workers")):
            if not isinstance(worker, dict):
                continue
            pid = worker.get("pid")
            key = pid if isinstance(pid, int) and pid > 0 else ("in process", frontend, worker.get("instance"))
            workers.setdefault(key, worker)
    return list(workers.values())


def _sum_counts(counts: Iterable) -> dict:
    """{code: n} dicts summed per code."""
    merged: dict = {}
    for entry in counts:
        for code, n in _dict(entry).items():
            if _number(n) is not None:
                merged[code] = merged.get(code, 0) + n
    return merged


def _sum_codes(documents_codes: Iterable) -> dict:
    """{model: {code: n}} dicts summed per model and code."""
    per_model: dict[str, list] = {}
    for codes in documents_codes:
        for model, counts in _dict(codes).items():
            per_model.setdefault(model, []).append(counts)
    return {model: _sum_counts(counts) for model, counts in per_model.items()}


def _budget(budgets: list[dict]) -> dict | None:
    if not budgets:
        return None
    merged = dict(budgets[0])
    for name in BUDGET_COUNTERS:
        if name in merged:
            merged[name] = _sum(b.get(name) for b in budgets)
    if "arrival_rate_per_second" in merged:
        total = _sum(b.get("arrival_rate_per_second") for b in budgets)
        merged["arrival_rate_per_second"] = round(total, 3) if isinstance(total, float) else total
    for name in ("mean_predicted_ms", "mean_actual_ms"):
        if name in merged:
            merged[name] = _weighted((b.get(name), b.get("batches")) for b in budgets)
    if "admission_margin" in merged:  # each front end widens its own: the most cautious
        merged["admission_margin"] = max(b.get("admission_margin") or 0.0 for b in budgets)
    merged["frontends"] = len(budgets)
    return merged


# ------------------------------------------------------------------ the history sample


def _sample(samples: list, base: dict, gpu_source: dict, server: dict) -> dict:
    samples = [s for s in samples if isinstance(s, dict)]
    first = _dict(base.get("sample"))
    merged = dict(first)
    per_version: dict[str, list[dict]] = {}
    for sample in samples:
        for key, figures in _dict(sample.get("models")).items():
            if isinstance(figures, dict):
                per_version.setdefault(key, []).append(figures)
    models = {}
    for key, figures in per_version.items():
        entry = dict(figures[0])
        for name in _keys(figures):
            values = [f.get(name) for f in figures]
            if name in RATES:
                entry[name] = _sum(values, digits=4)
            elif name in MEAN_TIMES:
                entry[name] = _weighted((f.get(name), f.get("requests_per_second")) for f in figures)
            elif name in PERCENTILES:
                entry[name] = _largest(values)
            elif name == "queue_depth":
                entry[name] = _sum(values)
        models[key] = entry
    merged.update(
        time=_largest(s.get("time") for s in samples),
        models=models,
        gpus=_dict(gpu_source.get("sample")).get("gpus", first.get("gpus", {})),
        server_cpu_percent=server["cpu_percent"],
        server_rss_bytes=server["rss_bytes"],
        server_pss_bytes=server["pss_bytes"],
    )
    return merged
