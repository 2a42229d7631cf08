"""Two front ends' status documents, built as the server builds them, merged into one."""

from __future__ import annotations

import copy
import json

import pytest

from framewire.service.gpu import GpuReading
from framewire.service.host_figures import HostFigures, ProcessFigures, ProcessRole
from framewire.service.compute_curve import CurvePoint
from framewire.service.latency_budget import BudgetStatus
from framewire.service.runner import WorkerStatus
from framewire.service.status_document import build_document, visible_json
from framewire.service.status_history import StatusHistory
from framewire.service.status_inputs import ServerFigures, StatusInputs, VersionFigures
from framewire.service.status_merge import merge_status
from framewire.status_view import render

HOST = HostFigures(cpu_count=16, cpu_percent=40.0, memory_total_bytes=64 << 30, memory_available_bytes=32 << 30)
GPU = GpuReading(index=0, name="NVIDIA H200", uuid="GPU-1", utilization_percent=87, memory_used_bytes=1 << 30,
                 memory_total_bytes=141 << 30, process_memory_bytes=1 << 29, power_watts=512.0,
                 temperature_celsius=61, sm_clock_hertz=1.98e9)
SHARED_WORKER = 42


def budget(refused: int, batches: int, predicted_ms: float, actual_ms: float, target: int) -> dict:
    return BudgetStatus(
        budget_seconds=0.05, curve=(CurvePoint(1, 0.004, 10, 10), CurvePoint(8, 0.02, 5, 5)), arrival_rate=10.0,
        target_batch_size=target, batch_size_limit=8, last_batch_size=target, refused=refused, probes=1,
        superseded=0, dropped_over_budget=refused, batches=batches, predicted_seconds_sum=predicted_ms * batches / 1000,
        actual_seconds_sum=actual_ms * batches / 1000, missed=0, last_predicted_seconds=0.01,
        last_actual_seconds=0.012,
    ).as_dict()


def tiny(requests: int, *, queue_ms: float, batch_sizes: dict, minute: dict, latency: tuple, budget_: dict):
    """tiny v1 after `requests` one-image requests, each queued `queue_ms` and computed 5 ms."""
    return VersionFigures(
        model="tiny", version=1, state="READY", device="cpu", task="classification", loaded=True,
        queue_depth=3, queue_capacity=64, max_batch_size=8, requests_ok=requests, requests_failed=requests // 10,
        images=requests, batches=sum(batch_sizes.values()) if requests else 0, timed_requests=requests,
        queue_seconds_total=queue_ms * requests / 1000, compute_seconds_total=0.005 * requests,
        preprocess_seconds_total=0.001 * requests, batch_sizes=batch_sizes if requests else {}, minute=minute,
        recent_latency_p50_ms=latency[0], recent_latency_p99_ms=latency[1],
        workers=(WorkerStatus(instance=0, device="cpu", state="running", pid=SHARED_WORKER, restarts=0),),
        budget=budget_)


def document(*, pid: int, uptime: float, requests: int, queue_ms: float, batch_sizes: dict, minute: dict,
             latency: tuple, budget_: dict, big_state: str, worker_cpu, codes: dict, at: float = 100.0,
             serving: bool = True) -> dict:
    """A front end's status document, from two samples a second apart, as its StatusSampler builds it."""
    server = ServerFigures(version="9.9", uptime_seconds=uptime, serving=serving, devices=("cpu",),
                           dtype="float32", grpc_port=8500, metrics_port=9090 + pid)
    big_loaded = big_state == "READY"
    big = VersionFigures(model="big", version=1, state=big_state, device="cpu", task="classification",
                         loaded=big_loaded, reason="" if big_loaded else "loading the artifact",
                         queue_capacity=64 if big_loaded else 0)
    hosted = ("tiny:1", "big:1") if big_loaded else ("tiny:1",)
    processes = (ProcessFigures(ProcessRole(pid, "front end"), cpu_percent=pid * 1.5, rss_bytes=pid << 20,
                                pss_bytes=pid << 19),
                 ProcessFigures(ProcessRole(SHARED_WORKER, "worker", "tiny", 1, 0, models=hosted),
                                cpu_percent=worker_cpu, rss_bytes=500 << 20, pss_bytes=300 << 20))
    history = StatusHistory(seconds=60)
    start = tiny(0, queue_ms=queue_ms, batch_sizes=batch_sizes, minute=minute, latency=(None, None), budget_=budget_)
    history.record(StatusInputs(time=at - 1, server=server, host=HOST, versions=(start, big)))
    now = StatusInputs(time=at, server=server, host=HOST, processes=processes, gpus=(GPU,),
                       versions=(tiny(requests, queue_ms=queue_ms, batch_sizes=batch_sizes, minute=minute,
                                      latency=latency, budget_=budget_), big),
                       requests_by_code=codes)
    return json.loads(json.dumps(build_document(now, history, history.record(now))))


