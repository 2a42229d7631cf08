"""Mapping domain errors to gRPC statuses, in one place."""

from __future__ import annotations

import functools
import logging

import grpc

from ..errors import LimitExceededError, ServiceError, ShuttingDownError

log = logging.getLogger("framewire.api")


def status_code(error: ServiceError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


#: Longest message sent or logged for a refused request: client strings are
#: bounded where they enter a message; this catches anything missed.
MAX_MESSAGE_CHARS = 2000


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "... (cut)"


def rpc(method):
    """Servicer decorator: a ServiceError becomes its status code, message and
    trailing metadata (a refusal's retry hint)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            # One line per refused request, with its request id (the log
            # filter adds it): what an operator greps for when a client
            # reports an error.
            message = bounded(exc.message)
            log.info("%s -> %s: %s", method.__name__, exc.code, message)
            await context.abort(status_code(exc), message, exc.trailers())

    return wrapper


def stream_rpc(method):
    """Decorator for a servicer's bidirectional streaming call: the call holds
    one of its connection's stream places (`self.streams`, a StreamLimiter)
    while it runs; refused for too many streams (RESOURCE_EXHAUSTED) or ended
    by a drain (UNAVAILABLE), it ends with that status. Failures of single
    requests are the method's to answer in the stream."""

    @functools.wraps(method)
    async def wrapper(self, request_iterator, context):
        try:
            with self.streams.open(context.peer()):
                await method(self, request_iterator, context)
        except (LimitExceededError, ShuttingDownError) as exc:
            await context.abort(status_code(exc), bounded(exc.message))

    return wrapper
