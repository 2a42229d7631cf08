"""The load toolkit's own logic: the open-loop arrival schedule, goodput and
refusal accounting, and the budget-versus-static comparison's checks and
table (the runs themselves are in tests/integration/test_load_tests.py)."""

from __future__ import annotations

import re
import statistics

import pytest

from load_tests import compare, report
from load_tests.__main__ import parse_args, points
from load_tests.loadgen import DROPPED, LoadResult, _record, arrival_times, percentile


# ------------------------------------------------------------ the schedule

def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_poisson_arrivals_have_the_rate_and_the_spread_of_a_poisson_process():
    times = list(arrival_times(200, 0.0, 50.0, seed=3))
    assert times[0] == 0.0 and times[-1] < 50.0 and times == sorted(times)
    assert len(times) == pytest.approx(200 * 50, rel=0.03)
    between = gaps(times)
    assert statistics.mean(between) == pytest.approx(1 / 200, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean, and a gap
    # outlasts the mean with probability 1/e.
    assert statistics.pstdev(between) / statistics.mean(between) == pytest.approx(1.0, abs=0.05)
    longer = sum(g > 1 / 200 for g in between) / len(between)
    assert longer == pytest.approx(0.368, abs=0.02)


def test_uniform_arrivals_are_evenly_spaced():
    times = list(arrival_times(50, 10.0, 12.0, poisson=False))
    assert len(times) == 100 and all(g == pytest.approx(0.02) for g in gaps(times))


def test_the_schedule_repeats_with_its_seed_and_differs_between_workers():
    first, again = list(arrival_times(100, 0, 5, seed=1)), list(arrival_times(100, 0, 5, seed=1))
    other = list(arrival_times(100, 0, 5, seed=2))
    assert first == again and first != other


def test_a_rate_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="must be positive"):
        next(arrival_times(0, 0, 1))


# ------------------------------------------------------- goodput accounting

def test_goodput_counts_answers_within_the_budget_and_refusals_are_timed():
    result = LoadResult(seconds=2.0, budget_ms=100)
    start, stop = 10.0, 12.0
    _record(result, start, stop, 10.0, 10.050, 1, None)  # answered in budget
    _record(result, start, stop, 10.1, 10.250, 1, None)  # answered, too late to count
    _record(result, start, stop, 10.2, 10.201, 1, "UNAVAILABLE")  # refused in 1 ms
    _record(result, start, stop, 10.3, 10.303, 1, "UNAVAILABLE")
    _record(result, start, stop, 10.4, 12.000, 1, "DEADLINE_EXCEEDED")
    _record(result, start, stop, 9.9, 10.0, 1, None)  # sent before the window
    _record(result, start, stop, 11.9, 12.1, 1, "UNAVAILABLE")  # answered after it
    _record(result, start, stop, 11.0, 11.080, 1, DROPPED)  # admitted, dropped after 80 ms in the queue
    summary = result.summary()
    assert summary["requests"] == 2 and summary["goodput_per_second"] == 0.5
    assert summary["refusals"] == {"count": 2, "p50_ms": pytest.approx(3.0), "p99_ms": pytest.approx(3.0)}
    assert summary["dropped"] == {"count": 1, "p99_ms": pytest.approx(80.0)}
    assert summary["timeouts"] == 1 and summary["errors"] == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}
    assert summary["latency_ms"]["p50"] == pytest.approx(150.0)


def test_worker_results_add_up():
    total = LoadResult(seconds=1.0, budget_ms=50)
    total.add({"requests": 3, "within_budget": 2, "latencies_ms": [10, 20, 60], "refusal_latencies_ms": [1.0],
               "errors": {"UNAVAILABLE": 1}})
    total.add({"requests": 1, "within_budget": 1, "latencies_ms": [5], "refusal_latencies_ms": [2.0, 4.0],
               "errors": {"UNAVAILABLE": 2}})
    summary = total.summary()
    assert summary["goodput_per_second"] == 3 and summary["refusals"]["count"] == 3
    assert summary["refusals"]["p99_ms"] == 4.0 and summary["errors"] == {"UNAVAILABLE": 3}


def test_without_a_budget_there_is_no_goodput():
    result = LoadResult(seconds=1.0)
    _record(result, 0, 1, 0.1, 0.2, 1, None)
    assert "goodput_per_second" not in result.summary() and result.within_budget == 0


def test_percentile_takes_the_nearest_rank_at_or_above():
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(list(range(100)), 99) == 99
    assert percentile([], 99) != percentile([], 99)  # NaN


