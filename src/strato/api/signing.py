"""CloudStack request signatures: HMAC-SHA1 over the sorted, encoded, lower-cased parameters.

Clients canonicalise differently (see notes/cloudstack-api.md); a request is accepted when its signature
matches any of the known canonical forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

from strato.errors import Unauthorized

Encoder = Callable[[str], str]

ENCODERS: tuple[Encoder, ...] = (
    lambda v: quote(v, safe="*"),  # cs
    quote_plus,  # Marvin, and Go's url.QueryEscape (cloudmonkey)
    lambda v: quote(v, safe="[]*").replace("+", "%20"),  # Libcloud
    lambda v: quote(v, safe=""),  # QueryEscape with '+' turned into %20
    lambda v: quote(v, safe="*").replace("~", "%7E"),  # Java URLEncoder (CloudStack itself)
)


def canonical_strings(params: dict[str, str]) -> Iterator[str]:
    """Each distinct canonical form of the request, the `cs` client's first (most clients'), so that a
    good signature is found after one HMAC instead of ten."""
    items = [(k, v) for k, v in params.items() if k.lower() != "signature"]
    orders = (sorted(items, key=lambda kv: kv[0]), sorted(items, key=lambda kv: kv[0].lower()))
    seen: set[str] = set()
    for order in orders:
        for enc in ENCODERS:
            canonical = "&".join(f"{k}={enc(v)}" for k, v in order).lower()
            if canonical not in seen:
                seen.add(canonical)
                yield canonical


def sign(canonical: str, secret: str) -> str:
    digest = hmac.new(secret.encode(), canonical.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_matches(params: dict[str, str], signature: str, secret: str) -> bool:
    """Each comparison is constant-time; the search stops at the first form that matches (which form a
    client uses is no secret, the key is)."""
    return any(hmac.compare_digest(sign(canonical, secret), signature) for canonical in canonical_strings(params))


def parse_expires(value: str) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            ts = datetime.strptime(value, fmt)
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        except ValueError:
            continue
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise Unauthorized(
            f"Parameter expires has an invalid date '{value[:40]}' (expected yyyy-MM-ddTHH:mm:ssZ)"
        ) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def check_expiry(params: dict[str, str], now: datetime, require_v3: bool = False) -> None:
    """signatureVersion=3 requests carry `expires` and are refused after it. With `require_v3` (the
    api.signature.version3.only setting), requests without them are refused: a captured request cannot
    be replayed for ever."""
    lowered = {k.lower(): v for k, v in params.items()}
    version = lowered.get("signatureversion")
    expires = lowered.get("expires")
    if version is None:
        if require_v3:
            raise Unauthorized("This cloud accepts only signed requests with signatureVersion=3 and expires")
        return
    if version != "3":
        raise Unauthorized(f"Unsupported signatureVersion {version[:10]}; use 3")
    if not expires:
        raise Unauthorized("signatureVersion=3 requires the expires parameter")
    if parse_expires(expires) < now:
        raise Unauthorized("The request has expired (its expires time is in the past)")
