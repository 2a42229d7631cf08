"""Batch scoring: many image files through one or more framewire servers,
exactly once, resumably.

    from framewire.score import discover_images, score_images

    summary = score_images(discover_images("photos/"), model="efficientnet_lite0",
                           servers="10.0.0.5:8500,10.0.0.6:8500", out="results.jsonl")
    print(summary.render())

Files are read by `concurrency` worker threads and sent in `BatchPredict`
requests of `batch_size` images, spread round robin over the servers (one
channel each, from `framewire.connection.Connection`). A batch that fails
with UNAVAILABLE (a dead, restarting or full server) is retried on another
server after a backoff (`framewire.connection.RetryPolicy`), up to
`max_attempts` attempts; DEADLINE_EXCEEDED is retried once. A batch the
server refuses as a whole (INVALID_ARGUMENT: one bad file; RESOURCE_EXHAUSTED:
too large; INTERNAL: the model failed on it) is scored again one image at a time, so only the bad file gets an
error row. The output (see `framewire.results_file`) gets a row per image
once that image is done; images already in it are skipped.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import grpc

from framewire.client import predict_options, prediction_from
from framewire.connection import Connection, FramewireError, LocalRpcError, RetryPolicy
from framewire.results_file import ResultsFile, error_row, scored_row
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc
from framewire.v1.options import DEFAULT_TOP_K

log = logging.getLogger("framewire.score")

#: Codes after which a whole batch is scored again one image at a time.
SPLIT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         grpc.StatusCode.INTERNAL})


class ScoreError(RuntimeError):
    """Scoring cannot start (no server answers, the model is served nowhere)."""


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """`"a:8500,b:8500"` or a list of addresses as a list of addresses."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = [s.strip() for s in items if s and s.strip()]
    if not addresses:
        raise ValueError("no server given; pass --server HOST:PORT[,HOST:PORT...]")
    return list(dict.fromkeys(addresses))


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    total: int = 0                 # distinct images named by the source
    skipped: int = 0               # already in the output before this run
    scored: int = 0                # scored in this run
    failed: int = 0                # reported with an error in this run
    remaining: int = 0             # neither in the output nor done (--limit, interrupted)
    errors: Counter = field(default_factory=Counter)   # failure reason -> images
    servers: Counter = field(default_factory=Counter)  # server -> images it scored
    retries: int = 0               # batch attempts that were retried
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.scored + self.failed

    @property
    def images_per_second(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"scored {self.scored}, failed {self.failed}, skipped {self.skipped} already in the output"
            + (f", {self.remaining} left for a later run" if self.remaining else ""),
            f"{self.done} images in {self.elapsed_s:.1f} s ({self.images_per_second:.1f} images/s)"
            + (f", {self.retries} batch retries" if self.retries else ""),
        ]
        if self.servers:
            lines.append("served by: " + ", ".join(f"{s} {n}" for s, n in sorted(self.servers.items())))
        if self.errors:
            lines.append("failures:")
            lines.extend(f"  {n:>7}  {reason}" for reason, n in self.errors.most_common())
        if self.interrupted:
            lines.append("interrupted: run the same command again to score the rest")
        return "\n".join(lines)


def failure_reason(error: str) -> str:
    """An error message without what varies per image, to group failures."""
    reason = re.sub(r"^([A-Z_]+: )images\[\d+\]: ", r"\1", error)
    reason = re.sub(r" \(after \d+ attempts, last on [^)]*\)$", "", reason)
    reason = re.sub(r"\([^()]*\)", "(...)", reason)
    return reason[:160]


class _Replica:
    def __init__(self, connection: Connection, rotation: int):
        self.connection = connection
        self.address = connection.target
        self.rotation = rotation
        self.channel = connection.channel()
        self.stub = inference_pb2_grpc.ModelInferenceStub(self.channel)
        self.failures = 0
        self.down_until = 0.0


