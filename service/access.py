"""Who the current request is, and which models it may use (no gRPC here).

The auth interceptor (service/auth.py) sets PRINCIPAL; the repository and the
listing rpcs ask this module.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from .errors import PermissionDeniedError


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to and what it may do."""

    name: str
    scopes: frozenset[str]
    models: frozenset[str] = frozenset()

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


#: The principal of the request being handled (None when auth is off).
PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def check_model_access(model: str) -> None:
    """PermissionDeniedError when the request's token may not use `model`."""
    principal = PRINCIPAL.get()
    if principal is not None and not principal.may_use(model):
        raise PermissionDeniedError(
            f"token {principal.name!r} may not use model {model!r} "
            f"(it is limited to {', '.join(sorted(principal.models))})"
        )


def model_allowed(model: str) -> bool:
    """Whether listings shown to the request's token include `model`."""
    principal = PRINCIPAL.get()
    return principal is None or principal.may_use(model)
