"""Parameter types of the CloudStack API and their parsing from request strings."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from strato.errors import InvalidParameter, MalformedParameter

MAX_STRING = 4096
MAP_KEY = re.compile(r"^([a-z0-9_]+)\[(\d{1,4})\]\.([a-z0-9_]+)$")


class T(StrEnum):
    """Types as listApis reports them."""

    STRING = "string"
    UUID = "uuid"
    INTEGER = "integer"
    LONG = "long"
    SHORT = "short"
    BOOLEAN = "boolean"
    LIST = "list"
    MAP = "map"
    DATE = "date"


@dataclass(frozen=True)
class Param:
    name: str
    type: T
    description: str
    required: bool = False
    max_length: int = MAX_STRING
    # For LIST: the item type (uuid lists are checked item by item).
    item_type: T = T.STRING
    min_value: int | None = None
    max_value: int | None = None
    choices: tuple[str, ...] = ()
    since: str = ""
    admin_only: bool = False
    related: tuple[str, ...] = field(default_factory=tuple)


def _bad(cmd: str, p: Param, raw: str, why: str) -> InvalidParameter:
    shown = raw if len(raw) <= 64 else raw[:64] + "..."
    return InvalidParameter(
        f"Unable to execute API command {cmd.lower()} due to invalid value. "
        f"Invalid parameter {p.name} value={shown} due to {why}"
    )


def parse_scalar(cmd: str, p: Param, raw: str, typ: T | None = None) -> Any:
    typ = typ or p.type
    if typ in (T.STRING, T.DATE):
        if len(raw) > p.max_length:
            raise InvalidParameter(
                f"Unable to execute API command {cmd.lower()}: parameter {p.name} is {len(raw)} characters "
                f"long, more than the maximum of {p.max_length}"
            )
        if p.choices and raw.lower() not in {c.lower() for c in p.choices}:
            raise _bad(cmd, p, raw, f"not being one of: {', '.join(p.choices)}")
        return raw
    if typ == T.UUID:
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            raise _bad(
                cmd,
                p,
                raw,
                "incorrect uuid format (expected a UUID such as 6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f)",
            ) from None
    if typ in (T.INTEGER, T.LONG, T.SHORT):
        try:
            value = int(raw)
        except ValueError:
            raise _bad(cmd, p, raw, f"incorrect {typ.value} value format") from None
        bits = {T.SHORT: 15, T.INTEGER: 31, T.LONG: 63}[typ]
        if not -(2**bits) <= value < 2**bits:
            raise _bad(cmd, p, raw, f"being out of range for a {typ.value}")
        if p.min_value is not None and value < p.min_value:
            raise _bad(cmd, p, raw, f"being smaller than {p.min_value}")
        if p.max_value is not None and value > p.max_value:
            raise _bad(cmd, p, raw, f"being greater than {p.max_value}")
        return value
    if typ == T.BOOLEAN:
        low = raw.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise _bad(cmd, p, raw, "incorrect boolean value format (expected true or false)")
    raise _bad(cmd, p, raw, f"unsupported type {typ}")


def parse_list(cmd: str, p: Param, raw: str) -> list[Any]:
    if len(raw) > p.max_length * 4:
        raise InvalidParameter(f"Unable to execute API command {cmd.lower()}: parameter {p.name} is too long")
    items = [s.strip() for s in raw.split(",") if s.strip()]
    return [parse_scalar(cmd, p, item, p.item_type) for item in items]


def collect_maps(cmd: str, raw: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Groups `name[i].key=value` pairs into {name: [ {key: value}, ... ]}, ordered by index."""
    grouped: dict[str, dict[int, dict[str, str]]] = {}
    for key, value in raw.items():
        if "[" not in key and "]" not in key:
            continue
        m = MAP_KEY.match(key)
        if not m:
            raise MalformedParameter(
                f"Unable to execute API command {cmd.lower()}: malformed map parameter '{key[:64]}' "
                "(expected name[index].key=value)"
            )
        name, index, sub = m.group(1), int(m.group(2)), m.group(3)
        grouped.setdefault(name, {}).setdefault(index, {})[sub] = value
    return {name: [entries[i] for i in sorted(entries)] for name, entries in grouped.items()}


TAGS_FILTER = Param(
    "tags", T.MAP, "List resources by tags (tags[0].key=k&tags[0].value=v): those carrying every tag", max_length=255
)
"""The `tags` filter of the list commands whose resources take tags (services.core.tags.tagged)."""