class ReplicaSet:
    """One channel per server, picked round robin; a server that just failed
    sits out a cool-down (doubling while it keeps failing) and a retry never
    goes back to the server it failed on while there is another."""

    def __init__(self, connections: Sequence[Connection], *, cooldown: float = 0.5, max_cooldown: float = 10.0):
        self.replicas = [_Replica(c, i) for i, c in enumerate(connections)]
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._next = 0
        self._lock = threading.Lock()

    def pick(self, avoid: _Replica | None = None) -> _Replica:
        with self._lock:
            now = time.monotonic()
            n = len(self.replicas)
            order = [self.replicas[(self._next + i) % n] for i in range(n)]
            others = [r for r in order if r is not avoid] or order
            chosen = next((r for r in others if r.down_until <= now), None)
            if chosen is None:  # every other server is cooling down: the one back soonest
                chosen = min(others, key=lambda r: r.down_until)
            self._next = (chosen.rotation + 1) % n
            return chosen

    def failed(self, replica: _Replica, why: str) -> None:
        with self._lock:
            replica.failures += 1
            delay = min(self.max_cooldown, self.cooldown * 2 ** (replica.failures - 1))
            replica.down_until = time.monotonic() + delay
            first = replica.failures == 1
        if first:
            log.warning("server %s failed (%s); sending its work to the others", replica.address, why)

    def succeeded(self, replica: _Replica) -> None:
        if replica.failures:
            with self._lock:
                replica.failures, replica.down_until = 0, 0.0
            log.warning("server %s answers again", replica.address)

    def remove(self, replica: _Replica) -> None:
        with self._lock:
            self.replicas.remove(replica)
            for i, r in enumerate(self.replicas):
                r.rotation = i
            self._next = 0
        replica.channel.close()

    def close(self) -> None:
        for replica in self.replicas:
            replica.channel.close()


class _BatchFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


