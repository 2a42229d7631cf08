"""`framewire status` / `top` text: states and reasons, short and minute rates,
CPU and memory, GPU power and temperature, 80 columns, full rows when piped."""

from __future__ import annotations

import copy

from framewire.status_view import bar, render

LONG_NAME = "a_model_with_a_rather_long_name_indeed"
REASON = ("not a framewire artifact, or truncated (Error parsing message with type "
          "'framewire.v1.ModelArtifact': Wire format was corrupt); re-export or re-copy the file")


def model(name: str, version: int, state: str = "READY", reason: str = "", **figures) -> dict:
    entry = {
        "model": name, "version": version, "state": state, "reason": reason, "device": "cpu",
        "queue_depth": 2, "queue_capacity": 1024,
        "now": {"images_per_second": 20.0, "requests_per_second": 18.5, "errors_per_second": 0.25},
        "minute": {"images_per_second": 5.8, "latency_p50_ms": 7.7, "latency_p99_ms": 29.2, "queue_ms": 2.7,
                   "compute_ms": 5.2, "average_batch_size": 1.5},
        "batch_sizes": [[1, 30], [2, 10]],
        "workers": [{"instance": 0, "device": "cpu", "state": "running", "pid": 11, "restarts": 0},
                    {"instance": 1, "device": "cpu", "state": "exited", "pid": 12, "restarts": 3}],
    }
    if state != "READY":
        entry.update(now={}, minute={}, batch_sizes=[], workers=[], queue_depth=0)
    entry.update(figures)
    return entry


DOCUMENT = {
    "schema": 1, "time": 1.0,
    "server": {"version": "0.1.0", "uptime_seconds": 75, "serving": True, "devices": ["cpu"], "dtype": "float32",
               "device_fallback_reason": "no CUDA device is visible", "grpc_port": 8500, "metrics_port": 9090,
               "cpu_percent": 57.0, "rss_bytes": 3 * 2**30, "pss_bytes": 2 * 2**30},
    "host": {"cpu_count": 2, "cpu_percent": 93.0, "memory_total_bytes": 16 * 2**30, "memory_available_bytes": 9 * 2**30},
    "processes": [
        {"role": "front end", "pid": 10, "model": "", "version": 0, "instance": 0, "cpu_percent": 16.0,
         "rss_bytes": 2**30, "pss_bytes": 600 * 2**20},
        {"role": "worker", "pid": 11, "model": "tiny", "version": 1, "instance": 0, "cpu_percent": 41.0,
         "rss_bytes": 2**30, "pss_bytes": 500 * 2**20},
    ],
    "gpus": [], "gpu_note": "no GPU: no CUDA device is visible",
    "models": [model(LONG_NAME, 1), model("tiny", 2, "UNAVAILABLE", REASON), model("tiny", 1)],
    "requests_by_code": {"tiny": {"OK": 100, "INVALID_ARGUMENT": 3, "UNAVAILABLE": 1}, "_unknown": {"NOT_FOUND": 2}},
}


def test_states_are_words_and_reasons_are_shown():
    text = render(DOCUMENT, server="s:1", width=None)
    assert "MODEL_STATE" not in text
    rows = [line for line in text.splitlines() if line.startswith("tiny ")]
    assert "UNAVAILABLE" in rows[0] and "READY" in rows[1]
    assert f"tiny v2 UNAVAILABLE: {REASON}" in text


def test_a_five_second_rate_stands_next_to_the_minute():
    text = render(DOCUMENT, width=None)
    header = next(line for line in text.splitlines() if line.startswith("MODEL"))
    assert "IMG/s 5s" in header and "IMG/s 1m" in header and "ERR/s 5s" in header
    row = next(line for line in text.splitlines() if line.startswith("tiny ") and "READY" in line)
    assert "20.0" in row and "5.8" in row and "0.25" in row


