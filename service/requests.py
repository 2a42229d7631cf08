"""What a client sent, checked and turned into domain values, for both APIs.

The native servicer and the Open Inference Protocol servicer call these, so
the same request means the same thing, and a bad one gets the same
INVALID_ARGUMENT, on either API. Every string a client controls is bounded
here before it can reach a message or a log line; `shown` is how one
appears in them.
"""

from __future__ import annotations

from framewire.exporter.format import MODEL_NAME_RE

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