class BatchScorer:
    """Scores the images of a run; `run()` is what `score_images` calls."""

    def __init__(self, *, model: str, servers: str | Sequence[str], out: str | Path, version: int = 0,
                 batch_size: int = 32, concurrency: int = 4, top_k: int = DEFAULT_TOP_K,
                 score_threshold: float | None = None, max_detections: int = 0, fmt: str | None = None,
                 timeout: float = 60.0, max_attempts: int = 5, backoff: float = 0.1,
                 limit: int | None = None, retry_failed: bool = False, progress: bool = False,
                 fsync_seconds: float = 1.0, wait_ready: float = 30.0,
                 on_batch: Callable[[ScoreSummary], None] | None = None, **connection_options):
        for name, value, least in (("batch_size", batch_size, 1), ("concurrency", concurrency, 1),
                                   ("max_attempts", max_attempts, 1), ("top_k", top_k, 1)):
            if value < least:
                raise ValueError(f"{name}={value} is too small; at least {least}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit={limit} must not be negative")
        if timeout <= 0:
            raise ValueError(f"timeout={timeout} must be positive (seconds)")
        self.model, self.version = model, version
        self.addresses = parse_servers(servers)
        self.out, self.fmt = out, fmt
        self.batch_size, self.concurrency = batch_size, concurrency
        self.connections = [Connection(address, **connection_options) for address in self.addresses]
        self.options = predict_options(top_k, score_threshold, max_detections)
        self.timeout = timeout
        self.retry = RetryPolicy(attempts=max_attempts, backoff=backoff,
                                 once_codes=frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}))
        self.limit, self.retry_failed, self.progress = limit, retry_failed, progress
        self.fsync_seconds = fsync_seconds
        self.wait_ready = wait_ready
        self.on_batch = on_batch
        self.summary = ScoreSummary()
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()

    # --- the run --------------------------------------------------------------------------

    def run(self, paths: Iterable[str | Path]) -> ScoreSummary:
        start = time.monotonic()
        names = list(dict.fromkeys(str(p) for p in paths))
        summary = self.summary
        summary.total = len(names)
        results = ResultsFile(self.out, self.fmt, fsync_seconds=self.fsync_seconds)
        done = results.open(drop_errors=self.retry_failed)
        try:
            todo = [p for p in names if p not in done]
            summary.skipped = len(names) - len(todo)
            if self.limit is not None:
                todo = todo[: self.limit]
            summary.remaining = len(names) - summary.skipped
            if todo:
                self._score(todo, results)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            self._stopping.set()
            results.close()
            summary.elapsed_s = time.monotonic() - start
        return summary

    def _score(self, todo: list[str], results: ResultsFile) -> None:
        replicas = ReplicaSet(self.connections)
        try:
            self._check_model(replicas)
            work: queue.Queue = queue.Queue()
            answers: queue.Queue = queue.Queue()
            batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
            for batch in batches:
                work.put(batch)
            workers = [threading.Thread(target=self._work, args=(replicas, work, answers), daemon=True,
                                        name=f"framewire-score-{i}")
                       for i in range(min(self.concurrency, len(batches)))]
            for worker in workers:
                work.put(None)
                worker.start()
            with _progress_bar(len(todo), self.progress) as bar:
                for _ in batches:
                    answer = answers.get()
                    if isinstance(answer, BaseException):
                        raise answer
                    rows, served = answer
                    results.write(rows)
                    self._count(rows)
                    self.summary.servers.update(served)
                    bar.update(len(rows))
                    if self.summary.failed:
                        bar.set_postfix(failed=self.summary.failed, refresh=False)
                    if self.on_batch is not None:
                        self.on_batch(self.summary)
        finally:
            self._stopping.set()
            replicas.close()

    def _count(self, rows: list[dict]) -> None:
        summary = self.summary
        summary.remaining -= len(rows)
        for row in rows:
            if row["error"]:
                summary.failed += 1
                summary.errors[failure_reason(row["error"])] += 1
            else:
                summary.scored += 1

    def _check_model(self, replicas: ReplicaSet) -> None:
        """Ask the servers for the model before sending images: wait up to
        `wait_ready` seconds for one to serve it (servers may be starting),
        fail fast when every server answers that it does not know the model,
        and leave out the servers that do not."""
        request = pb.GetModelRequest(model=self.model, version=self.version)
        deadline = time.monotonic() + self.wait_ready
        failures: dict[str, tuple[Connection, grpc.RpcError]] = {}
        serving: list[str] = []

        def ask_every_server() -> None:
            failures.clear()
            serving.clear()
            for replica in list(replicas.replicas):
                try:
                    replica.stub.GetModel(request, timeout=min(self.timeout, 10.0),
                                          metadata=replica.connection.call_metadata)
                    replicas.succeeded(replica)
                    serving.append(replica.address)
                    continue
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    failures[replica.address] = (replica.connection, exc)
                if code == grpc.StatusCode.NOT_FOUND and len(replicas.replicas) > 1:
                    log.warning("server %s does not serve the model (%s); leaving it out", replica.address, details)
                    replicas.remove(replica)
                elif code != grpc.StatusCode.NOT_FOUND:
                    replicas.failed(replica, f"{code.name}: {details}")
            unknown = all(exc.code() == grpc.StatusCode.NOT_FOUND for _, exc in failures.values())
            if not serving and not unknown:  # servers may be starting: ask again until `wait_ready` is up
                raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, "no server serves the model yet")

        try:
            RetryPolicy(attempts=None, backoff=0.25, max_backoff=1.0).run(
                ask_every_server, on_retry=lambda error, delay: time.monotonic() < deadline,
                sleep=lambda delay: time.sleep(min(delay, max(0.0, deadline - time.monotonic()))))
        except LocalRpcError:
            pass
        if serving:
            return
        listed = "; ".join(f"{address}: {connection.error(exc)}" for address, (connection, exc) in failures.items())
        raise ScoreError(f"no server can score with model {self.model!r}: {listed}")

    # --- worker threads -------------------------------------------------------------------

    def _work(self, replicas: ReplicaSet, work: queue.Queue, answers: queue.Queue) -> None:
        while not self._stopping.is_set():
            batch = work.get()
            if batch is None:
                return
            try:
                answer = self._score_batch(replicas, batch)
            except BaseException as exc:  # hand it to the main thread; never lose it silently
                answers.put(exc)
                return
            answers.put(answer)

    def _score_batch(self, replicas: ReplicaSet, paths: list[str]) -> tuple[list[dict], Counter]:
        """A row per path, in order, and how many images each server scored."""
        rows: dict[str, dict] = {}
        served: Counter = Counter()
        images: list[tuple[str, bytes]] = []
        for path in paths:
            try:
                images.append((path, Path(path).read_bytes()))
            except OSError as exc:
                rows[path] = error_row(path, self.model, f"cannot read the file: {exc.strerror or exc}")
        if images:
            rows.update(self._predict(replicas, images, served))
        return [rows[p] for p in paths], served

    def _predict(self, replicas: ReplicaSet, images: list[tuple[str, bytes]], served: Counter) -> dict[str, dict]:
        try:
            response, replica = self._send(replicas, images)
        except _BatchFailed as failed:
            if len(images) > 1 and failed.code in SPLIT_CODES:
                rows: dict[str, dict] = {}
                for image in images:
                    rows.update(self._predict(replicas, [image], served))
                return rows
            return {path: error_row(path, self.model, failed.message) for path, _ in images}
        served[replica.address] += len(images)
        return {
            path: scored_row(path, prediction_from(p, response.served_by))
            for (path, _), p in zip(images, response.predictions)
        }

    def _send(self, replicas: ReplicaSet, images: list[tuple[str, bytes]]):
        """One BatchPredict of `images`, retried on another server as the
        policy allows; raises _BatchFailed when it does not succeed."""
        request = pb.BatchPredictRequest(model=self.model, version=self.version, options=self.options,
                                         images=[pb.Image(encoded=data) for _, data in images])
        tried: list[_Replica] = []

        def attempt():
            replica = replicas.pick(tried[-1] if tried else None)
            tried.append(replica)
            replica.connection.check_size(request)
            try:
                response = replica.stub.BatchPredict(request, timeout=self.timeout,
                                                     metadata=replica.connection.call_metadata)
            except grpc.RpcError as exc:
                if self.retry.retryable(exc.code()):
                    replicas.failed(replica, f"{exc.code().name}: {exc.details() or ''}")
                raise
            if len(response.predictions) != len(images):
                raise _BatchFailed(grpc.StatusCode.INTERNAL,
                                   f"INTERNAL: {replica.address} answered {len(response.predictions)} "
                                   f"predictions for {len(images)} images")
            replicas.succeeded(replica)
            return response, replica

        def on_retry(exc: grpc.RpcError, delay: float) -> bool:
            if self._stopping.is_set():
                return False
            with self._stats_lock:
                self.summary.retries += 1
            return True

        try:
            return self.retry.run(attempt, on_retry=on_retry)
        except grpc.RpcError as exc:
            error = tried[-1].connection.error(exc, probe=False)
            tries = f" (after {len(tried)} attempts, last on {tried[-1].address})" if len(tried) > 1 else ""
            raise _BatchFailed(error.code, f"{error}{tries}") from None
        except FramewireError as exc:  # over the message limit: not sent
            raise _BatchFailed(exc.code, str(exc)) from None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1, desc="scoring")


def score_images(paths: Iterable[str | Path], *, model: str, servers: str | Sequence[str],
                 out: str | Path, **options) -> ScoreSummary:
    """Score `paths` with `model` on `servers` ("host:port,host:port" or a
    list), appending a row per image to `out` (JSON lines, or CSV for a
    `.csv` name or `fmt="csv"`) and skipping images already there. Returns
    the run's summary. Options: version, batch_size (32), concurrency (4),
    top_k (5, `framewire.v1.options`), score_threshold, max_detections, fmt, timeout (60 s per
    request), max_attempts (5), backoff (0.1 s, doubling), limit (score at
    most this many new images), retry_failed (score failed images again),
    progress (a tqdm bar on stderr), wait_ready (seconds to wait at the start
    for a server to have the model ready, 30), on_batch (called with the
    summary after each batch is written), and the fields of
    `framewire.connection.Connection` but the target (token, tls_ca,
    tls_cert, tls_key, server_name, credentials, metadata, max_message_bytes,
    ...), which apply to every server. Raises ScoreError when no
    server can score with the model, ValueError for bad options and
    `framewire.results_file.ResultsFileError` when `out` is not a results file."""
    return BatchScorer(model=model, servers=servers, out=out, **options).run(paths)