def test_a_rate_report_line_shows_goodput_and_refusals():
    result = {"point": {"workload": "rate", "mode": "predict", "rate": 300.0}, "images_per_second": 280.0,
              "requests_per_second": 280.0, "latency_ms": {"p50": 20.0, "p99": 95.0}, "budget_ms": 100.0,
              "goodput_per_second": 275.0, "refusals": {"count": 12, "p99_ms": 1.5},
              "server": {"average_batch_size": 8.0, "mean_queue_ms": 5.0, "mean_compute_ms": 30.0}}
    line = report.line(result)
    assert "goodput 275.0/s within 100 ms" in line and "refused 12 (p99 1.5 ms)" in line


# ---------------------------------------------------------------- the options

def test_rate_points_carry_arrivals_deadline_and_budget():
    args = parse_args(["rate", "--rate", "100,200", "--budget-ms", "80", "--arrivals", "uniform"])
    assert [(p["rate"], p["arrivals"], p["deadline_ms"], p["budget_ms"]) for p in points(args)] == [
        (100.0, "uniform", 2000.0, 80.0), (200.0, "uniform", 2000.0, 80.0)]


def test_the_comparison_runs_the_budget_first_then_each_static_delay():
    args = parse_args(["budget-compare", "--latency-budget-ms", "100", "--delays-us", "0,2000"])
    chosen = compare.settings(args)
    assert [s["name"] for s in chosen] == ["budget 100 ms", "static 0 us", "static 2000 us"]
    assert chosen[0]["server_args"] == ["--latency-budget-ms", "100"]
    assert chosen[2]["server_args"] == ["--max-queue-delay-us", "2000"]
    static_only = parse_args(["budget-compare", "--latency-budget-ms", "100", "--static-only"])
    assert all(s["kind"] == "static" for s in compare.settings(static_only))


def test_the_comparison_needs_its_own_servers():
    with pytest.raises(SystemExit):
        parse_args(["budget-compare", "--latency-budget-ms", "100", "--server", "localhost:8500"])


@pytest.mark.parametrize("text, fractions", [("0.5,0.8,1.5x", [0.5, 0.8, 1.5]), ("1x,2x", [1.0, 2.0])])
def test_rates_are_fractions_of_capacity(text, fractions):
    assert compare.parse_fractions(text) == fractions


@pytest.mark.parametrize("text, message", [("0.5,fast", "not a fraction"), ("0,1", "positive"),
                                           ("-1x", "positive")])
def test_bad_rates_say_what_to_write(text, message):
    with pytest.raises(SystemExit, match=message):
        compare.parse_fractions(text)


def test_bad_delays_say_what_to_write():
    assert compare.parse_delays("0,500") == [0, 500]
    with pytest.raises(SystemExit, match="whole microseconds"):
        compare.parse_delays("0,1.5")
    with pytest.raises(SystemExit, match="negative"):
        compare.parse_delays("0,-5")


# ------------------------------------------------------------- checks and table

def row(setting: str, kind: str, fraction: float, goodput: float, p99: float, refused: int = 0, timeouts: int = 0,
        errors: dict | None = None) -> dict:
    return {"setting": setting, "kind": kind, "fraction": fraction, "goodput_per_second": goodput,
            "requests_per_second": goodput, "latency_ms": {"p50": p99 / 3, "p99": p99},
            "refusals": {"count": refused, "p99_ms": 1.2 if refused else float("nan")}, "timeouts": timeouts,
            "errors": errors or {}, "server": {"average_batch_size": 4.0}}


def summary(results: list[dict], fractions=(0.5, 1.5)) -> dict:
    return {"model": "mobilenet_v3_small", "device": "cpu", "dtype": "float32", "input": "uint8 224",
            "machine": "x86_64, 2 CPUs", "capacity": 200.0, "capacity_measured": True, "latency_budget_ms": 100.0,
            "deadline_ms": 2000.0, "arrivals": "poisson", "fractions": list(fractions), "results": results}


def test_the_checks_compare_the_budget_with_the_best_static_setting():
    results = [
        row("budget 100 ms", "budget", 0.5, 99.0, 40.0),
        row("static 0 us", "static", 0.5, 100.0, 30.0),
        row("static 2000 us", "static", 0.5, 98.0, 35.0),
        row("budget 100 ms", "budget", 1.5, 180.0, 95.0, refused=100),
        row("static 0 us", "static", 1.5, 60.0, 2000.0, timeouts=200),
        row("static 2000 us", "static", 1.5, 190.0, 400.0, timeouts=50),
    ]
    low, high = compare.verdicts(summary(results))
    assert low["best_static"] == "static 0 us" and low["goodput_ratio"] == pytest.approx(0.99)
    assert low["goodput_ok"] and low["p99_ok"] and not low["any_static_over_budget"]
    assert high["best_static"] == "static 2000 us" and high["goodput_ratio"] == pytest.approx(180 / 190)
    assert not high["goodput_ok"]  # 0.947 of the best static setting
    assert high["any_static_over_budget"] and high["p99_within_budget"] and high["p99_ok"]


