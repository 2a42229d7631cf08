"""The live page at the metrics listener's `/`, in a real browser, and its JSON.

A real server on the demo model and the tiny one serves steady traffic
(batches of several sizes, and some refused requests); headless Chromium
(Debian's `chromium`, driven over the DevTools pipe) opens the page and the
test reads the rendered DOM: every model's card with a non-zero throughput,
charts that keep growing, the batch-size histogram, the digests, "no GPU"
on this machine, no horizontal scrolling from a laptop to a wall screen, no
request leaving the server, and no script error. It saves a screenshot;
`make screenshot` runs it with FRAMEWIRE_PAGE_SCREENSHOT=docs/operator-page.png
(and a minute and a half of traffic first, FRAMEWIRE_PAGE_SCREENSHOT_AFTER)
to refresh the README's picture.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from framewire.client import Client, FramewireError
from support.browser import Browser
from support.images import encode, random_image
from support.server import RunningServer

MODELS = ("efficientnet_lite0", "tiny")
CHARTS = ("images", "latency", "times", "queue", "errors", "cpu", "memory")


class Traffic:
    """Steady requests to both models until `stop()`."""

    def __init__(self, address: str):
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self.thread.start()

    def _run(self, address: str) -> None:
        images = [encode(random_image(i, 96, 128)) for i in range(6)]
        with Client(address, timeout=60, retries=0) as client:
            sent = 0
            while not self.done.wait(0.1):
                sent += 1
                try:
                    client.batch_predict(images[: 1 + sent % 4], model="tiny")
                    if sent % 3 == 0:
                        client.predict(images[sent % len(images)], model="efficientnet_lite0")
                    if sent % 10 == 1:
                        client.predict(b"not an image", model="tiny")
                except FramewireError:
                    pass  # the refused ones are part of the picture

    def stop(self) -> None:
        self.done.set()
        self.thread.join(60)


@pytest.fixture(scope="module")
def served(mixed_repo):
    with RunningServer(repo=str(mixed_repo), max_batch_size=8, max_queue_delay_us=5000) as server:
        traffic = Traffic(server.address)
        try:
            yield server, f"http://127.0.0.1:{server.server.state.metrics_port}"
        finally:
            traffic.stop()


def model_figure(model: str, figure: str) -> str:
    return (f"Number((document.querySelector('article[data-model=\"{model}\"] [data-figure=\"{figure}\"]') "
            f"|| {{dataset: {{}}}}).dataset.value || 0)")


def test_the_page_shows_the_server_live_in_a_browser(served, tmp_path):
    server, base = served
    with Browser() as browser:
        page = browser.open(base + "/", width=1440, height=900)
        page.wait_for("document.body && document.body.dataset.updated", 60, "a first status")
        for model in MODELS:
            page.wait_for(f"{model_figure(model, 'images_per_second')} > 0", 90, f"{model}'s images/s above 0")

        # Live: the charts grow as samples arrive each second.
        drawn = page.evaluate("Number(document.querySelector('svg[data-chart=\"images\"]').dataset.points)")
        page.wait_for(f"Number(document.querySelector('svg[data-chart=\"images\"]').dataset.points) > {drawn}", 30,
                      "the images chart growing")
        charts = page.evaluate("Object.fromEntries([...document.querySelectorAll('svg[data-chart]')]"
                               ".map(s => [s.dataset.chart, Number(s.dataset.points || s.dataset.bars)]))")
        assert all(charts.get(name, 0) > 1 for name in CHARTS), charts
        assert all(charts.get(f"batch-sizes-{model}:1", 0) >= 1 for model in MODELS), charts
        assert page.evaluate("document.querySelectorAll('svg[data-chart=\"batch-sizes-tiny:1\"] rect').length") > 1

        cards = page.evaluate("Object.fromEntries([...document.querySelectorAll('article[data-model]')]"
                              ".map(a => [a.dataset.model, a.innerText]))")
        assert set(MODELS) <= set(cards)
        for model in server.server.repo.served():
            text = cards[model.name]
            assert "READY" in text and model.artifact.weights_sha256.hex() in text and "signer: unsigned" in text
            assert "running" in text  # its worker process
        page.wait_for("document.querySelector('article[data-model=\"tiny\"]').innerText.includes('INVALID_ARGUMENT')",
                      30, "tiny's refused requests by status")

        gpus = page.evaluate("document.getElementById('gpus').innerText")
        assert gpus.startswith("no GPU"), gpus
        assert "serving" in page.evaluate("document.getElementById('server-line').innerText")

        # Nothing but this server: no CDN, no font service.
        resources = page.evaluate("performance.getEntriesByType('resource').map(r => r.name)")
        assert resources and all(url.startswith(base + "/") for url in resources), resources

        sizes = {}
        for width, height in ((1280, 800), (3840, 2160)):
            page.resize(width, height)
            page.wait_for(f"window.innerWidth === {width}", 10)
            sizes[width] = page.evaluate("[document.documentElement.scrollWidth, "
                                         "parseFloat(getComputedStyle(document.documentElement).fontSize)]")
            assert sizes[width][0] <= width, f"the page scrolls sideways at {width} pixels"
        assert sizes[3840][1] > 1.5 * sizes[1280][1], "text must grow on a wall screen"
        page.resize(1440, 900)

        wanted = os.environ.get("FRAMEWIRE_PAGE_SCREENSHOT")
        if wanted:
            threading.Event().wait(float(os.environ.get("FRAMEWIRE_PAGE_SCREENSHOT_AFTER", "0")))
        shot = page.screenshot(Path(wanted) if wanted else tmp_path / "operator-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        assert page.errors == [], page.errors


def get(url: str, method: str = "GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_json_the_page_and_metrics_share_one_listener(served):
    server, base = served
    status, headers, body = get(base + "/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["schema"] == 1 and document["server"]["metrics_port"] == server.server.state.metrics_port
    assert {m["model"] for m in document["models"]} == set(MODELS)
    status, _, body = get(base + "/api/history")
    assert status == 200 and json.loads(body)["samples"][-1]["time"] <= document["time"] + 5
    status, headers, body = get(base + "/")
    assert status == 200 and b"/static/app.js" in body and "default-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, _ = get(f"{base}/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
    assert get(base + "/static/nope.js")[0] == 404
    assert get(base + "/static/..%2Fmetrics.py")[0] == 404
    assert get(base + "/api/status", method="POST")[0] == 405
    status, _, body = get(base + "/metrics")
    assert status == 200 and b"framewire_queue_depth" in body
