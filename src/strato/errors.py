"""Errors that cross layers. Each carries the CloudStack error code the API answers with."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """CloudStack's ApiErrorCode values."""

    UNAUTHORIZED = 401
    METHOD_NOT_ALLOWED = 405
    API_LIMIT_EXCEEDED = 429
    MALFORMED_PARAMETER = 430
    PARAM_ERROR = 431
    UNSUPPORTED_ACTION = 432
    INTERNAL_ERROR = 530
    ACCOUNT_ERROR = 531
    ACCOUNT_RESOURCE_LIMIT_ERROR = 532
    INSUFFICIENT_CAPACITY = 533
    RESOURCE_UNAVAILABLE = 534
    RESOURCE_ALLOCATION_ERROR = 535
    RESOURCE_IN_USE = 536


# CloudStack's cserrorcode (the Java exception class' code), by error code.
CS_ERROR_CODES: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 9999,
    ErrorCode.METHOD_NOT_ALLOWED: 9999,
    ErrorCode.API_LIMIT_EXCEEDED: 9999,
    ErrorCode.MALFORMED_PARAMETER: 9999,
    ErrorCode.PARAM_ERROR: 4350,
    ErrorCode.UNSUPPORTED_ACTION: 9999,
    ErrorCode.INTERNAL_ERROR: 4250,
    ErrorCode.ACCOUNT_ERROR: 4365,
    ErrorCode.ACCOUNT_RESOURCE_LIMIT_ERROR: 4370,
    ErrorCode.INSUFFICIENT_CAPACITY: 4010,
    ErrorCode.RESOURCE_UNAVAILABLE: 4375,
    ErrorCode.RESOURCE_ALLOCATION_ERROR: 4380,
    ErrorCode.RESOURCE_IN_USE: 4385,
}


class CloudError(Exception):
    """A failure reported to the caller with a CloudStack error code and a human text."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, text: str, code: ErrorCode | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code


class InvalidParameter(CloudError):
    code = ErrorCode.PARAM_ERROR


class MalformedParameter(CloudError):
    code = ErrorCode.MALFORMED_PARAMETER


class NotFound(CloudError):
    """An id that names nothing the caller may see (CloudStack answers 431 for these)."""

    code = ErrorCode.PARAM_ERROR


class PermissionDenied(CloudError):
    code = ErrorCode.ACCOUNT_ERROR


class Unauthorized(CloudError):
    code = ErrorCode.UNAUTHORIZED


class UnsupportedAction(CloudError):
    code = ErrorCode.UNSUPPORTED_ACTION


class ResourceInUse(CloudError):
    code = ErrorCode.RESOURCE_IN_USE


class ResourceUnavailable(CloudError):
    code = ErrorCode.RESOURCE_UNAVAILABLE


class InsufficientCapacity(CloudError):
    code = ErrorCode.INSUFFICIENT_CAPACITY


class ResourceLimitExceeded(CloudError):
    code = ErrorCode.ACCOUNT_RESOURCE_LIMIT_ERROR


class InvalidState(CloudError):
    """An illegal state transition: the resource is not in a state that allows the operation."""

    code = ErrorCode.PARAM_ERROR