def test_the_budgets_p99_must_be_within_it_where_a_static_settings_is_not():
    results = [row("budget 100 ms", "budget", 0.5, 100.0, 120.0), row("static 0 us", "static", 0.5, 100.0, 150.0)]
    (verdict,) = compare.verdicts(summary(results, fractions=(0.5,)))
    assert verdict["any_static_over_budget"] and not verdict["p99_within_budget"] and not verdict["p99_ok"]
    # Where every static setting kept within the budget the check asks nothing of p99 (goodput decides).
    results[1] = row("static 0 us", "static", 0.5, 100.0, 90.0)
    (verdict,) = compare.verdicts(summary(results, fractions=(0.5,)))
    assert not verdict["p99_within_budget"] and verdict["p99_ok"]


def test_the_table_shows_every_setting_per_rate_and_the_checks():
    results = [
        row("budget 100 ms", "budget", 0.5, 99.0, 40.0),
        row("static 0 us", "static", 0.5, 100.0, 30.0, errors={"INTERNAL": 2}),
        row("budget 100 ms", "budget", 1.5, 185.0, 95.0, refused=100, errors={"UNAVAILABLE": 100}),
        row("static 0 us", "static", 1.5, 190.0, 400.0, timeouts=50, errors={"DEADLINE_EXCEEDED": 50}),
    ]
    text = compare.table(summary(results))
    lines = text.splitlines()
    assert "capacity 200.0 requests/s (measured)" in text and "answers within 100 ms" in text
    assert any(line.startswith("0.5x (100/s)") and "budget 100 ms" in line for line in lines)
    assert any("static 0 us *best" in line and line.rstrip().endswith(" 2") for line in lines)  # INTERNAL: other errors
    assert any(line.startswith("1.5x (300/s)") for line in lines)
    assert "0.5x: goodput 0.99 of static 0 us (>= 0.95: pass)" in text
    assert "1.5x: goodput 0.97 of static 0 us (>= 0.95: pass); p99 95.0 ms within 100 ms: yes " \
           "(needed: a static p99 exceeds it: pass)" in text


def test_a_static_only_table_names_the_best_static_setting():
    results = [row("static 0 us", "static", 0.5, 90.0, 30.0), row("static 2000 us", "static", 0.5, 99.0, 50.0)]
    text = compare.table(summary(results, fractions=(0.5,)))
    assert "static 2000 us *best" in text and "no budgeted run (--static-only)" in text


def test_the_admission_cost_tool_refuses_every_request_after_the_probe(capsys):
    from load_tests import admission_cost

    assert admission_cost.main(["200"]) == 0
    assert "(200 of 200 requests refused)" in capsys.readouterr().out


def test_the_grpc_floor_tool_loads_both_server_kinds(capsys):
    from load_tests import grpc_floor

    assert grpc_floor.main(["--seconds", "0.5", "--clients", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["aio", "sync"]
    for line in lines:
        rate, cpu = re.search(r"(\d+) requests/s, server CPU ([\d.]+) ms per request", line).groups()
        assert int(rate) > 0 and float(cpu) > 0, line


def test_the_grpc_floor_tool_takes_the_image_size_and_a_pause(capsys):
    from load_tests import grpc_floor

    assert grpc_floor.main(["--seconds", "0.5", "--clients", "1", "--image-bytes", "100000", "--pause-ms", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("100000 B images" in line for line in lines)
    rates = [float(re.search(r"(\d+) requests/s", line).group(1)) for line in lines]
    assert all(0 < r <= 25 for r in rates)  # one client pausing 50 ms between requests


def test_the_noop_model_is_served_like_any_artifact(tmp_path):
    import numpy as np
    import torch

    from framewire.exporter import load_model, read_artifact
    from load_tests.__main__ import prepare_repo

    args = parse_args(["sweep", "--model", "noop"])
    name, path = prepare_repo(args, tmp_path)
    artifact = read_artifact(path)
    assert (name, artifact.name, artifact.input.height, artifact.input.width) == ("noop", "noop", 224, 224)
    prep = artifact.preprocessing
    assert (prep.resize_shorter, prep.crop_height, prep.crop_width) == (224, 224, 224)
    module = load_model(path).module
    out = module(torch.from_numpy(np.zeros((2, 3, 224, 224), np.float32)))
    assert out.shape == (2, 10)
