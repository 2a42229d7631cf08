"""The load toolkit runs: every mode against a real server, and a full run
with its own server, baseline, JSON report and plot. (Speed is measured by
the toolkit, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.server import RunningServer


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "load_tests", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def target(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_queue_delay_us=2000) as server:
        yield server


@pytest.mark.parametrize("workload", [
    ["sweep", "--mode", "predict", "--concurrency", "2", "--input", "uint8:40x30"],
    ["sweep", "--mode", "batch", "--batch", "4", "--concurrency", "2", "--input", "jpeg:64x48"],
    ["sweep", "--mode", "oip", "--batch", "2", "--concurrency", "2", "--input", "jpeg:64x48"],
    ["sweep", "--mode", "oip", "--concurrency", "1", "--input", "float32:32"],
    ["sweep", "--mode", "stream", "--concurrency", "2", "--input", "uint8:32"],
    ["rate", "--rate", "20", "--input", "uint8:32"],
], ids=["predict", "batch", "oip-jpeg", "oip-float", "stream", "rate"])
def test_every_mode_loads_a_running_server(target, tmp_path, workload):
    out = tmp_path / "report.json"
    run(*workload, "--server", target.address, "--model", "tiny", "--no-baseline", "--duration", "2",
        "--warmup", "0.5", "--processes", "1", "--out", str(out))
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["images"] > 0 and result["images_per_second"] > 0 and not result["errors"]
    assert result["latency_ms"]["p50"] > 0 and result["server"]["inferences"] >= result["images"]
    per_image = result["server"]["payload_bytes_per_image"]
    if "uint8:32" in workload:
        assert per_image == 32 * 32 * 3  # client pixels cross as they came: H x W x 3 bytes
    else:
        assert per_image > 0


def test_rate_mode_reports_goodput_refusals_and_timeouts(target, tmp_path):
    out = tmp_path / "rate.json"
    done = run("rate", "--server", target.address, "--model", "tiny", "--no-baseline", "--rate", "30",
               "--arrivals", "poisson", "--budget-ms", "1000", "--deadline-ms", "5000", "--duration", "2",
               "--warmup", "0.5", "--input", "uint8:32", "--processes", "1", "--out", str(out))
    (result,) = json.loads(out.read_text())["results"]
    assert result["point"]["arrivals"] == "poisson" and result["budget_ms"] == 1000
    # A lightly loaded tiny model answers everything well within a second.
    assert 0 < result["goodput_per_second"] == pytest.approx(result["requests_per_second"])
    assert result["refusals"]["count"] == 0 and result["timeouts"] == 0
    assert "goodput" in done.stdout


def test_budget_compare_measures_capacity_and_tables_the_budget_against_static_settings(tiny_repo, tmp_path):
    out = tmp_path / "compare.json"
    done = run("budget-compare", "--artifact", str(tiny_repo / "tiny" / "1" / "model.fwa"),
               "--latency-budget-ms", "1000", "--rates", "0.25,0.5x", "--delays-us", "0",
               "--capacity-clients", "2", "--duration", "1.5", "--warmup", "0.5", "--input", "uint8:32",
               "--processes", "1", "--out", str(out), timeout=400)
    report = json.loads(out.read_text())
    assert report["capacity_measured"] and report["capacity"] > 0
    assert report["settings"] == ["budget 1000 ms", "static 0 us"]
    assert [(r["setting"], r["fraction"]) for r in report["results"]] == [
        ("budget 1000 ms", 0.25), ("budget 1000 ms", 0.5), ("static 0 us", 0.25), ("static 0 us", 0.5)]
    assert all(r["goodput_per_second"] > 0 and r["point"]["rate"] > 0 for r in report["results"])
    # Half the capacity of a tiny model is nowhere near a second's budget: nothing refused.
    assert all(r["refusals"]["count"] == 0 and r["timeouts"] == 0 for r in report["results"])
    assert "static 0 us *best" in done.stdout and "0.5x: goodput" in done.stdout


def test_camera_mode_counts_frames(target, tmp_path):
    out = tmp_path / "camera.json"
    done = run("camera", "--server", target.address, "--model", "tiny", "--no-baseline", "--streams", "3",
               "--fps", "10", "--budget-ms", "500", "--duration", "2", "--warmup", "0.5", "--input", "uint8:32",
               "--processes", "1", "--out", str(out))
    camera = json.loads(out.read_text())["results"][0]["camera"]
    assert 40 <= camera["frames_due"] <= 80 and camera["frames_answered"] > 0
    assert camera["frames_due"] == camera["frames_answered"] + camera["frames_dropped"]
    assert "3 streams at 10 fps" in done.stdout


def test_a_full_run_with_its_own_server_baseline_and_plot(tiny_repo, tmp_path):
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    done = run("sweep", "--artifact", str(tiny_repo / "tiny" / "1" / "model.fwa"), "--concurrency", "1,4",
               "--duration", "2", "--warmup", "0.5", "--input", "jpeg:64x48", "--baseline-batches", "1,4",
               "--baseline-seconds", "0.5", "--processes", "1", "--out", str(out), "--plot", str(plot))
    report = json.loads(out.read_text())
    assert report["baseline_images_per_second"] > 0 and len(report["baseline"]) == 2
    assert report["baseline_same_work_images_per_second"] > 0 and len(report["baseline_same_work"]) == 2
    assert [r["point"]["clients"] for r in report["results"]] == [1, 4]
    assert all(r["ratio"] > 0 and r["ratio_same_work"] > 0 for r in report["results"])
    for r in report["results"]:  # the server's own CPU, front end and workers apart
        assert r["server"]["frontend_ms_per_image"] > 0 and r["server"]["workers_ms_per_image"] > 0
        assert r["server"]["worker_processes"] >= 1
    assert "server CPU per image: front end" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ratio" in done.stdout and "in-process baseline" in done.stdout


def test_decode_alone(tiny_repo, tmp_path):
    out = tmp_path / "decode.json"
    done = run("decode", "--artifact", str(tiny_repo / "tiny" / "1" / "model.fwa"), "--input", "jpeg:640x480",
               "--batch-sizes", "1,4", "--duration", "0.5", "--jpeg-draft", "--out", str(out))
    report = json.loads(out.read_text())
    assert [p["batch_size"] for p in report["decode"]] == [1, 4] and all(
        p["images_per_second"] > 0 for p in report["decode"])
    assert report["jpeg_draft"] and "frames/s" in done.stdout
