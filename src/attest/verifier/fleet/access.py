"""Who may use the fleet service, and how it answers what it refuses (an adapter).

- ``Access`` and ``TokenAuth``: writes (``POST``/``DELETE``) always need the write token, unless
  the operator explicitly runs an open service on loopback (``--insecure-no-auth``); with a
  read token every read (API, pages, metrics) needs the read or the write token. ``/healthz``
  is always open. A token is a bearer token, or the password of HTTP Basic (any user name) so
  that a browser can open the pages.
- ``serve_warnings``: what ``attest fleet serve`` refuses to start with, and one warning per
  thing left open.
- ``Error`` and ``error_responses``: the one error shape ``{error, check, detail}`` and how
  each operation declares it in the OpenAPI document; ``validation_error``, ``http_error``,
  ``internal_error``: a request that breaks the schema (described without echoing it), the
  framework's refusals and a bug, in that shape.
- ``MAX_BODY``: what a request body may hold (``attest.serving.body.BodyLimit`` refuses more,
  or a body that does not arrive in time, with 413 or 408 before any route reads it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import http
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest.errors import AttestError, ConfigError
from attest.serving.body import ASGIApp, Receive, Scope, Send, json_reply

logger = logging.getLogger(__name__)

MAX_DETAIL = 300

# --- authentication ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """The service's tokens. Writes need ``write_token`` unless ``insecure_no_auth`` (and no
    write token) leaves them open; reads need a token only when ``read_token`` is set."""

    write_token: str | None
    read_token: str | None = None
    insecure_no_auth: bool = False

    def __post_init__(self) -> None:
        if not self.write_token and not self.insecure_no_auth:
            raise ConfigError(
                "writes need authentication: give --api-token-file (or, on a loopback "
                "--listen only, --insecure-no-auth)",
                key="--api-token-file",
            )
        if self.write_token is not None and self.write_token == self.read_token:
            raise ConfigError(
                "the read token must differ from the write token", key="--read-token-file"
            )

    @property
    def writes_open(self) -> bool:
        return not self.write_token


def read_token_file(path: str, *, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key=key) from None
    if len(token) < 16 or len(token) > 4096 or not all("!" <= c <= "~" for c in token):
        raise ConfigError(f"{path}: a token is 16..4096 printable ASCII characters", key=key)
    return token


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_warnings(*, listen_host: str, access: Access, tls: bool, allow_nodes: bool) -> list[str]:
    """Refuse (``ConfigError``) a service open to the network; otherwise one warning line per
    thing left open."""
    loopback = is_loopback(listen_host)
    if access.writes_open and not loopback:
        raise ConfigError(
            f"--insecure-no-auth needs a loopback --listen, not {listen_host}", key="--listen"
        )
    if not loopback and not tls:
        raise ConfigError(
            f"listening on {listen_host} needs TLS (--listen-cert/--listen-key): the tokens "
            "would cross the network in clear (or listen on loopback behind a TLS proxy)",
            key="--listen",
        )
    out = []
    if access.writes_open:
        out.append(
            "OPEN: anyone who reaches the listener may register and remove nodes "
            "(--insecure-no-auth)"
        )
    if access.read_token is None:
        out.append(
            "OPEN: anyone who reaches the listener may read node URLs, verdicts and results "
            "(no --read-token-file)"
        )
    if not tls:
        out.append("OPEN: the listener is plain HTTP (no --listen-cert): loopback only")
    if not allow_nodes:
        out.append(
            "OPEN: nodes may be registered at any address, this service's own network "
            "included (no --allow-nodes)"
        )
    return out


_READS = frozenset({"GET", "HEAD"})
_ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})


def _presented(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The token in ``Authorization: Bearer <t>`` or ``Basic base64(user:<t>)``."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return rest.strip()
        if scheme.lower() == b"basic":
            try:
                return base64.b64decode(rest.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return None
    return None


def _matches(got: bytes | None, token: str | None) -> bool:
    return got is not None and token is not None and hmac.compare_digest(got, token.encode())


class TokenAuth:
    """Pure ASGI middleware: the token check of ``Access`` on every HTTP request."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _ALWAYS_OPEN:
            await self.app(scope, receive, send)
            return
        a = self.access
        got = _presented(scope.get("headers", ()))
        writer = _matches(got, a.write_token)
        if scope.get("method") in _READS:
            if a.read_token is None or writer or _matches(got, a.read_token):
                await self.app(scope, receive, send)
                return
            await _deny(send, 401, "this service needs its read or write token")
            return
        if a.writes_open or writer:
            await self.app(scope, receive, send)
            return
        if _matches(got, a.read_token):
            await _deny(send, 403, "the read token cannot change the fleet: use the write token")
            return
        await _deny(send, 401, "this endpoint needs the fleet's write token")


async def _deny(send: Send, status: int, detail: str) -> None:
    await json_reply(
        send,
        status,
        {
            "error": "Unauthorized" if status == 401 else "Forbidden",
            "check": "api-token",
            "detail": detail,
        },
        ((b"www-authenticate", b'Bearer realm="attest fleet", Basic realm="attest fleet"'),),
    )


