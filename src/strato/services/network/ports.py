"""Port numbers and ranges in rule requests (port forwards, firewall and egress rules): each checked, a
bad one refused with 431 naming its parameter."""

from __future__ import annotations

from typing import Any

from strato.errors import InvalidParameter


def port_number(value: Any, param: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"Parameter {param} must be a port number, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise InvalidParameter(f"Parameter {param} {port} is outside 1-65535")
    return port


def port_range(args: dict[str, Any], start: str, end: str) -> tuple[int, int]:
    """The ports from `start` to `end` (end defaults to start), each checked, 431 naming the one at fault."""
    lo = port_number(args.get(start), start)
    hi = port_number(args[end], end) if args.get(end) not in (None, "") else lo
    if hi < lo:
        raise InvalidParameter(f"Parameter {end} {hi} is below {start} {lo}")
    return lo, hi
