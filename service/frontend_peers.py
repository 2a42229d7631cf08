"""What a front end started by the supervisor (`frontends`) does with the
supervisor and with the other front ends.

* `frontend_label()` says whether this process is one ("index/count").
* It tells the supervisor it is up in a ready file of the runtime directory
  (`announce_ready`: its pid, its own metrics port, its serving line), and
  stops once the supervisor is gone (`watch_supervisor`).
* `whole_server_status` merges its status document with its peers' (read
  from their loopback listeners), so that GetServerStatus answers for the
  whole server.
* `pass_on` makes a repository call it just ran on every other front end,
  over their private Unix sockets (`peer_socket`), with the caller's token.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from pathlib import Path

from .ipc import FRONT_END_PID, RUNTIME_DIR

log = logging.getLogger("framewire.frontends")

#: In a front end the supervisor started: "index/count" (index from 1).
FRONTEND_ENV = "FRAMEWIRE_FRONTEND"
#: In a front end: the supervisor's /metrics port (what GetServerStatus reports to operators).
METRICS_PORT_ENV = "FRAMEWIRE_SUPERVISOR_METRICS_PORT"

def frontend_label() -> str | None:
    """"i/N" in a front end the supervisor started, else None."""
    return os.environ.get(FRONTEND_ENV) or None


def supervisor_metrics_port() -> int:
    """In a front end: the port of the supervisor's merged /metrics (0: none)."""
    return int(os.environ.get(METRICS_PORT_ENV) or 0) if frontend_label() else 0


def ready_file(runtime_dir: str | Path, index: int) -> Path:
    """Where front end `index` says it is up: {"pid", "metrics_port", "summary"}."""
    return Path(runtime_dir) / f"frontend-{index}.json"


def announce_ready(pid: int, metrics_port: int, summary: str) -> None:
    """In a front end: tell the supervisor it serves (written atomically)."""
    runtime, label = os.environ.get(RUNTIME_DIR), frontend_label()
    if not runtime or not label:
        return
    path = ready_file(runtime, int(label.split("/")[0]))
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": pid, "metrics_port": metrics_port, "summary": summary}))
    os.replace(temporary, path)


def fetch_documents(urls: list[str], timeout: float) -> list[dict | None]:
    """The JSON each URL answers (None for one that does not), fetched at once."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(url: str) -> dict | None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(fetch, urls))


def whole_server_status(own: bytes, timeout: float = 1.0) -> bytes:
    """In a front end the supervisor started: the status document of the
    whole server, this front end's own merged with its peers' (read from
    their loopback listeners; one that does not answer in `timeout` counts
    as missing). Elsewhere: `own`."""
    runtime = os.environ.get(RUNTIME_DIR)
    if not runtime or not frontend_label():
        return own
    from .status_merge import merge_status

    peers = []
    for path in sorted(Path(runtime).glob("frontend-*.json")):
        try:
            ready = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if ready.get("pid") != os.getpid() and ready.get("metrics_port"):
            peers.append(f"http://127.0.0.1:{ready['metrics_port']}/api/status")
    try:
        mine = json.loads(own)
    except ValueError:
        mine = None
    return json.dumps(merge_status([mine, *fetch_documents(peers, timeout)]), separators=(",", ":")).encode()


#: Metadata on a repository call that one front end passes on to the others (they do not pass it on).
FORWARDED_KEY = "x-framewire-forwarded"
#: Metadata a passed-on call keeps (the caller's token: each front end checks it; the request id).
_PASSED_METADATA = ("authorization", "x-request-id")


def peer_socket(runtime_dir: str | Path, index: int) -> Path:
    """Where front end `index` also serves gRPC for the others (the runtime directory is private, 0700)."""
    return Path(runtime_dir) / f"frontend-{index}.grpc"


def own_peer_socket() -> Path | None:
    """In a front end the supervisor started: its socket for the others."""
    runtime, label = os.environ.get(RUNTIME_DIR), frontend_label()
    return peer_socket(runtime, int(label.split("/")[0])) if runtime and label else None


async def pass_on(method: str, request, response_type, context, timeout: float) -> None:
    """In a front end: make the repository call just done here (`method`, its
    full gRPC name) on every other front end too, with the caller's token, so
    that a load or unload holds for the whole server. Raises the first
    failure, naming the front end, as the error it was; a call that was
    itself passed on, or one outside --frontends, goes no further."""
    import asyncio

    import grpc

    from .errors import error_from_code

    runtime, label = os.environ.get(RUNTIME_DIR), frontend_label()
    incoming = tuple(context.invocation_metadata() or ())
    if not runtime or not label or any(key == FORWARDED_KEY for key, _ in incoming):
        return
    index, count = (int(part) for part in label.split("/"))
    metadata = (*((k, v) for k, v in incoming if k in _PASSED_METADATA), (FORWARDED_KEY, str(index)))

    async def one(peer: int):
        async with grpc.aio.insecure_channel(f"unix:{peer_socket(runtime, peer)}") as channel:
            call = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                       response_deserializer=response_type.FromString)
            try:
                await call(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return peer, exc
        return peer, None

    results = await asyncio.gather(*(one(peer) for peer in range(1, count + 1) if peer != index))
    for peer, exc in results:
        if exc is not None:
            raise error_from_code(exc.code().name, f"done on front end {index}/{count}, but front end "
                                  f"{peer}/{count} answered {exc.code().name}: {exc.details()}")


def watch_supervisor(stop) -> None:
    """In a front end: call `stop()` once the supervisor that started it is gone."""
    supervisor = int(os.environ.get(FRONT_END_PID) or os.getppid())

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        log.warning("the supervisor (pid %d) is gone; this front end stops", supervisor)
        stop()

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
