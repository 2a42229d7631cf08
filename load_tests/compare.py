"""A latency budget against static batching: `python -m load_tests budget-compare`.

1. Capacity: closed-loop single-image Predict clients (`--capacity-clients`)
   against a server with the toolkit's `--max-queue-delay-us`; the requests
   answered per second are the capacity (or take `--capacity` as given).
2. The same open-loop arrival rates, as fractions of that capacity
   (`--rates 0.5,0.8,1.5x`), against a server started with
   `--latency-budget-ms B` and against one server per static
   `--max-queue-delay-us` (`--delays-us`). Every setting is judged by the
   same yardstick: goodput is the answers within B per second; refusals
   (UNAVAILABLE at admission), drops (UNAVAILABLE for a request admitted and
   later taken from the queue, told apart by the `framewire-over-budget`
   trailer) and timeouts (past `--deadline-ms`) are counted, and how fast
   refusals came back.
3. One table, a row per rate and setting, and per rate the checks the
   budget must pass: goodput within 5% of the best static setting's, and
   answered p99 within B wherever some static setting's p99 is not.

The budgeted server gets `--latency-budget-ms` like any `--server-arg`;
`--static-only` leaves it out for a server that does not take the flag.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import loadgen, report
from .serverproc import BenchServer, measured_point

#: Budget goodput must reach this share of the best static setting's.
GOODPUT_SHARE = 0.95
#: Errors that are part of the comparison, not failures of the run.
COUNTED_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def parse_fractions(text: str) -> list[float]:
    """'0.5,0.8,1.5x' -> [0.5, 0.8, 1.5] (a trailing x on any of them is optional)."""
    fractions = []
    for word in text.split(","):
        word = word.strip().removesuffix("x")
        try:
            value = float(word)
        except ValueError:
            raise SystemExit(f"--rates: {word!r} is not a fraction of capacity; write e.g. 0.5,0.8,1.5x") from None
        if not (math.isfinite(value) and value > 0):
            raise SystemExit(f"--rates: {word!r} must be a positive fraction of capacity")
        fractions.append(value)
    return fractions


def parse_delays(text: str) -> list[int]:
    """'0,2000' -> [0, 2000] microseconds."""
    try:
        delays = [int(word) for word in text.split(",")]
    except ValueError:
        raise SystemExit(f"--delays-us: {text!r} must be comma-separated whole microseconds") from None
    if any(d < 0 for d in delays):
        raise SystemExit(f"--delays-us: {text!r} holds a negative delay")
    return delays


def settings(args) -> list[dict]:
    """The server settings compared: the budget first (a server refusing the
    flag fails the run at once, not after the static runs), then each delay."""
    out = [] if args.static_only else [{
        "name": f"budget {args.latency_budget_ms:g} ms", "kind": "budget",
        "server_args": ["--latency-budget-ms", f"{args.latency_budget_ms:g}"],
    }]
    return out + [{"name": f"static {d} us", "kind": "static", "server_args": ["--max-queue-delay-us", str(d)]}
                  for d in parse_delays(args.delays_us)]


def _start(repo: Path, base: list[str], setting: dict) -> BenchServer:
    try:
        return BenchServer(repo, [*base, *setting["server_args"]], repo / f"server-{setting['kind']}.log")
    except RuntimeError as exc:
        hint = ("; this server does not take --latency-budget-ms yet: rerun with --static-only"
                if setting["kind"] == "budget" and "--latency-budget-ms" in str(exc) else "")
        raise SystemExit(f"{setting['name']}: the server did not start{hint}\n{exc}") from None


def measure_capacity(args, repo: Path, model: str, base: list[str], processes: int) -> float:
    """Requests per second answered to closed-loop single-image clients."""
    server = _start(repo, base, {"name": "capacity", "kind": "capacity",
                                 "server_args": ["--max-queue-delay-us", str(args.max_queue_delay_us)]})
    try:
        spec = {"workload": "closed", "mode": "predict", "batch": 1, "clients": args.capacity_clients,
                "server": server.address, "model": model, "input": args.input, "duration": args.duration,
                "warmup": args.warmup, "token": args.token}
        load = loadgen.spawn(spec, processes)
    finally:
        server.stop()
    if load.requests_per_second <= 0:
        raise SystemExit(f"capacity: no request was answered ({load.errors or 'no errors either'})")
    print(f"capacity: {load.requests_per_second:.1f} requests/s ({args.capacity_clients} closed-loop clients, "
          f"--max-queue-delay-us {args.max_queue_delay_us})", flush=True)
    return load.requests_per_second


def run(args, repo: Path, model: str, dtype: str, processes: int) -> dict:
    """Measure capacity, run every rate against every setting; the report's data."""
    base = ["--device", args.device, "--dtype", dtype, "--max-batch-size", str(args.max_batch_size), *args.server_arg]
    fractions = parse_fractions(args.rates)
    chosen = settings(args)
    capacity = args.capacity or measure_capacity(args, repo, model, base, processes)
    results = []
    for setting in chosen:
        server = _start(repo, base, setting)
        try:
            for fraction in fractions:
                point = {"workload": "rate", "mode": "predict", "batch": 1, "rate": round(fraction * capacity, 1),
                         "arrivals": args.arrivals, "deadline_ms": args.deadline_ms,
                         "budget_ms": args.latency_budget_ms}
                spec = {**point, "server": server.address, "model": model, "input": args.input,
                        "duration": args.duration, "warmup": args.warmup, "token": args.token}
                results.append({"setting": setting["name"], "kind": setting["kind"], "fraction": fraction,
                                "point": point, **measured_point(server.address, model, spec, processes, args.token,
                                                                 server.pid)})
                print(f"{setting['name']}, {fraction:g}x: {report.line(results[-1])}", flush=True)
        finally:
            server.stop()
    return {"capacity": capacity, "capacity_measured": args.capacity is None,
            "latency_budget_ms": args.latency_budget_ms, "deadline_ms": args.deadline_ms,
            "arrivals": args.arrivals, "fractions": fractions, "settings": [s["name"] for s in chosen],
            "results": results}