def answering() -> dict:
    return document(pid=7, uptime=100.0, requests=10, queue_ms=2.0, batch_sizes={1: 4, 2: 3},
                    minute={"requests_per_second": 10.0, "errors_per_second": 1.0, "images_per_second": 20.0,
                            "average_batch_size": 2.0, "latency_p50_ms": 5.0, "latency_p99_ms": 9.0},
                    latency=(5.0, 9.0), budget_=budget(refused=2, batches=10, predicted_ms=10.0, actual_ms=12.0,
                                                       target=2),
                    big_state="READY", worker_cpu=None,
                    codes={"tiny": {"OK": 10, "INVALID_ARGUMENT": 1}, "big": {"OK": 2}})


def peer(**changes) -> dict:
    figures = dict(pid=8, uptime=120.0, requests=30, queue_ms=4.0, batch_sizes={1: 30},
                   minute={"requests_per_second": 30.0, "errors_per_second": 3.0, "images_per_second": 30.0,
                           "average_batch_size": 1.0, "latency_p50_ms": 8.0, "latency_p99_ms": 12.0},
                   latency=(8.0, 12.0), budget_=budget(refused=5, batches=30, predicted_ms=20.0, actual_ms=16.0,
                                                       target=1),
                   big_state="LOADING", worker_cpu=30.0, at=100.4,
                   codes={"tiny": {"OK": 30, "RESOURCE_EXHAUSTED": 2}, "_unknown": {"NOT_FOUND": 1}})
    return document(**{**figures, **changes})


def by_key(merged: dict) -> dict:
    return {(m["model"], m["version"]): m for m in merged["models"]}


def test_processes_list_every_front_end_and_each_shared_worker_once():
    merged = merge_status([answering(), peer()])
    rows = [(p["role"], p["pid"], p.get("frontend")) for p in merged["processes"]]
    assert rows == [("front end", 7, 0), ("front end", 8, 1), ("worker", SHARED_WORKER, None)]
    worker = merged["processes"][2]
    assert worker["models"] == ["tiny:1", "big:1"]
    assert worker["cpu_percent"] == 30.0  # unknown to the answering front end, read by the other
    assert worker["rss_bytes"] == 500 << 20  # once, not once per front end


def test_server_figures_count_each_process_once():
    merged = merge_status([answering(), peer()])
    server = merged["server"]
    assert server["cpu_percent"] == pytest.approx(7 * 1.5 + 8 * 1.5 + 30.0)
    assert server["rss_bytes"] == (7 << 20) + (8 << 20) + (500 << 20)
    assert server["pss_bytes"] == (7 << 19) + (8 << 19) + (300 << 20)
    assert merged["sample"]["server_rss_bytes"] == server["rss_bytes"]
    assert merged["sample"]["server_cpu_percent"] == server["cpu_percent"]
    assert server["uptime_seconds"] == 120.0 and server["serving"] is True
    assert (server["frontends"], server["frontends_serving"], server["frontends_missing"]) == (2, 2, 0)
    assert server["metrics_port"] == 9097 and server["grpc_port"] == 8500  # the answering front end's
    assert merged["time"] == 100.4 and merged["sample"]["time"] == 100.4
    assert merged["host"] == answering()["host"] and merged["gpus"] == answering()["gpus"]


def test_one_front_end_not_serving_makes_the_server_not_serving():
    server = merge_status([answering(), peer(serving=False)])["server"]
    assert server["serving"] is False and server["frontends_serving"] == 1


def test_counters_rates_and_queues_are_summed():
    tiny_ = by_key(merge_status([answering(), peer()]))[("tiny", 1)]
    assert tiny_["totals"] == {"requests_ok": 40, "requests_failed": 4, "images": 40, "batches": 37}
    assert tiny_["batch_sizes"] == [[1, 34], [2, 3]]
    assert tiny_["queue_depth"] == 6 and tiny_["queue_capacity"] == 128 and tiny_["max_batch_size"] == 8
    assert tiny_["requests_by_code"] == {"OK": 40, "INVALID_ARGUMENT": 1, "RESOURCE_EXHAUSTED": 2}
    assert tiny_["now"]["requests_per_second"] == 40 and tiny_["now"]["images_per_second"] == 40
    assert tiny_["now"]["errors_per_second"] == 4
    assert tiny_["minute"]["requests_per_second"] == 40 and tiny_["minute"]["images_per_second"] == 50
    assert tiny_["minute"]["errors_per_second"] == 4


