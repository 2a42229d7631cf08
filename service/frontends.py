"""Several front-end processes on one port (`--frontends N`).

One Python process answers at most a few hundred to a thousand requests a
second: gRPC, protobuf parsing, checks, auth and batching share one
interpreter. With `--frontends N` the `serve` command becomes a supervisor:

```
clients ──► port P (SO_REUSEPORT: the kernel spreads connections)
             ├─ front end 1 ─┐  each: gRPC, parsing, checks, auth, header
             ├─ front end 2 ─┤  checks, its own batcher per model version
             └─ ...          │  Unix socket + shared memory per front end
                             ▼
            worker processes per device (started by the supervisor)
              load each artifact once, merge the front ends' pending
              batches of one model into one forward pass
```

The supervisor binds the port first (a socket with SO_REUSEPORT that never
listens, so port 0 resolves once and every front end binds the same port),
starts the worker processes (each listening on a Unix socket in a runtime
directory, `device_workers.worker_socket`) and N front ends, each the same
`framewire serve` command line with `--frontends 1 --port P`. It:

* restarts a front end that exits, alone: the others keep serving, and its
  clients reconnect to them (their streams end with the connection);
* restarts a worker that dies; every front end reattaches and reloads its
  versions there, which the worker loads once;
* forwards SIGTERM/SIGINT (drain: every front end answers what is in
  flight, then exits) and SIGHUP (tokens re-read) to every front end;
* serves the one `/metrics` on `--metrics-port`: the sum over the front ends
  (`metrics_merge`); other paths of that listener (the operator's page) are
  the first ready front end's.

Each front end polls the repository and applies the version policy itself:
the same files and policy give the same versions everywhere, within one
`--poll-seconds`. A repository RPC (RepositoryModelLoad/Unload) runs on the
front end it reaches, which passes it on to the others (`pass_on`, over
their private Unix sockets); GetServerStatus and the operator page merge
every front end's status document (`whole_server_status`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .config import ServeConfig, frontend_count
from .device_workers import WORKER_COMMAND, worker_socket
from .frontend_peers import FRONTEND_ENV, METRICS_PORT_ENV, fetch_documents, ready_file
from .ipc import FRONT_END_PID, RUNTIME_DIR, WORKER_SOCKET

log = logging.getLogger("framewire.frontends")

#: How often the supervisor looks at its children.
CHECK_SECONDS = 0.2
#: A child that exits sooner than this after its start is restarted no faster than this.
RESTART_BACKOFF_SECONDS = 1.0


def serve_argv(argv: list[str] | None = None) -> list[str]:
    """The arguments given to `serve` (what every front end is started with)."""
    argv = sys.argv if argv is None else argv
    return argv[argv.index("serve") + 1:] if "serve" in argv else argv[1:]


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket holding `port` (0: a free
    one) for the front ends to bind beside it."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]") if host != "localhost" else "127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                      "(0: any free port) or --host") from None
    return sock


#: Resolves --device/--dtype in a child process: the supervisor never imports torch (~300 MB).
_PLAN_SCRIPT = (
    "import json, sys\n"
    "from framewire.service.config import ConfigError\n"
    "from framewire.service.devices import plan_devices\n"
    "try:\n"
    "    plan = plan_devices(sys.argv[1], sys.argv[2])\n"
    "except ConfigError as exc:\n"
    "    print(json.dumps({'error': str(exc)}))\n"
    "else:\n"
    "    print(json.dumps({'devices': list(plan.devices), 'on_cuda': plan.on_cuda}))\n"
)


def device_plan(config: ServeConfig) -> tuple[list[str], bool]:
    """(devices, on CUDA) as the front ends will plan them, from a child process."""
    from .config import ConfigError

    done = subprocess.run([sys.executable, "-c", _PLAN_SCRIPT, config.device, config.dtype], capture_output=True,
                          text=True, timeout=300)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ConfigError(f"cannot plan the devices (--device {config.device}): {done.stderr.strip()[-2000:]}") from None
    if "error" in answer:
        raise ConfigError(answer["error"])
    return answer["devices"], answer["on_cuda"]


class _Child:
    """A process the supervisor keeps running."""

    def __init__(self, name: str, start):
        self.name = name
        self._start = start
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.restarts = 0

    def start(self) -> None:
        self.proc = self._start()
        self.started = time.monotonic()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


class Supervisor:
    """Front ends and worker processes of one server; see the module doc."""

    def __init__(self, config: ServeConfig, argv: list[str], count: int | None = None):
        self.config = config
        self.argv = list(argv)
        self.count = count or frontend_count(config)
        self.runtime = Path(tempfile.mkdtemp(prefix="framewire-"))
        self.stopping = threading.Event()
        self.workers: list[_Child] = []
        self.frontends: list[_Child] = []
        self.port = 0
        self.metrics_port = 0
        self._http: ThreadingHTTPServer | None = None
        self._ready: dict[int, dict] = {}
        self._serving = False
        self._last_metrics: dict[str, str] = {}
        #: The last counts of front ends that have exited (metrics_merge.cumulative_only), kept in the sums.
        self._retired = ""
        self._metrics_lock = threading.Lock()
        #: A front end failed to start: the server exits 2, as one front end would.
        self.failed = False

    # ------------------------------------------------------------ children

    def _worker_children(self) -> list[_Child]:
        from .config import instance_plan

        devices, on_cuda = device_plan(self.config)
        instances, _ = instance_plan(self.config, on_cuda)
        per_device = 1 if on_cuda else instances
        children = []
        for device in devices:
            for index in range(per_device):
                path = worker_socket(self.runtime, device, index)
                children.append(_Child(f"worker {device}/{index}", self._worker_starter(device, index, path)))
        return children

    def _worker_starter(self, device: str, index: int, path: Path):
        def start() -> subprocess.Popen:
            env = {**os.environ, WORKER_SOCKET: str(path), FRONT_END_PID: str(os.getpid())}
            # Its own session: a load that overruns its budget kills the worker's process group.
            proc = subprocess.Popen([*WORKER_COMMAND, device, f"worker-{index}"], stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
            if self.config.worker_nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, self.config.worker_nice)
            return proc
        return start

    def _frontend_starter(self, index: int):
        def start() -> subprocess.Popen:
            ready_file(self.runtime, index).unlink(missing_ok=True)
            extra = ["--frontends", "1", "--port", str(self.port)]
            if self.config.metrics_port >= 0:  # each front end's own, on loopback; the supervisor serves the sum
                extra += ["--metrics-port", "0", "--metrics-host", "127.0.0.1"]
            env = {**os.environ, FRONTEND_ENV: f"{index}/{self.count}", RUNTIME_DIR: str(self.runtime),
                   FRONT_END_PID: str(os.getpid()), METRICS_PORT_ENV: str(self.metrics_port)}
            return subprocess.Popen([sys.executable, "-m", "framewire", "serve", *self.argv, *extra], env=env,
                                    stdin=subprocess.DEVNULL)
        return start

    def _keep_running(self, children: list[_Child]) -> None:
        for child in children:
            code = child.exited()
            if code is None or self.stopping.is_set():
                continue
            if child in self.frontends and not self._serving:
                # It never came up: its start-up error (logged above) is the server's.
                log.error("%s exited with code %s while starting; stopping", child.name, code)
                self.failed = True
                self.stopping.set()
                return
            if time.monotonic() - child.started < RESTART_BACKOFF_SECONDS:
                continue  # one that dies at once is started again at most once a second
            child.restarts += 1
            log.warning("%s (pid %d) exited with code %s; starting it again (restart %d)", child.name,
                        child.proc.pid, code, child.restarts)
            if child in self.frontends:
                self._retire(self.frontends.index(child) + 1)
            child.start()

    # ------------------------------------------------------------ running

    def run(self) -> int:
        """Start everything, keep it running until SIGTERM/SIGINT, then drain; the exit code."""
        from .repository import ModelRepository

        ModelRepository(self.config, build=None).check_contents()  # the one-line start-up error, before anything
        reserved = reserve_port(self.config.host, self.config.port)
        self.port = reserved.getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        if self.config.tokens_file:
            signal.signal(signal.SIGHUP, lambda *_: self._signal_frontends(signal.SIGHUP))
        try:
            if self.config.metrics_port >= 0:
                self._serve_metrics()
            self.workers = self._worker_children()
            for child in self.workers:
                child.start()
            self.frontends = [_Child(f"front end {i}/{self.count}", self._frontend_starter(i))
                              for i in range(1, self.count + 1)]
            for child in self.frontends:
                child.start()
            log.info("supervising %d front end(s) on %s:%d and %d worker process(es) (runtime directory %s)",
                     self.count, self.config.host, self.port, len(self.workers), self.runtime)
            while not self.stopping.wait(CHECK_SECONDS):
                self._keep_running(self.workers)
                self._keep_running(self.frontends)
                self._note_ready()
            if self.failed:
                return 2
            log.info("signal received; draining %d front end(s)", self.count)
            return self._drain()
        finally:
            self._kill_all()
            reserved.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            shutil.rmtree(self.runtime, ignore_errors=True)

    def _note_ready(self) -> None:
        for index in range(1, self.count + 1):
            path = ready_file(self.runtime, index)
            try:
                self._ready[index] = json.loads(path.read_text())
            except (OSError, ValueError):
                self._ready.pop(index, None)
        if not self._serving and len(self._ready) == self.count:
            self._serving = True
            summary = self._ready[min(self._ready)]["summary"]
            log.info("%s (%d front ends)", summary, self.count)

    def _signal_frontends(self, sig: int) -> None:
        for child in self.frontends:
            if child.exited() is None:
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _drain(self) -> int:
        self._signal_frontends(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_seconds + 30
        codes = []
        for child in self.frontends:
            try:
                codes.append(child.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                codes.append(child.proc.wait())
        log.info("stopped")
        return 0 if all(code == 0 for code in codes) else 1

    def _kill_all(self) -> None:
        for child in [*self.frontends, *self.workers]:
            if child.exited() is None:
                child.proc.kill()
                child.proc.wait()

    # ------------------------------------------------------------ metrics

    def frontend_urls(self, path: str) -> list[str]:
        return [f"http://127.0.0.1:{ready['metrics_port']}{path}" for _, ready in sorted(self._ready.items())
                if ready.get("metrics_port")]

    def _serve_metrics(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                headers: list = []
                path = self.path.split("?")[0]
                if path in ("/metrics", "/metrics/"):
                    body, content_type, status = supervisor._merged_metrics()
                elif path == "/api/status":
                    body, content_type, status = supervisor._merged_status()
                else:
                    body, content_type, status, headers = supervisor._proxied(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        try:
            self._http = ThreadingHTTPServer((self.config.metrics_host, self.config.metrics_port), Handler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.config.metrics_host}:{self.config.metrics_port}: "
                          f"{exc.strerror or exc}; pick another --metrics-port (0: any free port, -1: off)") from None
        self._http.daemon_threads = True
        self.metrics_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics at http://%s:%d/metrics (the sum over the front ends)", self.config.metrics_host,
                 self.metrics_port)

    def _retire(self, index: int) -> None:
        """Front end `index` has exited: its last counts stay in the sums (a
        restarted front end counts from zero; Prometheus would read the dip
        as a counter reset and over-count every rate)."""
        from .metrics_merge import cumulative_only, merge_expositions

        ready = self._ready.pop(index, None)
        ready_file(self.runtime, index).unlink(missing_ok=True)
        if not ready or not ready.get("metrics_port"):
            return
        with self._metrics_lock:
            last = self._last_metrics.pop(f"http://127.0.0.1:{ready['metrics_port']}/metrics", "")
            counts = cumulative_only(last) if last else ""
            if counts:
                self._retired = merge_expositions([self._retired, counts]) if self._retired else counts

    def _merged_metrics(self) -> tuple[bytes, str, int]:
        from .metrics_merge import CONTENT_TYPE, fetch_and_merge

        # A front end that misses one scrape counts with its last answer, and one that has exited with its
        # last counts: the sums never step back.
        with self._metrics_lock:
            merged, errors = fetch_and_merge(self.frontend_urls("/metrics"), timeout=5.0, cache=self._last_metrics,
                                             retired=self._retired)
        for error in errors:
            log.warning("metrics: %s", error)
        return merged.encode(), CONTENT_TYPE, 200

    def _merged_status(self) -> tuple[bytes, str, int]:
        """The whole server's status document (status_merge), for the operator's page."""
        from .status_merge import merge_status

        documents = fetch_documents(self.frontend_urls("/api/status"), timeout=2.0)
        body = json.dumps(merge_status(documents), separators=(",", ":")).encode()
        return body, "application/json", 200

    def _proxied(self, path: str) -> tuple[bytes, str, int, list]:
        """The operator's page and its JSON: the first front end that answers."""
        for url in self.frontend_urls(path):
            try:
                with urllib.request.urlopen(url, timeout=5.0) as answer:
                    return (answer.read(), answer.headers.get("Content-Type", "text/plain"), answer.status,
                            [(k, v) for k, v in answer.headers.items() if k.lower() in _KEPT_HEADERS])
            except urllib.error.HTTPError as exc:
                return exc.read(), exc.headers.get("Content-Type", "text/plain"), exc.code, []
            except OSError:
                continue
        return b"no front end is ready yet\n", "text/plain; charset=utf-8", 503, []


#: Headers of a front end's page that the supervisor passes on.
_KEPT_HEADERS = {"content-security-policy", "x-content-type-options", "cache-control"}


def supervise(config: ServeConfig, argv: list[str]) -> int:
    """Run `framewire serve` as a supervisor of front ends (see the module doc)."""
    return Supervisor(config, argv).run()
