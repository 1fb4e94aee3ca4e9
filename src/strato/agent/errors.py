"""How typed agent errors map onto HTTP responses."""

from __future__ import annotations

from starlette.responses import JSONResponse

from strato.protocol.messages import AgentError, ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_COMMAND: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.CANCELLED: 409,
    ErrorCode.INSUFFICIENT_CAPACITY: 507,
    ErrorCode.INJECTED_FAILURE: 500,
    ErrorCode.INTERNAL: 500,
}


def status_for(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_response(code: ErrorCode, message: str, status: int | None = None) -> JSONResponse:
    """An AgentError body with the status its code implies (unless given)."""
    body = AgentError(code=code, message=message).model_dump(mode="json")
    return JSONResponse(body, status_code=status if status is not None else status_for(code))