def test_mean_times_are_weighted_by_requests_and_percentiles_are_the_largest():
    tiny_ = by_key(merge_status([answering(), peer()]))[("tiny", 1)]
    # 10 requests queued 2 ms, 30 queued 4 ms: 3.5 ms, not the plain mean 3 ms.
    assert tiny_["now"]["queue_ms"] == pytest.approx(3.5) and tiny_["minute"]["queue_ms"] == pytest.approx(3.5)
    assert tiny_["now"]["compute_ms"] == pytest.approx(5.0)
    # 20 images in 10 batches and 30 in 30: 50 / 40, not the plain mean 1.5.
    assert tiny_["minute"]["average_batch_size"] == pytest.approx(1.25)
    assert (tiny_["minute"]["latency_p50_ms"], tiny_["minute"]["latency_p99_ms"]) == (8.0, 12.0)
    assert tiny_["now"]["window_seconds"] == 1


def test_workers_of_a_version_are_listed_once_by_pid():
    merged = merge_status([answering(), peer()])
    assert by_key(merged)[("tiny", 1)]["workers"] == [
        {"instance": 0, "device": "cpu", "state": "running", "pid": SHARED_WORKER, "restarts": 0}]


def test_budgets_sum_their_counters_and_keep_the_answering_choice():
    b = by_key(merge_status([answering(), peer()]))[("tiny", 1)]["budget"]
    assert b["refused"] == 7 and b["dropped_over_budget"] == 7 and b["batches"] == 40 and b["probes"] == 2
    assert b["arrival_rate_per_second"] == 20.0
    assert b["mean_predicted_ms"] == pytest.approx((10 * 10 + 20 * 30) / 40)
    assert b["mean_actual_ms"] == pytest.approx((12 * 10 + 16 * 30) / 40)
    assert b["target_batch_size"] == 2 and b["curve"] == answering()["models"][0]["budget"]["curve"]
    assert b["frontends"] == 2


def test_front_ends_that_disagree_on_a_state_show_the_worst_and_say_who_says_what():
    merged = merge_status([answering(), peer()])
    big = by_key(merged)[("big", 1)]
    assert big["state"] == "LOADING" and big["frontends_ready"] == 1
    assert big["reason"] == "front ends disagree: READY on front end 0; LOADING on front end 1 (loading the artifact)"
    tiny_ = by_key(merged)[("tiny", 1)]
    assert tiny_["state"] == "READY" and tiny_["reason"] == "" and tiny_["frontends_ready"] == 2


def test_a_version_one_front_end_does_not_list_is_named_in_the_reason():
    other = peer()
    other["models"] = [m for m in other["models"] if m["model"] != "big"]
    big = by_key(merge_status([answering(), other]))[("big", 1)]
    assert big["state"] == "READY" and big["frontends_ready"] == 1
    assert big["reason"] == "front ends disagree: READY on front end 0; not listed by front end 1"


def test_requests_by_code_and_the_history_sample_are_merged():
    merged = merge_status([answering(), peer()])
    assert merged["requests_by_code"] == {"tiny": {"OK": 40, "INVALID_ARGUMENT": 1, "RESOURCE_EXHAUSTED": 2},
                                          "big": {"OK": 2}, "_unknown": {"NOT_FOUND": 1}}
    sampled = merged["sample"]["models"]["tiny:1"]
    assert sampled["requests_per_second"] == 40 and sampled["queue_depth"] == 6
    assert sampled["queue_ms"] == pytest.approx(3.5)
    assert (sampled["latency_p50_ms"], sampled["latency_p99_ms"]) == (8.0, 12.0)
    assert merged["sample"]["gpus"] == answering()["sample"]["gpus"]


def with_additions(original: dict) -> dict:
    """`original` plus what the merge adds to every document."""
    expected = copy.deepcopy(original)
    expected["server"].update(frontends=1, frontends_serving=1, frontends_missing=0)
    for process in expected["processes"]:
        if process["role"] == "front end":
            process["frontend"] = 0
    for model in expected["models"]:
        model["frontends_ready"] = int(model["state"] == "READY")
        if model["budget"] is not None:
            model["budget"]["frontends"] = 1
    return expected


