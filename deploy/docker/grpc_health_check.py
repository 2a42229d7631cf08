"""Exit 0 if a framewire server's gRPC health service answers SERVING, else 1.

The image's HEALTHCHECK runs it. framewire reports the service "" as SERVING
only once its models are loaded and warm, NOT_SERVING while it loads or
drains; `--service framewire.model.<name>` checks one model. It needs only
grpcio and grpcio-health-checking (both installed with the `server` extra),
so it runs in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """(serving, what was seen) for one health Check call."""
    request = health_pb2.HealthCheckRequest(service=service)
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
    except grpc.RpcError as exc:
        return False, f"{address}: health check of service {service!r} failed: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: service {service!r} is {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:8500", help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help='health service name ("" is the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    serving, seen = check(args.address, args.service, args.timeout)
    # Docker keeps the last lines a health check prints: say why it failed.
    if not serving:
        print(seen, file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