# --- request bodies ---------------------------------------------------------------------------

MAX_BODY = 64 << 10  # a registration is a few URLs and ids: under 10 KiB


# --- errors -----------------------------------------------------------------------------------


class Error(BaseModel):
    """Every error answer of the fleet service, whatever its status (docs/fleet.md)."""

    error: str = Field(
        description="the error's class: NodeIdTaken, NodeUnreachable, DatabaseUnavailable, "
        "RequestValidationError, Unauthorized, NotFound, ..."
    )
    check: str | None = Field(description="the failed check or reason code; null when none")
    detail: str = Field(
        description="what went wrong, in at most 300 printable ASCII characters; never an echo "
        "of what a client or a node sent"
    )


# What each error status means on the fleet service, for the OpenAPI document.
ERROR_STATUSES: dict[int, str] = {
    401: "no token, or not this service's: writes need the write token; with a read token, "
    "reads need it or the write token (check: api-token)",
    403: "the read token on a write (check: api-token)",
    404: "no such node, no signed result yet, or no EAR signing key",
    409: "the node id is already enrolled: re-enrollment is explicit (re_enroll)",
    422: "the request breaks the schema (check: request-schema), or enrollment was refused "
    "(check: the failed check)",
    502: "the node did not answer as an attest node (check: node-unreachable)",
    503: "the fleet's database is unreachable (check: database; Retry-After), or the service "
    "has no enroller",
}


def error_responses(*statuses: int, plain: bool = False) -> dict[int | str, dict[str, Any]]:
    """An operation's OpenAPI ``responses`` for errors: each of ``statuses`` with the ``Error``
    schema, and ``default`` (any other error status, e.g. 500: the same shape). ``plain``: the
    route's own answer is not JSON (``/metrics``), its errors are: the schema is named by
    reference (FastAPI would file a model under the route's media type)."""

    def one(description: str) -> dict[str, Any]:
        if plain:
            schema = {"$ref": "#/components/schemas/Error"}
            return {"description": description, "content": {"application/json": {"schema": schema}}}
        return {"model": Error, "description": description}

    out: dict[int | str, dict[str, Any]] = {s: one(ERROR_STATUSES[s]) for s in sorted(statuses)}
    out["default"] = one("any other error, in the same shape")
    return out


_LOC_PART = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """Each failure's location (parts that are not plain names shown as ``?``) and pydantic's
    message (the rule, not the input): printable ASCII, at most ``MAX_DETAIL`` characters."""
    parts = []
    for e in errors:
        loc = ".".join(
            str(p) if isinstance(p, int) or _LOC_PART.match(str(p)) else "?"
            for p in e.get("loc", ())
        )
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return printable("; ".join(parts) or "the request does not match the schema")


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 for a request that breaks the schema: NaN, Infinity, 1e999 or a lone surrogate in a
    body (JSON extensions Python reads) included, which FastAPI's own answer, echoing the
    input, could not encode (a 500 with a traceback)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        {
            "error": "RequestValidationError",
            "check": "request-schema",
            "detail": describe_validation(exc.errors()),
        },
        status_code=422,
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """The service's and the framework's refusals (404, 405, 503, ...) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
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


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug (an exception no other handler maps): 500 in the same shape, naming nothing of the
    exception (the server logs it with its traceback)."""
    return JSONResponse(
        {
            "error": "InternalError",
            "check": None,
            "detail": "internal error (see the service's log)",
        },
        status_code=500,
    )


_PEER_TEXT = re.compile(r"(HTTP \d{3}): .*", re.DOTALL)


def without_peer_text(text: str) -> str:
    """A message about a peer without what the peer wrote: ``NodeClient`` reports an HTTP error
    as ``... HTTP <status>: <the peer's detail>``, and a check may quote that (a refused
    credential activation does); keep the status, drop the peer's words."""
    return _PEER_TEXT.sub(r"\1", text)


def printable(text: str) -> str:
    """``text`` as printable ASCII (others as ``?``), at most ``MAX_DETAIL`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def error_answer(status: int, exc: AttestError, detail: str) -> JSONResponse:
    """A refusal naming the error's class and check; the detail without a peer's words."""
    return JSONResponse(
        {
            "error": type(exc).__name__,
            "check": getattr(exc, "check", None),
            "detail": printable(without_peer_text(detail)),
        },
        status_code=status,
    )


def unreachable_answer(url: str, exc: Exception, layer: str | None = None) -> JSONResponse:
    """Whatever a peer answered (or whether anything listens at all): one fixed answer, the
    pair's layer named. The reason goes to the log, bounded."""
    logger.warning(
        "enrollment: no attest node at %s: %s: %s", url, type(exc).__name__, printable(str(exc))
    )
    return JSONResponse(
        {
            "error": "NodeUnreachable",
            "check": "node-unreachable",
            "detail": f"{layer + ' layer: ' if layer else ''}the node did not answer as an "
            "attest node",
        },
        status_code=502,
    )
