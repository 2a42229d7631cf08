"""Bearer tokens with scopes, from a tokens file.

The file (`--tokens-file`, TOML) lists tokens by their sha256, never in the
clear:

    [[token]]
    name = "camera-fleet"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scopes = ["infer"]
    models = ["efficientnet_lite0"]   # optional: infer only these models

    [[token]]
    name = "ops"
    sha256 = "..."
    scopes = ["infer", "admin"]

`framewire token` makes a token and prints its entry. Clients send
`authorization: Bearer <token>`. Scopes: `infer` for every prediction and
read rpc, `admin` for what changes state (repository load and unload).
Health checks (and the protocol's ServerLive/ServerReady) stay open so
orchestrators can probe. A missing or unknown token is UNAUTHENTICATED; a
known token without the scope, or a model-limited token naming another
model, is PERMISSION_DENIED. The file is read again on SIGHUP and when it
changes; a file that does not parse (say, half written) leaves the previous
tokens in force, but a missing file fails closed: deleting it revokes every
token until it is back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from pathlib import Path

import grpc

from .access import PRINCIPAL, Principal
from .config import ConfigError

log = logging.getLogger("framewire.auth")

SCOPES = frozenset({"infer", "admin"})
#: Methods anyone may call: probes.
OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})
#: Methods that change state.
ADMIN_METHODS = frozenset({
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
})
REFLECTION_PREFIX = "/grpc.reflection."


def new_token() -> tuple[str, str]:
    """A fresh random token and its sha256 (hex)."""
    token = "fw_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens of a tokens file, re-read when it changes."""

    CHECK_SECONDS = 1.0

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: list[tuple[bytes, Principal]] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload(strict=True)

    def reload(self, *, strict: bool = False) -> None:
        """Read the file; on a bad file raise (strict) or keep the old tokens;
        on a missing one accept no token."""
        try:
            stat = self.path.stat()
            entries = parse_tokens(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, ValueError) as exc:
            if strict:
                raise ConfigError(f"tokens file {self.path}: {exc}") from None
            if isinstance(exc, FileNotFoundError):
                self._revoke_all()
                return
            log.error("tokens file %s could not be read again (%s); the previous tokens stay in force",
                      self.path, exc)
            return
        with self._lock:
            changed = self._stamp is not None
            self._entries = entries
            self._stamp = (stat.st_mtime_ns, stat.st_size)
        log.info("%s %d token(s) from %s", "reloaded" if changed else "loaded", len(entries), self.path)

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.CHECK_SECONDS:
            return
        self._checked = now
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._revoke_all()
            return
        except OSError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self.reload()

    def _revoke_all(self) -> None:
        """The file is gone: fail closed (it is read again when it is back)."""
        with self._lock:
            if self._stamp is None and not self._entries:
                return
            self._entries, self._stamp = [], None
        log.error("tokens file %s is missing: no token is accepted until it is back", self.path)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose token this is (compared in constant time), or None."""
        self._reload_if_changed()
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        with self._lock:
            entries = list(self._entries)
        for expected, principal in entries:  # every entry is compared, so timing says nothing
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def parse_tokens(text: str, source: str = "tokens file") -> list[tuple[bytes, Principal]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    entries = []
    for i, item in enumerate(data.get("token", [])):
        where = f"{source}: token {i + 1} ({item.get('name', 'unnamed')})"
        digest = str(item.get("sha256", ""))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (`framewire token` prints it)")
        scopes = frozenset(item.get("scopes", []))
        if not scopes or not scopes <= SCOPES:
            raise ValueError(f"{where}: scopes {sorted(scopes)} must be a non-empty subset of {sorted(SCOPES)}")
        models = frozenset(item.get("models", []))
        entries.append((bytes.fromhex(digest), Principal(str(item.get("name", f"token{i + 1}")), scopes, models)))
    return entries


def required_scope(method: str) -> str | None:
    """The scope a method needs; None for open methods; "" for any valid token."""
    if method in OPEN_METHODS:
        return None
    if method in ADMIN_METHODS:
        return "admin"
    if method.startswith(REFLECTION_PREFIX):
        return ""
    return "infer"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates bearer tokens and checks each method's scope; the
    request's Principal is left in PRINCIPAL for model-level checks."""

    def __init__(self, store: TokenStore):
        self.store = store

    async def intercept_service(self, continuation, details):
        scope = required_scope(details.method)
        handler = await continuation(details)
        if scope is None or handler is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        principal = None
        if header[:7].lower() == "bearer " and header[7:].strip():
            principal = self.store.authenticate(header[7:].strip())
        if principal is None:
            why = "the token is not valid" if header else "no bearer token was sent"
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            f"{why}; send metadata 'authorization: Bearer <token>' (--token)")
        if scope and scope not in principal.scopes:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"token {principal.name!r} lacks the {scope!r} scope that {details.method} needs")
        return _with_principal(handler, principal)


def _kind(handler) -> str:
    return next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))


def _refusal(handler, code: grpc.StatusCode, message: str):
    kind = _kind(handler)

    async def refuse(request, context):
        await context.abort(code, message)

    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(refuse, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def _with_principal(handler, principal: Principal):
    import inspect

    kind = _kind(handler)
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):
        async def generator(request, context):
            PRINCIPAL.set(principal)
            async for item in behavior(request, context):
                yield item

        wrapped = generator
    else:
        async def call(request, context):
            PRINCIPAL.set(principal)
            return await behavior(request, context)

        wrapped = call
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(wrapped, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def token_entry(name: str, digest: str, scopes: list[str], models: list[str]) -> str:
    """The TOML entry for a token."""
    lines = ["[[token]]", f'name = "{name}"', f'sha256 = "{digest}"',
             "scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]"]
    if models:
        lines.append("models = [" + ", ".join(f'"{m}"' for m in models) + "]")
    return "\n".join(lines) + "\n"
