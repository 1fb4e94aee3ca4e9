"""CloudStack response envelopes for results and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strato.errors import CS_ERROR_CODES, ErrorCode


@dataclass
class AsyncStarted:
    """What an async command's handler returns: the queued job and the entity it creates, if any."""

    job_id: str
    entity_id: str | None = None


@dataclass
class Listing:
    items: list[dict[str, Any]]
    count: int


def list_body(key: str, object_name: str, listing: Listing) -> dict[str, Any]:
    if not listing.items and listing.count == 0:
        return {key: {}}
    return {key: {"count": listing.count, object_name: listing.items}}


def error_body(key: str, code: ErrorCode, text: str) -> dict[str, Any]:
    return {
        key: {
            "uuidList": [],
            "errorcode": int(code),
            "cserrorcode": CS_ERROR_CODES.get(code, 9999),
            "errortext": text,
        }
    }