def verdicts(summary: dict) -> list[dict]:
    """Per rate: the best static setting and whether the budget meets the checks."""
    budget_ms = summary["latency_budget_ms"]
    out = []
    for fraction in summary["fractions"]:
        rows = [r for r in summary["results"] if r["fraction"] == fraction]
        static = [r for r in rows if r["kind"] == "static"]
        budget = next((r for r in rows if r["kind"] == "budget"), None)
        best = max(static, key=lambda r: r["goodput_per_second"]) if static else None
        verdict = {"fraction": fraction, "best_static": best["setting"] if best else None,
                   "best_static_goodput": best["goodput_per_second"] if best else None,
                   "any_static_over_budget": any(not r["latency_ms"]["p99"] <= budget_ms for r in static)}
        if budget is not None:
            p99 = budget["latency_ms"]["p99"]
            ratio = (budget["goodput_per_second"] / best["goodput_per_second"]
                     if best and best["goodput_per_second"] > 0 else None)
            verdict.update({
                "budget_goodput": budget["goodput_per_second"], "goodput_ratio": ratio,
                "goodput_ok": ratio is None or ratio >= GOODPUT_SHARE,
                "budget_p99_ms": p99, "p99_within_budget": p99 <= budget_ms,
                "p99_ok": p99 <= budget_ms or not verdict["any_static_over_budget"],
            })
        out.append(verdict)
    return out


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def table(summary: dict) -> str:
    """The comparison as text: a row per rate and setting, then the checks."""
    budget_ms = summary["latency_budget_ms"]
    how = "measured" if summary["capacity_measured"] else "given"
    rows = [f"{summary['model']} on {summary['device']} ({summary['dtype']}), input {summary['input']}, "
            f"{summary['machine']}",
            f"capacity {summary['capacity']:.1f} requests/s ({how}); goodput = answers within {budget_ms:g} ms "
            f"per second; {summary['arrivals']} arrivals, {summary['deadline_ms']:g} ms deadlines", "",
            f"{'rate':<18} {'setting':<22} {'goodput/s':>9} {'answered/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'batch':>5} {'refused':>7} {'ref p99':>7} {'dropped':>7} {'timeouts':>8} {'errors':>6}"]
    best = {v["fraction"]: v["best_static"] for v in verdicts(summary)}
    for fraction in summary["fractions"]:
        label = f"{fraction:g}x ({fraction * summary['capacity']:.0f}/s)"
        for r in (r for r in summary["results"] if r["fraction"] == fraction):
            name = r["setting"] + (" *best" if r["setting"] == best[fraction] else "")
            others = sum(n for code, n in r["errors"].items() if code not in COUNTED_CODES)
            rows.append(f"{label:<18} {name:<22} {r['goodput_per_second']:>9.1f} {r['requests_per_second']:>10.1f} "
                        f"{_ms(r['latency_ms']['p50']):>7} {_ms(r['latency_ms']['p99']):>7} "
                        f"{r['server']['average_batch_size']:>5.1f} {r['refusals']['count']:>7} "
                        f"{_ms(r['refusals']['p99_ms']):>7} {r.get('dropped', {}).get('count', 0):>7} "
                        f"{r['timeouts']:>8} {others:>6}")
            label = ""
    rows += ["", "checks (budget against the best static setting, *best):"]
    for v in verdicts(summary):
        if "budget_goodput" not in v:
            rows.append(f"  {v['fraction']:g}x: best static {v['best_static']}, no budgeted run (--static-only)")
            continue
        ratio = "-" if v["goodput_ratio"] is None else f"{v['goodput_ratio']:.2f}"
        needed = "needed: a static p99 exceeds it" if v["any_static_over_budget"] else "no static p99 exceeds it"
        rows.append(f"  {v['fraction']:g}x: goodput {ratio} of {v['best_static']} (>= {GOODPUT_SHARE:g}: "
                    f"{'pass' if v['goodput_ok'] else 'FAIL'}); p99 {_ms(v['budget_p99_ms'])} ms within "
                    f"{budget_ms:g} ms: {'yes' if v['p99_within_budget'] else 'no'} ({needed}: "
                    f"{'pass' if v['p99_ok'] else 'FAIL'})")
    return "\n".join(rows)
