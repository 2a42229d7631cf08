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
            f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, server batch {server['average_batch_size']:.1f}, "
            f"queue {server['mean_queue_ms']:.1f} ms, compute {server['mean_compute_ms']:.1f} ms")
    if "goodput_per_second" in result:
        text += f", goodput {result['goodput_per_second']:.1f}/s within {result['budget_ms']:g} ms"
    if result.get("refusals", {}).get("count"):
        text += f", refused {result['refusals']['count']} (p99 {result['refusals']['p99_ms']:.1f} ms)"
    if result.get("errors"):
        text += f", errors {result['errors']}"
    if "camera" in result:
        c = result["camera"]
        text += (f"; frames due {c['frames_due']}, answered {c['frames_answered']}, late {c['frames_late']}, "
                 f"skipped {c['frames_skipped']}, dropped {c['frames_dropped']}")
    return text


def table(summary: dict) -> str:
    rows = [f"{summary['model']} on {summary['device']} ({summary['dtype']}), input {summary['input']}, "
            f"{summary['machine']}"]
    if summary.get("baseline_images_per_second"):
        rows.append(f"in-process baseline, best batch: {summary['baseline_images_per_second']:.1f} img/s")
    header = f"{'point':<28} {'img/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} " \
             f"{'queue ms':>9} {'compute ms':>10} {'ratio':>6}"
    rows += ["", header]
    for r in summary["results"]:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "-"
        rows.append(f"{_label(r['point']):<28} {r['images_per_second']:>9.1f} {r['requests_per_second']:>8.1f} "
                    f"{r['latency_ms']['p50']:>8.1f} {r['latency_ms']['p99']:>8.1f} "
                    f"{r['server']['average_batch_size']:>6.1f} {r['server']['mean_queue_ms']:>9.1f} "
                    f"{r['server']['mean_compute_ms']:>10.1f} {ratio:>6}")
        if "camera" in r:
            c = r["camera"]
            rows.append(f"{'':<28} frames due {c['frames_due']}, answered {c['frames_answered']}, "
                        f"late {c['frames_late']}, skipped {c['frames_skipped']}, dropped {c['frames_dropped']}")
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
