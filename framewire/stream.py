"""The one streaming client (`Client.stream` and `framewire stream` use it):
answers in frame order, fresh answers when the server falls behind, and the
stream reopened through server restarts.

    from framewire.stream import CameraStream

    with CameraStream("localhost:8500", model="efficientnet_lite0", max_age_ms=200) as stream:
        for frame in camera:                      # any image the client accepts
            stream.submit(frame)
            for result in stream.poll():          # or: on_result=callback, or stream.results()
                print(result.frame_number, result.status, result.top_label)

Frames go out on one `StreamPredict` call with increasing frame numbers. At
most `max_in_flight` frames are at the server at once and one more may wait
to be sent; when a frame arrives while that one still waits (the server is
behind), `drop="oldest"` (the default: latest frame wins) replaces the
waiting frame with the newer one, `"newest"` drops the newcomer, `"none"`
makes `submit` block until there is room (every frame is answered).
`max_age_ms` asks the server to skip a frame that waited that long there,
and the client does not send a frame older than that either. If the stream
breaks (the server restarts or drains), the frames that were out are
reported lost and a new stream is opened after a backoff
(`framewire.connection.RetryPolicy`); frame numbers keep increasing.

Every submitted frame gets exactly one `FrameResult`, in frame order:
`ok`, `skipped` (the server found it stale), `dropped` (never sent) or
`failed` (a per-frame error, or lost when the stream broke).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import grpc

from framewire.client import Prediction, image_message, predict_options, prediction_from
from framewire.connection import (
    Connection,
    FramewireError,
    LocalRpcError,
    RetryPolicy,
    Retrying,
    as_connection,
    transport_hint,
)
from framewire.stream_results import FrameResult, StreamStats, percentiles
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc
from framewire.v1.options import DEFAULT_TOP_K

__all__ = ["CameraStream", "FrameResult", "StreamClosedError", "StreamStats", "percentiles"]

log = logging.getLogger("framewire.stream")

DROP_POLICIES = ("oldest", "newest", "none")
#: Stream errors after which a new stream is opened; any other ends the stream.
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                             grpc.StatusCode.DEADLINE_EXCEEDED})
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_END = object()
_STALLED = object()


class StreamClosedError(FramewireError):
    """`submit` after `close`, or the stream ended for good (`code` and the
    message say why)."""


class _Entry:
    __slots__ = ("number", "image", "tag", "submitted", "sent", "capture_us", "result")

    def __init__(self, number: int, image: pb.Image, tag: Any):
        self.number = number
        self.image = image
        self.tag = tag
        self.submitted = time.monotonic()
        self.sent = 0.0
        self.capture_us = int(time.time() * 1e6)
        self.result: FrameResult | None = None


class CameraStream:
    """One camera's frames to a server over `StreamPredict` (see the module doc).

    `server` is a HOST:PORT or a `framewire.connection.Connection`;
    `connection_options` are Connection's fields (`token`, `tls_ca`,
    `tls_cert`, `tls_key`, `server_name`, `credentials`, `metadata`,
    `max_message_bytes`, `keepalive_seconds`, ...). A broken stream is
    reopened after `backoff` seconds, doubling up to `max_backoff`, with
    jitter: without end (`reconnect=True`), never (False), or up to N times
    in a row without an answer (`reconnect=N`); `stall_seconds` without an
    answer to a frame that is out also reopens it. Results come in frame order to
    `on_result` (called from a background thread) when given, else through
    `results()` / `poll()`."""

    def __init__(self, server: str | Connection, *, model: str, version: int = 0, stream_id: str = "camera-0",
                 top_k: int = DEFAULT_TOP_K, score_threshold: float | None = None, max_detections: int = 0,
                 max_in_flight: int = 2, drop: str = "oldest", max_age_ms: int = 0,
                 reconnect: bool | int = True, backoff: float = 0.1, max_backoff: float = 2.0,
                 stall_seconds: float = 30.0, on_result: Callable[[FrameResult], None] | None = None,
                 **connection_options):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} is too small; at least 1")
        if drop not in DROP_POLICIES:
            raise ValueError(f"drop={drop!r} is not one of {', '.join(DROP_POLICIES)}")
        if max_age_ms < 0:
            raise ValueError(f"max_age_ms={max_age_ms} must not be negative (0: never skip)")
        if not model:
            raise ValueError("name the model to stream to")
        self.connection = as_connection(server, **connection_options)
        self.server, self.model, self.version, self.stream_id = self.connection.target, model, version, stream_id
        self.options = predict_options(top_k, score_threshold, max_detections)
        self.max_in_flight, self.drop, self.max_age_ms = max_in_flight, drop, max_age_ms
        attempts = None if reconnect is True else 1 + int(reconnect)
        self.reconnect_policy = RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=max_backoff,
                                            codes=RECONNECT_CODES)
        self.stall_seconds = stall_seconds
        self.stats = StreamStats()
        self._channel = self.connection.channel()
        self._stub = inference_pb2_grpc.ModelInferenceStub(self._channel)
        self._retrying = Retrying(self.reconnect_policy, sleep=self._sleep)
        self._transport_checked = False
        self._cond = threading.Condition()
        self._ledger: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._waiting: collections.deque[int] = collections.deque()  # submitted, not yet sent
        self._in_flight: collections.deque[int] = collections.deque()  # sent on the current stream
        self._next_number = 0
        self._closing = False
        self._abandon = False
        self._started = False
        self._error: StreamClosedError | None = None
        self._call = None
        self._out: queue.Queue = queue.Queue()
        self._on_result = on_result
        self._connection = threading.Thread(target=self._connect_loop, daemon=True, name="framewire-stream")
        self._delivery = (threading.Thread(target=self._deliver, daemon=True, name="framewire-stream-results")
                          if on_result is not None else None)

    # --- the public surface ---------------------------------------------------------------

    def start(self) -> "CameraStream":
        """Open the stream (`submit` and `with` do it too)."""
        with self._cond:
            if self._started:
                return self
            self._started = True
        self._connection.start()
        if self._delivery is not None:
            self._delivery.start()
        return self

    def __enter__(self) -> "CameraStream":
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.close(raise_error=exc_type is None)

    def submit(self, image: Any, *, tag: Any = None, frame_number: int | None = None) -> int:
        """Queue a frame (a path, encoded bytes, PIL image or numpy array);
        returns its frame number: `frame_number` when given (it must be
        above the previous frame's), else the next one. Never blocks unless
        drop="none". Raises FramewireError (RESOURCE_EXHAUSTED) for a frame
        over the message limit, and StreamClosedError once the stream is
        closed or ended for good."""
        message = image_message(image)
        self.connection.check_size(pb.StreamFrame(image=message, stream_id=self.stream_id))
        self.start()
        with self._cond:
            if frame_number is not None and frame_number < self._next_number:
                raise ValueError(f"frame_number={frame_number} does not follow frame {self._next_number - 1}; "
                                 "frame numbers must increase")
            if self.drop == "none":
                while self._behind() and not self._closing and self._error is None:
                    self._cond.wait(0.1)
            if self._error is not None:
                raise self._error
            if self._closing:
                raise StreamClosedError(grpc.StatusCode.CANCELLED, "the stream is closed; open a new CameraStream")
            number = self._next_number if frame_number is None else frame_number
            self._next_number = number + 1
            entry = self._ledger[number] = _Entry(number, message, tag)
            self.stats.add("captured")
            behind = self._behind()
            if behind and self.drop == "newest":
                self._resolve(entry, "dropped", grpc.StatusCode.OK, "a frame was already waiting (drop newest)")
            else:
                if behind and self.drop == "oldest":
                    old = self._ledger[self._waiting.popleft()]
                    self._resolve(old, "dropped", grpc.StatusCode.OK, "replaced by a newer frame (drop oldest)")
                self._waiting.append(number)
            self._cond.notify_all()
        return number

    def send_all(self, frames: Iterable) -> Iterator[FrameResult]:
        """Submit every frame of `frames` (images, or (frame_number, image)
        pairs), yield each frame's result in frame order as it comes, then
        close the stream and yield the rest. Raises StreamClosedError after
        the last result when the stream ended for good. Not available when
        `on_result` was given."""
        if self._on_result is not None:
            raise RuntimeError("results go to on_result; send_all() is for streams without a callback")
        finished = False
        try:
            for frame in frames:
                number, image = frame if isinstance(frame, tuple) else (None, frame)
                try:
                    self.submit(image, frame_number=number)
                except StreamClosedError:
                    break  # ended for good: report the frames sent so far, then raise
                yield from self.poll()
            self.close(timeout=None, raise_error=False)
            finished = True
            yield from self.results()
        finally:
            if not finished:  # the caller stopped early, or a frame was refused
                self.close(timeout=0, raise_error=False)
        if self._error is not None:
            raise self._error

    @property
    def error(self) -> StreamClosedError | None:
        """Why the stream ended for good (an error reconnecting cannot fix), else None."""
        return self._error

    def results(self) -> Iterator[FrameResult]:
        """Every frame's result in frame order, until the stream is closed and
        drained. Not available when `on_result` was given."""
        if self._on_result is not None:
            raise RuntimeError("results go to on_result; results() is for streams without a callback")
        while True:
            item = self._out.get()
            if item is _END:
                self._out.put(_END)
                return
            yield item

    def poll(self) -> list[FrameResult]:
        """The results ready now, in frame order, without waiting."""
        if self._on_result is not None:
            raise RuntimeError("results go to on_result; poll() is for streams without a callback")
        ready = []
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                return ready
            if item is _END:
                self._out.put(_END)
                return ready
            ready.append(item)

    def close(self, timeout: float | None = 10.0, *, raise_error: bool = True) -> None:
        """Stop taking frames, wait up to `timeout` seconds (None: as long
        as the stream lasts) for the frames already submitted to be
        answered, then end the stream. Frames still
        unanswered then are reported dropped or failed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            started = self._started
        if started:
            self._connection.join(timeout)
            if self._connection.is_alive():
                with self._cond:
                    self._abandon = True
                    call = self._call
                    self._cond.notify_all()
                if call is not None:
                    call.cancel()
                self._connection.join(10)
        else:
            self._finish()
        if self._delivery is not None:
            self._delivery.join(10)
        self._channel.close()
        if self._error is not None and raise_error:
            raise self._error

    # --- inside -----------------------------------------------------------------------------

    def _behind(self) -> bool:
        """Every slot is taken and a frame waits beyond them: the server is
        behind and the next frame must replace one (or wait). Holds the lock."""
        return len(self._in_flight) + len(self._waiting) > self.max_in_flight

    def _stalled(self) -> bool:
        """The oldest frame out has waited `stall_seconds` for its answer. Holds the lock."""
        if not self._in_flight or not self.stall_seconds:
            return False
        oldest = self._ledger[self._in_flight[0]]
        return time.monotonic() - oldest.sent > self.stall_seconds

    def _resolve(self, entry: _Entry, status: str, code: grpc.StatusCode, message: str,
                 prediction: Prediction | None = None, latency_ms: float | None = None) -> None:
        """Record an entry's result and release the results now in order. Holds the lock."""
        entry.image = None
        entry.result = FrameResult(self.stream_id, entry.number, status, code, message, prediction,
                                   latency_ms, entry.tag)
        self.stats.add({"ok": "answered"}.get(status, status),
                       latency_ms if status == "ok" else None)
        while self._ledger:
            first = next(iter(self._ledger.values()))
            if first.result is None:
                break
            self._ledger.popitem(last=False)
            self._out.put(first.result)

    def _requests(self, connection: dict) -> Iterator[pb.StreamFrame]:
        """The frames of one StreamPredict call (gRPC pulls them from its own thread)."""
        first = True
        while True:
            frame = self._next_frame(connection)
            if frame is None:
                return
            if frame is _STALLED:
                log.warning("stream to %s: no answer for %.0f s; reopening it", self.server, self.stall_seconds)
                if self._call is not None:
                    self._call.cancel()
                return
            if first:
                frame.model, frame.version = self.model, self.version
                frame.options.CopyFrom(self.options)
                first = False
            yield frame

    def _next_frame(self, connection: dict):
        """The next frame to send once one may go; None to end the call's input."""
        with self._cond:
            while True:
                if connection["broken"] or self._abandon:
                    return None
                if self._stalled():
                    connection["broken"] = True
                    return _STALLED
                if self._waiting and len(self._in_flight) < self.max_in_flight:
                    entry = self._ledger[self._waiting.popleft()]
                    self._cond.notify_all()
                    age_ms = (time.monotonic() - entry.submitted) * 1000
                    if self.max_age_ms and age_ms > self.max_age_ms:
                        self._resolve(entry, "dropped", grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"{age_ms:.0f} ms old before it could be sent (max_age_ms={self.max_age_ms})")
                        continue
                    self._in_flight.append(entry.number)
                    entry.sent = time.monotonic()
                    self.stats.add("sent")
                    frame = pb.StreamFrame(stream_id=self.stream_id, frame_number=entry.number,
                                           image=entry.image, max_age_ms=self.max_age_ms,
                                           capture_time_us=entry.capture_us)
                    entry.image = None
                    return frame
                if self._closing and not self._waiting:
                    return None  # half-close: the server answers what is out, then ends the call
                self._cond.wait(0.1)

    def _connect_loop(self) -> None:
        try:
            self._retrying.run(self._one_call, on_retry=self._reconnecting)
        except grpc.RpcError as exc:
            failure = self.connection.error(exc, probe=False)
            with self._cond:
                if not self._over():
                    self._error = StreamClosedError(failure.code, f"stream to {self.server} ended: {failure.message}")
        finally:
            self._finish()

    def _over(self) -> bool:
        """Abandoned, or closing with no frame left to send. Holds the lock."""
        return self._abandon or (self._closing and not self._waiting)

    def _one_call(self) -> None:
        """One StreamPredict call, until it ends; returns when the stream is
        over, raises grpc.RpcError when it broke."""
        with self._cond:
            if self._over():
                return
        connection = {"broken": False}
        call = self._stub.StreamPredict(self._requests(connection), metadata=self.connection.call_metadata)
        with self._cond:
            self._call = call
        try:
            for answer in call:
                self._retrying.reset()
                self._answered(answer)
            # The server ended a stream this client had not finished: open another.
            error: grpc.RpcError = LocalRpcError(grpc.StatusCode.UNAVAILABLE, "the server ended the stream")
        except grpc.RpcError as exc:
            error = exc
        code, details = error.code(), error.details() or ""
        with self._cond:
            connection["broken"] = True
            self._call = None
            lost = f"lost: the stream broke ({code.name}: {details}) before an answer"
            while self._in_flight:
                self._resolve(self._ledger[self._in_flight.popleft()], "failed", grpc.StatusCode.UNAVAILABLE, lost)
            self._cond.notify_all()
        if code == grpc.StatusCode.UNAVAILABLE and not self._transport_checked:  # say it once per stream
            hint = transport_hint(self.server, tls=self.connection.tls, details=details)
            if hint:
                self._transport_checked = True
                log.warning("stream to %s cannot connect: %s", self.server, hint)
        with self._cond:
            if self._over():
                return
        raise error

    def _reconnecting(self, error: grpc.RpcError, delay: float) -> bool:
        """Before the wait for a new stream: count and say it; False when
        the stream is over anyway."""
        with self._cond:
            if self._over():
                return False
            self.stats.reconnects += 1
        log.warning("stream to %s broke (%s: %s); reconnecting in %.1f s",
                    self.server, error.code().name, error.details() or "", delay)
        return True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while (not self._abandon and not (self._closing and not self._waiting)
                   and time.monotonic() < deadline):
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def _answered(self, answer: pb.StreamResult) -> None:
        with self._cond:
            if answer.stream_id != self.stream_id or answer.frame_number not in self._in_flight:
                return
            # Answers come in frame order: anything sent before this one and still out was lost.
            while self._in_flight and self._in_flight[0] != answer.frame_number:
                self._resolve(self._ledger[self._in_flight.popleft()], "failed", grpc.StatusCode.UNKNOWN,
                              "the server answered a later frame first")
            self._in_flight.popleft()
            entry = self._ledger[answer.frame_number]
            latency_ms = (time.monotonic() - entry.submitted) * 1000
            code = _CODES.get(answer.status.code, grpc.StatusCode.UNKNOWN)
            if code == grpc.StatusCode.OK:
                prediction = prediction_from(answer.prediction, answer.served_by, answer.timing)
                self._resolve(entry, "ok", code, "", prediction, latency_ms)
            else:
                status = "skipped" if answer.skipped else "failed"
                self._resolve(entry, status, code, answer.status.message, None, latency_ms)
            self._cond.notify_all()

    def _finish(self) -> None:
        with self._cond:
            reason = str(self._error) if self._error else "the stream closed before it was sent"
            for number in list(self._waiting) + list(self._in_flight):
                entry = self._ledger.get(number)
                if entry is not None and entry.result is None:
                    self._resolve(entry, "dropped" if number in self._waiting else "failed",
                                  grpc.StatusCode.CANCELLED, reason)
            self._waiting.clear()
            self._in_flight.clear()
            self._closing = True
            self._out.put(_END)
            self._cond.notify_all()

    def _deliver(self) -> None:
        while True:
            item = self._out.get()
            if item is _END:
                return
            try:
                self._on_result(item)
            except Exception:  # a failing callback must not stop the results after it
                log.exception("on_result failed on frame %d", item.frame_number)
