"""The one place that maps attest errors to HTTP status codes.

Every error answer is ``{"error": <class>, "check": <check or null>, "detail": <message>}``.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from attest.errors import (
    AttestError,
    ConfigError,
    EvidenceFormatError,
    OperationNotAllowed,
    Overloaded,
    TpmError,
    TransportError,
    UpgradeRefused,
    VerificationError,
)


def status_for(exc: AttestError) -> int:
    if isinstance(exc, Overloaded):
        return 503
    if isinstance(exc, OperationNotAllowed):
        return 403
    if isinstance(exc, TpmError):
        return 503  # the TPM is away or failed: the request may succeed later
    if isinstance(exc, EvidenceFormatError):
        return 400
    if isinstance(exc, VerificationError):
        return 422
    if isinstance(exc, UpgradeRefused):
        return 409
    if isinstance(exc, TransportError):
        return 502
    if isinstance(exc, ConfigError):
        return 500
    return 500


def error_body(exc: AttestError) -> dict[str, object]:
    return {
        "error": type(exc).__name__,
        "check": getattr(exc, "check", None) or getattr(exc, "reason", None),
        "detail": str(exc),
    }


async def attest_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AttestError)
    headers = {"Retry-After": "1"} if isinstance(exc, TpmError) else None
    return JSONResponse(error_body(exc), status_code=status_for(exc), headers=headers)
