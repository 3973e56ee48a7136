"""The one place that maps attest errors to HTTP status codes.

Every error answer is ``{"error": <class>, "check": <check or null>, "detail": <message>}``
(``schemas.Error``, declared for every operation in the OpenAPI document); also a request that
breaks the schema (422, ``check: request-schema``), the framework's own refusals (404, 405,
403, ...) and a bug (500, ``InternalError``). A client's input is never echoed back: a request
that fails validation is described by where and which rule, in at most ``MAX_DETAIL``
printable ASCII characters -- NaN, Infinity, 1e999 or a lone surrogate in a body cannot make
the answer unencodable (which was a 500 with a traceback logged per request).
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from attest.errors import (
    AttestError,
    BrokerUnavailable,
    ConfigError,
    EvidenceFormatError,
    NoTpmError,
    OperationNotAllowed,
    Overloaded,
    SnpGuestError,
    StorageError,
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
    if isinstance(exc, NoTpmError):
        return 409  # the node has no TPM ([snp] only): asking again will not help
    if isinstance(exc, TpmError | BrokerUnavailable | SnpGuestError):
        return 503  # the TPM, its broker or the AMD-SP is away: the request may succeed later
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
    if isinstance(exc, StorageError):
        return 507  # Insufficient Storage: the node's state file system is full
    return 500


def error_body(exc: AttestError) -> dict[str, object]:
    return {
        "error": type(exc).__name__,
        "check": getattr(exc, "check", None) or getattr(exc, "reason", None),
        "detail": str(exc),
    }


async def attest_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AttestError)
    headers = {"Retry-After": "1"} if isinstance(exc, TpmError | BrokerUnavailable) else None
    return JSONResponse(error_body(exc), status_code=status_for(exc), headers=headers)


MAX_DETAIL = 300
_LOC_PART = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """``body.nonce: String should match pattern ...; ...``: each failure's location (parts
    that are not plain names are shown as ``?``) and pydantic's message (which names the rule,
    not the input), printable ASCII, at most ``MAX_DETAIL`` characters."""
    parts = []
    for e in errors:
        loc = ".".join(
            str(p) if isinstance(p, int) or _LOC_PART.match(str(p)) else "?"
            for p in e.get("loc", ())
        )
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return printable("; ".join(parts) or "the request does not match the schema")


def printable(text: str) -> str:
    """``text`` as printable ASCII (others as ``?``), at most ``MAX_DETAIL`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = {
        "error": "RequestValidationError",
        "check": "request-schema",
        "detail": describe_validation(exc.errors()),
    }
    return JSONResponse(body, status_code=422)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The framework's refusals (no such path, method, an unauthenticated channel) in the
    same shape."""
    assert isinstance(exc, HTTPException)
    try:
        name = http.HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        name = "HTTPError"
    detail = exc.detail if isinstance(exc.detail, str) else name
    return JSONResponse(
        {"error": name, "check": None, "detail": printable(detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug (an exception no handler above maps): 500 in the same shape, naming nothing of
    the exception (the server logs it with its traceback)."""
    return JSONResponse(
        {"error": "InternalError", "check": None, "detail": "internal error (see attestd's log)"},
        status_code=500,
    )