def test_cpu_and_memory_of_the_front_end_and_workers_on_a_cpu_host():
    text = render(DOCUMENT, width=None)
    assert "CPU     server 57% of one core (front end 16%, 1 worker 41%); host 93% of 2 CPUs" in text
    assert "server PSS 2.0 GiB, RSS 3.0 GiB (PSS: front end 600.0 MiB, 1 worker 500.0 MiB)" in text
    assert "host 9.0 GiB free of 16.0 GiB" in text
    assert "GPU     no GPU: no CUDA device is visible" in text
    assert "running on the CPU: no CUDA device is visible" in text


def test_gpus_show_bars_power_temperature_and_clock():
    document = copy.deepcopy(DOCUMENT)
    document["gpus"] = [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1", "utilization_percent": 50.0,
                         "memory_used_bytes": 70 * 2**30, "memory_total_bytes": 140 * 2**30,
                         "process_memory_bytes": 2**30, "power_watts": 400.0, "power_limit_watts": 700.0,
                         "temperature_celsius": 60.0, "sm_clock_mhz": 1980}]
    text = render(document, width=120)
    assert "GPU 0   NVIDIA H200  60C  400/700 W  SM 1980 MHz" in text
    assert f"UTIL {bar(0.5)}  50.0%" in text and "70.0/140.0 GiB (framewire 1.0)" in text
    assert all(len(line) <= 80 for line in render(document, width=80).splitlines())


def test_batch_sizes_errors_and_workers_are_summarised():
    text = render(DOCUMENT, width=None)
    assert "batch sizes tiny v1 (share of batches since load): 1:75%  2:25%" in text
    assert "errors and refusals since start: _unknown: NOT_FOUND 2; tiny: INVALID_ARGUMENT 3, UNAVAILABLE 1" in text
    assert "1/2 up, 3 restarts" in text


def test_eighty_columns_fit_by_dropping_columns_by_priority():
    text = render(DOCUMENT, server="localhost:8500", width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    header = next(line for line in lines if line.startswith("MODEL"))
    for kept in ("STATE", "IMG/s 5s", "IMG/s 1m", "P99 ms", "ERR/s 5s", "QUEUED"):
        assert kept in header
    assert "DEVICE" not in header and "WORKERS" not in header
    assert "UNAVAILABLE" in text and "re-export or re-copy the file" in text  # wrapped, never cut


def test_piped_output_is_never_cut():
    text = render(DOCUMENT, width=None)
    header = next(line for line in text.splitlines() if line.startswith("MODEL"))
    assert len(header) > 100 and "DEVICE" in header and "WORKERS" in header and "QUEUE ms" in header
    assert any(line.startswith(LONG_NAME + " ") for line in text.splitlines())
    assert f"  tiny v2 UNAVAILABLE: {REASON}" in text.splitlines()


def test_a_wide_terminal_shows_every_column():
    header = next(line for line in render(DOCUMENT, width=200).splitlines() if line.startswith("MODEL"))
    assert "DEVICE" in header and "COMP ms" in header


def test_a_latency_budget_shows_its_choice_prediction_refusals_and_curve():
    from framewire.service.compute_curve import CurvePoint
    from framewire.service.latency_budget import BudgetStatus

    status = BudgetStatus(budget_seconds=0.1, curve=(CurvePoint(1, 0.012, 32, 28), CurvePoint(8, 0.041, 32, 32)),
                          arrival_rate=180.0, target_batch_size=4, batch_size_limit=8, last_batch_size=3,
                          refused=17, probes=0, superseded=2, dropped_over_budget=1, batches=40,
                          predicted_seconds_sum=2.0, actual_seconds_sum=2.4, missed=0,
                          last_predicted_seconds=0.05, last_actual_seconds=0.06, admission_margin=0.26)
    document = copy.deepcopy(DOCUMENT)
    document["models"][2]["budget"] = status.as_dict()
    text = render(document, width=None)
    assert ("budget tiny v1 100 ms: batch 4 (limit 8, last 3) at 180.0/s; oldest predicted 50.0 ms, actual 60.0 ms; "
            "refused 17, dropped 1, superseded 2, late 0, admission margin 26%; curve ms by batch 1:12.0 8:41.0"
            ) in text
    assert all(len(line) <= 80 for line in render(document, width=80).splitlines())
    # A version without a budget shows no budget line.
    assert "budget a_model" not in text
