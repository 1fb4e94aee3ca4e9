"""Bearer-token check for every agent request: one secret per host, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection


def bearer_token(request: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when absent or malformed."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_authorized(request: HTTPConnection, expected: str) -> bool:
    """True when the request carries the expected token; constant-time so timing leaks nothing."""
    given = bearer_token(request)
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
