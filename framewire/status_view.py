"""The status document (see service/status_document.py) as terminal text.

`render(document, server=..., width=...)` draws what `framewire status`
prints and `framewire top` refreshes: the server line, CPU and memory of
the server's processes and of the host, each GPU (utilisation and memory
bars, power, temperature, clock), one row per model version, the reason of
every version that is not READY, errors and refusals by status code, and
batch-size distributions.

`width` is the terminal's: columns are dropped by priority until a row
fits, and long text wraps rather than being cut. `width=None` (output piped
to a file or a program) prints every column in full.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Callable

#: No terminal is drawn narrower than this.
MIN_WIDTH = 60


def bar(fraction: float, width: int = 20) -> str:
    """`[#######.............]` for a fraction 0..1."""
    fraction = min(max(fraction or 0.0, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def number(value, digits: int = 1) -> str:
    """A rate or a time, short; "-" when unknown."""
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.{digits}f}"


def size(value) -> str:
    """Bytes as KiB / MiB / GiB; "-" when unknown."""
    if value is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def percent(value) -> str:
    return "-" if value is None else f"{value:.0f}%"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass(frozen=True)
class Column:
    """One column of the model table; lower `priority` numbers are kept longest."""

    header: str
    width: int
    priority: int
    value: Callable[[dict], str]
    left: bool = False


COLUMNS = (
    Column("MODEL", 5, 0, lambda m: m["model"], left=True),
    Column("VER", 3, 0, lambda m: str(m["version"])),
    Column("STATE", 11, 0, lambda m: m["state"], left=True),
    Column("IMG/s 5s", 8, 0, lambda m: number(m["now"].get("images_per_second"))),
    Column("IMG/s 1m", 8, 2, lambda m: number(m["minute"].get("images_per_second"))),
    Column("REQ/s 5s", 8, 3, lambda m: number(m["now"].get("requests_per_second"))),
    Column("P50 ms", 6, 4, lambda m: number(m["minute"].get("latency_p50_ms"))),
    Column("P99 ms", 6, 1, lambda m: number(m["minute"].get("latency_p99_ms"))),
    Column("QUEUE ms", 8, 6, lambda m: number(m["minute"].get("queue_ms"))),
    Column("COMP ms", 7, 6, lambda m: number(m["minute"].get("compute_ms"))),
    Column("BATCH", 5, 4, lambda m: number(m["minute"].get("average_batch_size"))),
    Column("QUEUED", 6, 2, lambda m: str(m.get("queue_depth", 0))),
    Column("ERR/s 5s", 8, 1, lambda m: number(m["now"].get("errors_per_second"), 2)),
    Column("WORKERS", 7, 5, lambda m: workers(m)),
    Column("DEVICE", 6, 7, lambda m: m.get("device") or "-", left=True),
)


def workers(model: dict) -> str:
    """`2 up`, or `1/2 up, 3 restarts`."""
    listed = model.get("workers", [])
    if not listed:
        return "-"
    up = sum(1 for w in listed if w["state"] in ("running", "in process"))
    restarts = sum(w["restarts"] for w in listed)
    text = f"{up} up" if up == len(listed) else f"{up}/{len(listed)} up"
    return text + (f", {restarts} restarts" if restarts else "")


def fitted(models: list[dict], width: int | None) -> tuple[list[Column], dict[str, int]]:
    """The columns that fit in `width` (all of them for None), and each one's width."""
    widths = {c.header: max([len(c.header), c.width, *(len(c.value(m)) for m in models)]) for c in COLUMNS}
    chosen = list(COLUMNS)
    if width is None:
        return chosen, widths
    widths["MODEL"] = min(widths["MODEL"], 20)
    while sum(widths[c.header] + 1 for c in chosen) - 1 > width and any(c.priority for c in chosen):
        chosen.remove(max(chosen, key=lambda c: (c.priority, COLUMNS.index(c))))
    return chosen, widths


def model_table(models: list[dict], width: int | None) -> list[str]:
    columns, widths = fitted(models, width)

    def cell(column: Column, text: str) -> str:
        room = widths[column.header]
        if len(text) > room:
            text = text[: room - 1] + "~"  # only names, and only on a narrow terminal
        return text.ljust(room) if column.left else text.rjust(room)

    lines = [" ".join(cell(c, c.header) for c in columns).rstrip()]
    lines += [" ".join(cell(c, c.value(m)) for c in columns).rstrip() for m in models]
    return lines