@pytest.mark.parametrize("make", [answering, peer])
def test_merging_one_document_gives_it_back_with_the_added_fields(make):
    original = make()
    assert merge_status([original]) == with_additions(original)
    assert original == make()  # the input is left as it was


def test_a_merged_document_renders_in_top_with_both_front_ends_figures():
    merged = json.loads(json.dumps(merge_status([answering(), peer()])))
    text = render(merged, server="localhost:8500", width=None)
    row = next(line for line in text.splitlines() if line.startswith("tiny "))
    assert "40.0" in row.split()  # images/s over 5 s of both front ends
    assert "1 up" in row  # the shared worker once
    assert "big   " in text and "LOADING" in text and "front ends disagree" in text
    assert "CPU     server 52% of one core (2 front ends 22%, 1 worker 30%)" in text
    assert "tiny: RESOURCE_EXHAUSTED 2, INVALID_ARGUMENT 1" in text and "_unknown: NOT_FOUND 1" in text
    assert "batch sizes tiny v1 (share of batches since load): 1:92%  2:8%" in text
    assert "refused 7, dropped 7" in text
    render(merged, width=80)


def test_a_merged_document_passes_the_model_filter_of_limited_tokens():
    raw = json.dumps(merge_status([answering(), peer()])).encode()
    seen = json.loads(visible_json(raw, lambda name: name == "big"))
    assert [m["model"] for m in seen["models"]] == ["big"]
    assert [(p["role"], p["pid"]) for p in seen["processes"]] == [("front end", 7), ("front end", 8),
                                                                    ("worker", SHARED_WORKER)]
    assert seen["processes"][2]["models"] == ["big:1"]


def test_documents_that_cannot_be_merged_are_left_out_and_counted():
    good = merge_status([answering(), peer()])
    mangled = peer()
    mangled["models"].append("not a model")
    mangled["models"].append({"model": 3, "version": "x"})
    mangled["processes"].append(["not", "a", "process"])
    mangled["requests_by_code"]["tiny"]["OK"] = "many"
    merged = merge_status([answering(), None, {"schema": 2, "server": {}}, {"schema": 1, "server": "up"}, mangled])
    assert merged["server"]["frontends_missing"] == 3 and merged["server"]["frontends"] == 2
    assert [p["frontend"] for p in merged["processes"] if p["role"] == "front end"] == [0, 4]
    assert by_key(merged)[("tiny", 1)]["totals"] == by_key(good)[("tiny", 1)]["totals"]
    assert merged["requests_by_code"]["tiny"]["OK"] == 10  # the unreadable count is left out
    assert merged["server"]["rss_bytes"] == good["server"]["rss_bytes"]


def test_a_document_missing_sections_merges_what_is_there():
    bare = {"schema": 1, "server": {"serving": True, "uptime_seconds": 5.0}}
    merged = merge_status([answering(), bare])
    assert merged["server"]["frontends"] == 2 and merged["server"]["uptime_seconds"] == 100.0
    assert by_key(merged)[("tiny", 1)]["totals"] == answering()["models"][0]["totals"]
    reason = by_key(merged)[("tiny", 1)]["reason"]
    assert reason == "front ends disagree: READY on front end 0; not listed by front end 1"
    render(merged, width=None)
    alone = merge_status([None, bare])  # the answering front end's own document is the unreadable one
    assert alone["server"]["frontends"] == 1 and alone["models"] == [] and alone["processes"] == []
    assert "sample" not in alone


def test_no_document_gives_the_empty_document_readers_meet_before_the_first_sample():
    assert merge_status([]) == {} and merge_status([None, {"schema": 1}]) == {}


def test_a_document_may_name_its_front_end_index():
    first, second = answering(), peer()
    first["server"]["frontend"], second["server"]["frontend"] = 2, 0
    merged = merge_status([first, second])
    assert [(p["pid"], p.get("frontend")) for p in merged["processes"][:2]] == [(7, 2), (8, 0)]
    assert by_key(merged)[("big", 1)]["reason"].startswith("front ends disagree: READY on front end 2;")


def test_the_same_front_end_twice_counts_once():
    merged = merge_status([answering(), peer(), answering()])
    assert merged == merge_status([answering(), peer()])


def test_a_version_whose_state_is_unreadable_takes_the_state_others_report():
    other = peer()
    del by_key(other)[("big", 1)]["state"]
    big = by_key(merge_status([answering(), other]))[("big", 1)]
    assert big["state"] == "READY" and big["frontends_ready"] == 1
