"""A real framewire server on a loopback port, for tests.

`RunningServer` runs `FramewireServer` in a background thread with its own
event loop (so tests can use the blocking client); `ServerProcess` runs the
real `framewire serve` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from framewire.service.config import ServeConfig


class RunningServer:
    """FramewireServer on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, *, nvml=None, **settings):
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("device", "cpu")
        settings.setdefault("poll_seconds", 0)
        settings.setdefault("drain_seconds", 5)
        settings.setdefault("metrics_port", 0)
        # One worker per model keeps the suite quick; ServerProcess runs the CLI's defaults (auto: two on the CPU).
        settings.setdefault("instances_per_device", 1)
        self.config = ServeConfig(**settings).validate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from framewire.service.server import FramewireServer

        async def build():
            server = FramewireServer(self.config, nvml=nvml)
            await server.start()
            return server

        self.server = self.call(build(), timeout=300)
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.state.metrics_port}/metrics"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def poll(self) -> None:
        """Rescan the repository now."""
        self.call(self.server.repo.poll_once(), timeout=300)

    def stop(self, grace: float = 2, timeout: float = 60) -> None:
        """Drain (in-flight calls get `grace` seconds) and stop; raises
        TimeoutError when that takes longer than `timeout`."""
        try:
            self.call(self.server.stop(grace), timeout=timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess:
    """`framewire serve ... --port 0` in a subprocess; learns its port from the log.

    `port` binds a given port instead (to restart a server where its clients
    expect it). With `wait_serving=False` it returns once the port listens. `argv` replaces the whole command (e.g. `make serve`); it must
    still start a server on 127.0.0.1 port 0.
    """

    def __init__(self, *args: str, env: dict | None = None, ready_timeout: float = 180,
                 argv: list[str] | None = None, cwd: str | None = None, port: int = 0, wait_serving: bool = True):
        framewire = shutil.which("framewire")
        assert framewire, "the framewire console script is not installed"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"framewire-serve-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+")
        command = argv or [framewire, "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *args]
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=cwd, start_new_session=True,
        )
        self.port = self._wait_for(r"listening on 127\.0\.0\.1:(\d+)", ready_timeout)
        self.address = f"127.0.0.1:{self.port}"
        if wait_serving:  # else only listening: models may still be loading
            self._wait_for(r"serving: ", ready_timeout)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def _wait_for(self, pattern: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return int(match.group(1)) if match.groups() else 0
            if self.proc.poll() is not None:
                raise RuntimeError(f"framewire serve exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise TimeoutError(f"framewire serve did not log {pattern!r} in {timeout}s:\n{self.output()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the whole process group (make and the server it started)."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
        self.log_path.unlink(missing_ok=True)