def wrap(text: str, width: int | None, indent: str = "  ") -> list[str]:
    """`text` as lines no wider than `width` (one line for None)."""
    if width is None:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def render(document: dict, *, server: str = "", width: int | None = None) -> str:
    """One frame of text from a status document."""
    if width is not None:
        width = max(width, MIN_WIDTH)
    s = document["server"]
    lines: list[str] = []
    state = "serving" if s["serving"] else "not serving"
    metrics = f", page and metrics on :{s['metrics_port']}" if s.get("metrics_port") else ""
    lines += wrap(f"framewire {s['version']} at {server or 'the server'}: {state}, up {duration(s['uptime_seconds'])}, "
                  f"{', '.join(s['devices'])} ({s['dtype']}){metrics}", width)
    if s.get("device_fallback_reason"):
        lines += wrap(f"  running on the CPU: {s['device_fallback_reason']}", width, "    ")
    lines += machine_lines(document, width)
    lines += gpu_lines(document, width)
    lines.append("")
    models = document.get("models", [])
    lines += model_table(models, width) if models else ["(no models)"]
    for m in models:
        if m.get("reason"):
            lines += wrap(f"  {m['model']} v{m['version']} {m['state']}: {m['reason']}", width, "    ")
    errors = [f"{name}: " + ", ".join(f"{code} {n}" for code, n in sorted(codes.items(), key=lambda kv: -kv[1])
                                      if code != "OK")
              for name, codes in sorted(document.get("requests_by_code", {}).items())
              if any(code != "OK" for code in codes)]
    if errors:
        lines.append("")
        lines += wrap("errors and refusals since start: " + "; ".join(errors), width)
    batched = [m for m in models if m.get("batch_sizes")]
    if batched:
        lines.append("")
        for m in batched:
            total = sum(n for _, n in m["batch_sizes"]) or 1
            shares = "  ".join(f"{size_}:{100 * n / total:.0f}%" for size_, n in m["batch_sizes"])
            lines += wrap(f"batch sizes {m['model']} v{m['version']} (share of batches since load): {shares}", width)
    budgeted = [m for m in models if m.get("budget")]
    if budgeted:
        lines.append("")
        for m in budgeted:
            lines += wrap(budget_line(m), width, "    ")
    return "\n".join(lines)


def budget_line(model: dict) -> str:
    """A model's latency budget: what it chose, predicted vs actual, refusals, the learned curve."""
    b = model["budget"]
    curve = " ".join(f"{p['batch_size']}:{number(p['compute_ms'])}" for p in b["curve"]) or "not measured yet"
    margin = f", admission margin {b['admission_margin']:.0%}" if "admission_margin" in b else ""
    return (f"budget {model['model']} v{model['version']} {number(b['budget_ms'], 0)} ms: batch "
            f"{b['target_batch_size']} (limit {b['batch_size_limit']}, last {b['last_batch_size']}) at "
            f"{number(b['arrival_rate_per_second'])}/s; oldest predicted {number(b['mean_predicted_ms'])} ms, "
            f"actual {number(b['mean_actual_ms'])} ms; refused {b['refused']}, dropped {b['dropped_over_budget']}, "
            f"superseded {b['superseded']}, late {b['missed']}{margin}; curve ms by batch {curve}")


def machine_lines(document: dict, width: int | None) -> list[str]:
    """CPU and memory of the server's processes and of the host."""
    s, host = document["server"], document.get("host", {})
    processes = document.get("processes", [])
    front = [p for p in processes if p["role"] == "front end"]
    workers_ = [p for p in processes if p["role"] == "worker"]

    def part(name: str, group: list[dict], field: str, show: Callable) -> str:
        known = [p[field] for p in group if p.get(field) is not None]
        return f"{name} {show(sum(known))}" if known else ""

    # One front end, or with --frontends N all of them together.
    fronts = "front end" if len(front) <= 1 else f"{len(front)} front ends"
    cpu = [f"server {percent(s.get('cpu_percent'))} of one core"]
    split = [x for x in (part(fronts, front, "cpu_percent", percent),
                         part(f"{len(workers_)} worker{'s' * (len(workers_) != 1)}", workers_, "cpu_percent", percent))
             if x]
    if workers_ and split:
        cpu[0] += f" ({', '.join(split)})"
    cpu.append(f"host {percent(host.get('cpu_percent'))} of {host.get('cpu_count', '?')} CPUs")
    memory = f"server PSS {size(s.get('pss_bytes'))}, RSS {size(s.get('rss_bytes'))}"
    split = [x for x in (part(fronts, front, "pss_bytes", size),
                         part(f"{len(workers_)} worker{'s' * (len(workers_) != 1)}", workers_, "pss_bytes", size))
             if x]
    if workers_ and split:
        memory += f" (PSS: {', '.join(split)})"
    if host.get("memory_available_bytes") is not None:
        memory += f"; host {size(host['memory_available_bytes'])} free of {size(host.get('memory_total_bytes'))}"
    return [*wrap("CPU     " + "; ".join(cpu), width, " " * 8), *wrap("MEMORY  " + memory, width, " " * 8)]


def gpu_lines(document: dict, width: int | None) -> list[str]:
    gpus = document.get("gpus", [])
    if not gpus:
        return wrap(f"GPU     {document.get('gpu_note') or 'none'}", width, " " * 8)
    lines = []
    bar_width = 20 if width is None or width >= 100 else 10
    for g in gpus:
        power = f"{number(g.get('power_watts'), 0)}/{number(g.get('power_limit_watts'), 0)} W"
        temperature = "-" if g.get("temperature_celsius") is None else f"{g['temperature_celsius']:.0f}C"
        lines += wrap(f"GPU {g['index']}   {g['name']}  {temperature}  {power}  SM {number(g.get('sm_clock_mhz'), 0)} MHz",
                      width, " " * 8)
        total = g.get("memory_total_bytes") or 0
        used = g.get("memory_used_bytes") or 0
        utilisation = g.get("utilization_percent")
        ours = g.get("process_memory_bytes")
        lines += wrap(f"  UTIL {bar((utilisation or 0) / 100, bar_width)} {number(utilisation):>5}%  "
                      f"MEM {bar(used / total if total else 0, bar_width)} {used / 2**30:.1f}/{total / 2**30:.1f} GiB"
                      + ("" if ours is None else f" (framewire {ours / 2**30:.1f})"), width, " " * 8)
    return lines
