"""Headless Chromium driven over the DevTools protocol, from Python alone.

Chromium's `--remote-debugging-pipe` speaks the protocol on file descriptors
3 (commands in) and 4 (replies and events out), NUL-separated JSON: no
websocket client, no node, no port to find. `Browser.open(url)` attaches to
a fresh page and records every script exception, console error and log
error the page produces (`page.errors`), so a test can assert there were none.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

#: Flags for a quiet, offline, throwaway browser in a container.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)


class BrowserError(Exception):
    """The browser answered a command with an error, or went away."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("chromium is not installed: apt-get install -y chromium (.ci/run does)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="framewire-chromium-")
        commands_read, commands_write = os.pipe()
        events_read, events_write = os.pipe()
        # Chromium expects the pipe on fds 3 and 4 exactly; the shell puts them
        # there (bash: POSIX sh only redirects fds 0-9). Copies above 100
        # cannot collide with 3 and 4 while it does.
        child_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 100)
        child_out = fcntl.fcntl(events_write, fcntl.F_DUPFD, 100)
        for fd in (commands_read, events_write):
            os.close(fd)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-',
             executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(child_in, child_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(child_in)
        os.close(child_out)
        self._out = os.fdopen(commands_write, "wb", buffering=0)
        self._in = os.fdopen(events_read, "rb", buffering=0)
        self._next_id = 0
        self._pending: dict[int, Future] = {}
        self._listeners: list = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="chromium-events", daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")["product"]

    def _read(self) -> None:
        buffer = b""
        while chunk := self._in.read(65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None:
                        future.set_result(message)
                else:
                    for listener in list(self._listeners):
                        listener(message)
        for future in list(self._pending.values()):
            future.set_exception(BrowserError("chromium exited"))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            future: Future = Future()
            self._pending[ident] = future
            message = {"id": ident, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            self._out.write(json.dumps(message).encode() + b"\0")
        reply = future.result(self.timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def open(self, url: str, width: int = 1440, height: int = 900) -> "Page":
        """A new page showing `url`, its errors recorded from the start."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._listeners.append(page._event)
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(domain, session=session)
        page.resize(width, height)
        self.send("Page.navigate", {"url": url}, session=session)
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
            self.proc.wait(20)
        except Exception:  # closing must not hide the test's own failure
            self.proc.kill()
            self.proc.wait(10)
        finally:
            self._out.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One attached page: evaluate script, wait on conditions, take screenshots."""

    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session
        #: Script exceptions, console errors and browser log errors, as text.
        self.errors: list[str] = []

    def _event(self, message: dict) -> None:
        if message.get("sessionId") != self.session:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, session=self.session)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = ""):
        """Poll `expression` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {what or expression} in {timeout:.0f}s; errors: {self.errors}")
            time.sleep(0.2)

    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (all of it, not only the viewport, by default)."""
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
