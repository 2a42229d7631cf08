"""Reports of a load run: a line per point, a table, a PNG plot."""

from __future__ import annotations


def _label(point: dict) -> str:
    if point["workload"] == "closed":
        return f"{point['mode']} x{point['clients']}" + (f" (batch {point['batch']})" if point.get("batch", 1) > 1 else "")
    if point["workload"] == "rate":
        return f"{point['mode']} at {point['rate']:g}/s"
    return f"{point['streams']} streams at {point['fps']:g} fps"


def line(result: dict) -> str:
    lat = result["latency_ms"]
    server = result["server"]
    text = (f"{_label(result['point'])}: {result['images_per_second']:.1f} img/s, {result['requests_per_second']:.1f} req/s, "
            f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, server batch {server['average_batch_size']:.1f}")
    if "device_batch_size" in server and abs(server["device_batch_size"] - server["average_batch_size"]) > 0.05:
        text += f" (device batch {server['device_batch_size']:.1f}, merged across front ends)"
    text += f", queue {server['mean_queue_ms']:.1f} ms, compute {server['mean_compute_ms']:.1f} ms"
    if "goodput_per_second" in result:
        text += f", goodput {result['goodput_per_second']:.1f}/s within {result['budget_ms']:g} ms"
    if result.get("refusals", {}).get("count"):
        refusals = result["refusals"]
        p50 = f"p50 {refusals['p50_ms']:.1f} ms, " if "p50_ms" in refusals else ""
        text += f", refused {refusals['count']} ({p50}p99 {refusals['p99_ms']:.1f} ms)"
    if result.get("dropped", {}).get("count"):
        text += f", dropped after admission {result['dropped']['count']} (p99 {result['dropped']['p99_ms']:.1f} ms)"
    text += "; " + cpu_text(server)
    if result.get("errors"):
        text += f", errors {result['errors']}"
    if "camera" in result:
        c = result["camera"]
        text += (f"; frames due {c['frames_due']}, answered {c['frames_answered']}, late {c['frames_late']}, "
                 f"skipped {c['frames_skipped']}, dropped {c['frames_dropped']}")
    return text


def cpu_text(server: dict) -> str:
    """The server's CPU per image (front end, workers) and payload bytes per image."""
    if "frontend_ms_per_image" not in server:
        text = "server CPU not measured (give --server-pid)"
    else:
        text = (f"server CPU per image: front end {server['frontend_ms_per_image']:.2f} ms, "
                f"workers {server['workers_ms_per_image']:.2f} ms")
    if "payload_bytes_per_image" in server:
        text += f", payload {server['payload_bytes_per_image']:.0f} B/image"
    return text


def table(summary: dict) -> str:
    rows = [f"{summary['model']} on {summary['device']} ({summary['dtype']}), input {summary['input']}, "
            f"{summary['machine']}"]
    if summary.get("baseline_images_per_second"):
        rows.append(f"in-process baseline, model alone, best batch: {summary['baseline_images_per_second']:.1f} img/s")
    if summary.get("baseline_same_work_images_per_second"):
        rows.append("in-process baseline, same decode + preprocess + model work, best batch: "
                    f"{summary['baseline_same_work_images_per_second']:.1f} img/s")
    header = f"{'point':<28} {'img/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} " \
             f"{'queue ms':>9} {'compute ms':>10} {'ratio':>6} {'same-work':>9} {'FE ms/img':>9} " \
             f"{'wk ms/img':>9} {'B/img':>9}"
    rows += ["", header]
    for r in summary["results"]:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "-"
        same = f"{r['ratio_same_work']:.3f}" if "ratio_same_work" in r else "-"
        server = r["server"]
        fe = f"{server['frontend_ms_per_image']:.2f}" if "frontend_ms_per_image" in server else "-"
        wk = f"{server['workers_ms_per_image']:.2f}" if "workers_ms_per_image" in server else "-"
        size = f"{server['payload_bytes_per_image']:.0f}" if "payload_bytes_per_image" in server else "-"
        rows.append(f"{_label(r['point']):<28} {r['images_per_second']:>9.1f} {r['requests_per_second']:>8.1f} "
                    f"{r['latency_ms']['p50']:>8.1f} {r['latency_ms']['p99']:>8.1f} "
                    f"{server['average_batch_size']:>6.1f} {server['mean_queue_ms']:>9.1f} "
                    f"{server['mean_compute_ms']:>10.1f} {ratio:>6} {same:>9} {fe:>9} {wk:>9} {size:>9}")
        if "camera" in r:
            c = r["camera"]
            rows.append(f"{'':<28} frames due {c['frames_due']}, answered {c['frames_answered']}, "
                        f"late {c['frames_late']}, skipped {c['frames_skipped']}, dropped {c['frames_dropped']}")
    return "\n".join(rows)


def decode_table(summary: dict) -> str:
    """The `decode` workload: frames per second of decode and preprocessing by batch size."""
    rows = [f"decode + preprocess on {summary['device']} ({summary['dtype']}), input {summary['input']}"
            f"{', reduced-size JPEG decoding' if summary['jpeg_draft'] else ''}, {summary['machine']}", "",
            f"{'batch':>6} {'frames/s':>10} {'ms/batch':>9}"]
    rows += [f"{p['batch_size']:>6} {p['images_per_second']:>10.1f} {p['seconds_per_batch'] * 1000:>9.2f}"
             for p in summary["decode"]]
    return "\n".join(rows)


def plot(summary: dict, path: str) -> str:
    """Throughput and p99 latency against the load; returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'framewire[bench]')"
    results = summary["results"]
    xs = [r["point"].get("clients") or r["point"].get("rate") or r["point"].get("streams") for r in results]
    xlabel = {"closed": "concurrent clients", "rate": "requests per second", "camera": "streams"}[
        results[0]["point"]["workload"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    top.plot(xs, [r["images_per_second"] for r in results], marker="o", label="served")
    if summary.get("baseline_images_per_second"):
        top.axhline(summary["baseline_images_per_second"], color="grey", linestyle="--",
                    label="in-process baseline (best batch)")
    top.set_ylabel("images / second")
    top.legend()
    top.set_title(f"{summary['model']} on {summary['device']} ({summary['dtype']}), {summary['input']}")
    bottom.plot(xs, [r["latency_ms"]["p99"] for r in results], marker="o", color="tab:red", label="p99")
    bottom.plot(xs, [r["latency_ms"]["p50"] for r in results], marker="o", color="tab:orange", label="p50")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel(xlabel)
    bottom.legend()
    if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
        bottom.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
