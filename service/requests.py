"""What a client sent, checked and turned into domain values, for both APIs.

The native servicer and the Open Inference Protocol servicer call these, so
the same request means the same thing, and a bad one gets the same
INVALID_ARGUMENT, on either API. Every string a client controls is bounded
here before it can reach a message or a log line; `shown` is how one
appears in them.
"""

from __future__ import annotations

import asyncio
import math

from framewire.exporter.format import MODEL_NAME_RE
from framewire.v1.options import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K, MAX_TOP_K

from .domain import PredictParams
from .errors import InvalidInputError

#: Longest model name (as the artifact format allows) and stream id.
MAX_NAME_CHARS = 128
MAX_STREAM_ID_CHARS = 128
#: Longest version string (the protocol sends versions as text): int64.
MAX_VERSION_DIGITS = 18


def shown(text: str, limit: int = 48) -> str:
    """A client string as it appears in a message or a log: quoted, cut to
    `limit` characters, with its full length when it was cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def model_name(name: str) -> str:
    """A requested model name; INVALID_ARGUMENT when it cannot name a model
    (an empty one is left to the repository: no such model)."""
    if name and not MODEL_NAME_RE.match(name):
        raise InvalidInputError(
            f"model name {shown(name)} is not a model name: at most {MAX_NAME_CHARS} characters of letters, "
            "digits, '_', '.' and '-', starting with a letter or digit"
        )
    return name


def stream_id(text: str) -> str:
    """A stream id; INVALID_ARGUMENT past MAX_STREAM_ID_CHARS."""
    if len(text) > MAX_STREAM_ID_CHARS:
        raise InvalidInputError(
            f"stream id {shown(text)} is too long; at most {MAX_STREAM_ID_CHARS} characters"
        )
    return text


def version_text(text: str) -> int:
    """A version sent as text ('' is any version) as an int."""
    if not text:
        return 0
    if len(text) > MAX_VERSION_DIGITS or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidInputError(
            f"model version {shown(text)} is not a positive integer of at most {MAX_VERSION_DIGITS} digits"
        )
    return int(text)


def predict_params(*, top_k: int | None = None, score_threshold: float | None = None,
                   max_detections: int | None = None, return_raw: bool = False) -> PredictParams:
    """Prediction options, checked; None (or 0 for the counts) means the
    default (`framewire.v1.options`)."""
    if top_k is not None and top_k > MAX_TOP_K:
        raise InvalidInputError(f"top_k={top_k} is too large; at most {MAX_TOP_K}")
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise InvalidInputError(f"score_threshold={score_threshold} must be within [0, 1]")
    return PredictParams(
        top_k=top_k or DEFAULT_TOP_K,
        return_raw=return_raw,
        score_threshold=DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold,
        max_detections=max_detections or DEFAULT_MAX_DETECTIONS,
    )


def whole_number(name: str, value, *, minimum: int = 0) -> int | None:
    """A request parameter that must be a whole number (None when absent)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"parameter {name} must be a whole number; got {_described(value)}")
    if value < minimum:
        raise InvalidInputError(f"parameter {name} must be {minimum} or more; got {value}")
    return value


def real_number(name: str, value) -> float | None:
    """A request parameter that must be a number (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"parameter {name} must be a number; got {_described(value)}")
    return float(value)


def _described(value) -> str:
    return f"the string {shown(value)}" if isinstance(value, str) else repr(value)


def deadline(context, timeout_us: int | None = None) -> float | None:
    """When the request must be done, on the event loop's clock: the earlier of
    the call's gRPC deadline and a protocol timeout in microseconds."""
    now = asyncio.get_running_loop().time()
    remaining = context.time_remaining()
    found = None if remaining is None else now + remaining
    if timeout_us:
        own = now + timeout_us / 1e6
        found = own if found is None else min(found, own)
    return found


def frame_deadline(context, arrived: float, max_age_ms: int) -> float | None:
    """When a stream frame must be done, on the event loop's clock: `max_age_ms`
    after it `arrived` when set (a stale frame is skipped), else the call's deadline."""
    return arrived + max_age_ms / 1000 if max_age_ms else deadline(context)


def image_count(count: int, limit: int) -> int:
    """The number of images in one request; INVALID_ARGUMENT past `limit`
    (--max-images-per-request)."""
    if count > limit:
        raise InvalidInputError(
            f"the batch holds {count} images; the limit is {limit} per request (--max-images-per-request); split it"
        )
    return count
