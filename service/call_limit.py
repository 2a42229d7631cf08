"""A deliberate bound on the calls the server handles at once.

Past `--max-concurrent-rpcs` calls in flight (a stream counts while it is
open), a new call is answered UNAVAILABLE at once with a message naming the
limit, which clients retry with backoff. Health checks and the protocol's
liveness and readiness rpcs are never refused: an orchestrator must not take
a busy server for a dead one.

gRPC's own limiter (`maximum_concurrent_rpcs`) would refuse probes too, with
a message that names no setting; and without any bound, calls gRPC has
accepted but the server has not taken up yet are cancelled past gRPC's
pending-call limit, a CANCELLED that clients do not retry. `PENDING_CALL_OPTIONS`
gives that queue room for bursts, so they reach this limit instead.
"""

from __future__ import annotations

import inspect

import grpc

from .auth import OPEN_METHODS
from .interceptors import rebuild_handler

#: gRPC's pending-call queue (defaults 1,000, hard limit 3,000) made room for bursts.
PENDING_CALL_OPTIONS = [
    ("grpc.server.max_pending_requests", 65536),
    ("grpc.server.max_pending_requests_hard_limit", 65536),
]


class CallLimitInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls in flight; past the limit a new one gets UNAVAILABLE."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def refusal(self) -> str:
        return (f"the server is handling {self.in_flight} calls, its limit (--max-concurrent-rpcs); "
                "retry with backoff, or send fewer calls at once")

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        return rebuild_handler(handler, self._bounded)

    def _bounded(self, behavior):
        limiter = self

        if inspect.isasyncgenfunction(behavior):
            async def generator(request, context):
                if limiter.in_flight >= limiter.limit:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, limiter.refusal())
                limiter.in_flight += 1
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    limiter.in_flight -= 1

            return generator

        async def call(request, context):
            if limiter.in_flight >= limiter.limit:
                await context.abort(grpc.StatusCode.UNAVAILABLE, limiter.refusal())
            limiter.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                limiter.in_flight -= 1

        return call
