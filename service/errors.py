"""Domain errors of the serving path, each with its one gRPC status.

The code is kept as the *name* of a gRPC status so that modules below the
API layer (batcher, preprocessing, repository) need not import grpc. The
servicers translate; the README's status table lists every case.
"""

from __future__ import annotations

import math

#: Trailing metadata key of the retry hint sent with a refusal (OverBudgetError).
RETRY_AFTER_KEY = "retry-after-ms"
#: Trailing metadata key saying whether an OverBudgetError was a refusal or a drop.
OVER_BUDGET_KEY = "framewire-over-budget"


class ServiceError(Exception):
    """A request cannot be served; `code` names its gRPC status."""

    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata sent with the status (none by default)."""
        return ()


class InvalidInputError(ServiceError):
    """The request itself is wrong; the client must change it."""

    code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServiceError):
    """No such model, or no such version of it."""

    code = "NOT_FOUND"


class ModelUnavailableError(ServiceError):
    """The model exists but cannot serve now (loading, failed, draining)."""

    code = "UNAVAILABLE"


class PermissionDeniedError(ServiceError):
    """A valid token without the right to do this (scope or model)."""

    code = "PERMISSION_DENIED"


class QueueFullError(ServiceError):
    """The model's queue is full; retrying later with backoff will work."""

    code = "UNAVAILABLE"


class DeadlineExceededError(ServiceError):
    """The request's deadline passed before it ran."""

    code = "DEADLINE_EXCEEDED"


class ShuttingDownError(ServiceError):
    """The server is draining and takes no new work."""

    code = "UNAVAILABLE"


class LimitExceededError(ServiceError):
    """A configured size limit was hit (images per request, bytes, ...)."""

    code = "RESOURCE_EXHAUSTED"


class ModelLoadError(ServiceError):
    """A model asked to load could not be (its reason says why)."""

    code = "FAILED_PRECONDITION"


class InferenceError(ServiceError):
    """The model failed while running a batch."""

    code = "INTERNAL"


class OverBudgetError(ServiceError):
    """The request cannot be answered within its latency budget: refused at
    admission, or dropped from the queue once it could no longer finish in
    time. `retry_after` is the estimate, in seconds, of when a retry would
    be admitted: what the response's retry hint should say."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after: float, *, dropped: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.dropped = dropped

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """`retry-after-ms`: whole milliseconds until a retry is predicted to be
        admitted; `framewire-over-budget`: `refused` (at admission, at once) or
        `dropped` (admitted, then taken from the queue once it could no longer
        finish in time)."""
        return ((RETRY_AFTER_KEY, str(max(0, math.ceil(self.retry_after * 1000)))),
                (OVER_BUDGET_KEY, "dropped" if self.dropped else "refused"))


class SupersededError(ServiceError):
    """A newer request of the same stream arrived while this one still
    waited for its batch (latest-frame-wins, with a latency budget)."""

    code = "DEADLINE_EXCEEDED"


_BY_CODE = {"INVALID_ARGUMENT": InvalidInputError, "RESOURCE_EXHAUSTED": LimitExceededError,
            "UNAVAILABLE": ModelUnavailableError}


def error_from_code(code: str, message: str) -> ServiceError:
    """The error a (code, message) pair names, as it crossed a process
    boundary: the status code the client sees is the one it was raised with."""
    return _BY_CODE.get(code, InferenceError)(message)
