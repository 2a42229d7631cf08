"""Server interceptors: request ids and the last-resort error handler."""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid

import grpc

log = logging.getLogger("framewire.api")

#: The current request's id (from the client's `x-request-id`, else new).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_HEADER = "x-request-id"

#: Only framewire's own services are wrapped (health and reflection are not).
_WRAPPED_PREFIXES = ("/framewire.", "/inference.")


class LastResortInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id (echoed in trailing metadata) and turns an
    unexpected exception into INTERNAL with that id, logged with its traceback,
    instead of a bare UNKNOWN. The server keeps serving either way."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_WRAPPED_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        request_id = str(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16])[:64]
        return rebuild_handler(handler, lambda behavior: _wrap(behavior, details.method, request_id))


def rebuild_handler(handler, wrap):
    """The same rpc method handler with its behaviour replaced by `wrap(behaviour)`."""
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    kind = next(k for k in kinds if getattr(handler, k) is not None)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrap(getattr(handler, kind)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap(behavior, method: str, request_id: str):
    async def fail(context, exc: Exception):
        log.error("unexpected error in %s (request id %s)", method, request_id, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id}); the server logged the details",
        )

    if inspect.isasyncgenfunction(behavior):
        async def generator(request, context):
            REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            try:
                async for item in behavior(request, context):
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
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await fail(context, exc)

    return call
