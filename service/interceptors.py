"""Server interceptors: request ids, malformed messages and the last-resort error handler."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os

import grpc

from .logs import REQUEST_ID


log = logging.getLogger("framewire.api")

REQUEST_ID_HEADER = "x-request-id"

#: Request ids: a random prefix per process and a counter, unique without a
#: system call per request (uuid4 reads os.urandom each time).
_ids = {"prefix": os.urandom(4).hex(), "counter": itertools.count(1)}


def _new_id_prefix() -> None:
    _ids["prefix"] = os.urandom(4).hex()


os.register_at_fork(after_in_child=_new_id_prefix)  # a forked front end numbers its own


def new_request_id() -> str:
    """A 16-hex-digit id for a request that brought none."""
    return f"{_ids['prefix']}{next(_ids['counter']) & 0xFFFFFFFF:08x}"


#: Only framewire's own services are wrapped (health and reflection are not).
_WRAPPED_PREFIXES = ("/framewire.", "/inference.")


class LastResortInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id (echoed in trailing metadata), answers a
    request whose bytes are not the method's message with INVALID_ARGUMENT
    (gRPC would say UNKNOWN), and turns an unexpected exception into INTERNAL
    with that id, logged with its traceback, instead of a bare UNKNOWN. The
    server keeps serving either way."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_WRAPPED_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        request_id = str(metadata.get(REQUEST_ID_HEADER) or new_request_id())[:64]
        streaming = handler.request_streaming
        return rebuild_handler(
            handler, lambda behavior: _wrap(behavior, details.method, request_id, streaming),
            deserializer=_lenient(handler.request_deserializer),
        )


def rebuild_handler(handler, wrap, *, deserializer=None):
    """The same rpc method handler with its behaviour replaced by `wrap(behaviour)`
    (and its request deserializer by `deserializer`, when given)."""
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    kind = next(k for k in kinds if getattr(handler, k) is not None)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrap(getattr(handler, kind)),
        request_deserializer=deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MalformedRequest:
    """Stands in for a request whose bytes did not parse as the method's message."""

    def __init__(self, type_name: str, error: Exception):
        self.message = (f"the request is not a valid {type_name} message ({type(error).__name__}); send the "
                        "method's protobuf message, serialized")


def _lenient(deserializer):
    """`deserializer`, but bytes that do not parse become a MalformedRequest."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a parser raises on hostile bytes
            return MalformedRequest(type_name, exc)

    return parse


async def _well_formed(request, context):
    if isinstance(request, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    return request


async def _well_formed_stream(requests, context):
    async for request in requests:
        yield await _well_formed(request, context)


def call_ended(exc: BaseException) -> bool:
    """Whether `exc` is gRPC refusing to send on a call that has already
    ended: its deadline passed or its client went away while it was being
    answered. Nobody is left to tell; gRPC drops such calls quietly itself."""
    return type(exc).__name__ == "ExecuteBatchError" and type(exc).__module__.startswith("grpc.")


def _wrap(behavior, method: str, request_id: str, streaming: bool):
    async def fail(context, exc: Exception):
        if call_ended(exc):
            log.debug("%s (request id %s) ended before its answer could be sent", method, request_id)
            raise asyncio.CancelledError  # what gRPC does with a call whose client has gone: nothing more
        log.error("unexpected error in %s (request id %s)", method, request_id, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id}); the server logged the details",
        )

    async def checked(request, context):
        return _well_formed_stream(request, context) if streaming else await _well_formed(request, context)

    if inspect.isasyncgenfunction(behavior):
        async def generator(request, context):
            REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            try:
                async for item in behavior(await checked(request, context), context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await fail(context, exc)

        return generator

    async def call(request, context):
        REQUEST_ID.set(request_id)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        try:
            return await behavior(await checked(request, context), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await fail(context, exc)

    return call
