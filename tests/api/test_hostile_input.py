"""Bad JSON at attestd's public endpoint, through a real uvicorn server on 127.0.0.1: NaN,
Infinity, 1e999 and lone surrogates are Python's json extensions that FastAPI accepts and
then cannot encode back into its validation answer -- that was a 500 with a traceback logged
per request. Each must be a 4xx in the API's error shape, bounded, not echoing the input, and
log no traceback."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest
from tests.api.conftest import AppFactory
from tests.conftest import uvicorn_server
from tests.support.hostile import assert_refused_cleanly, raw_error, raw_exchange

from attest import serving
from attest.node.api.middleware import ChannelApp
from attest.serving.guarded import GuardedHttpToolsProtocol

NONCE = '"nonce": "' + "00" * 16 + '"'
# Python's json module reads these; RFC 8259 JSON has none of them.
BAD_BODIES = {
    "nan": '{"nonce": NaN}',
    "infinity": "{" + NONCE + ', "pcrs": {"sha256": [Infinity]}}',
    "minus-infinity": '{"nonce": -Infinity}',
    "1e999": "{" + NONCE + ', "logs": {"runtime": {"start": 1e999}}}',
    "lone-surrogate": '{"nonce": "\\ud800"}',
    "lone-surrogate-key": "{" + NONCE + ', "\\udfff": 1}',
    "lone-surrogate-bank": "{" + NONCE + ', "pcrs": {"\\ud800": [0]}}',
    "bare-nan": "NaN",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_non_standard_json_is_a_clean_4xx_at_attestd(
    name: str, app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO),
        uvicorn_server(ChannelApp(app_factory(), "public")) as url,
    ):
        r = httpx.post(
            f"{url}/v1/evidence",
            content=BAD_BODIES[name].encode(),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        ok = httpx.get(f"{url}/healthz", timeout=10)
    assert_refused_cleanly(r)
    assert r.status_code == 422 and r.json()["check"] == "request-schema"
    assert ok.status_code == 200  # the server is still serving
    tracebacks = [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    assert not tracebacks, [rec.getMessage() for rec in tracebacks]


def test_framework_refusals_have_the_error_shape(app_factory: AppFactory) -> None:
    with uvicorn_server(ChannelApp(app_factory(), "public")) as url:
        missing = httpx.get(f"{url}/v1/nothing-here", timeout=10)
        method = httpx.delete(f"{url}/v1/evidence", timeout=10)
        forbidden = httpx.post(f"{url}/v1/enroll/activate", json={}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    assert method.status_code == 405 and method.json()["error"] == "MethodNotAllowed"
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "Forbidden"
    for r in (missing, method, forbidden):
        assert set(r.json()) == {"error", "check", "detail"}, r.text


# --- every JSON body the OpenAPI describes, derived (tests/support/hostile_json.py) ------------


@pytest.mark.parametrize("channel", ["public", "operator"])
def test_every_body_field_refuses_non_standard_json_cleanly(
    channel: str, app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN, ±Infinity, ±1e999 and lone surrogates in every member of every POST body (and as
    the whole body, and as a dictionary key) of attestd's OpenAPI, and NaN/inf/1e999 in every
    numeric query parameter: each a 4xx in the error shape, echoing nothing, no traceback."""
    from tests.support.hostile_json import cases, check_refusal, param_cases

    app = app_factory()
    todo = cases(app.fastapi.openapi()) + param_cases(app.fastapi.openapi())
    assert {c.path for c in todo} >= {"/v1/evidence", "/v1/enroll/activate"}
    assert any(c.path.startswith("/v1/audit?start=") for c in todo)
    with (
        caplog.at_level(logging.INFO),
        uvicorn_server(ChannelApp(app, channel)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for case in todo:
            r = client.request(
                case.method.upper(),
                case.path,
                content=case.body,
                headers={"content-type": "application/json"} if case.body else {},
            )
            check_refusal(case, r.status_code, r.text)
        assert client.get("/healthz").status_code == 200
    tracebacks = [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    assert not tracebacks, [rec.getMessage() for rec in tracebacks]


# --- before the app: the request's head, and a body that stops arriving ------------------------


class _QuickGuard(GuardedHttpToolsProtocol):
    head_deadline = 0.5


def test_attestd_parses_requests_with_the_guarded_protocol() -> None:
    assert serving.protocol() is GuardedHttpToolsProtocol  # httptools: a [node] requirement


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20000 + b"\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["one-huge-header", "many-headers", "huge-path"],
)
def test_a_request_head_over_the_limit_is_a_431(app_factory: AppFactory, head: bytes) -> None:
    """uvicorn's httptools protocol kept every header it was sent: a client streaming headers
    without end grew attestd's memory (200 MB of headers: +200 MB) before any route ran."""
    with uvicorn_server(ChannelApp(app_factory(), "public"), http=serving.protocol()) as url:
        status, doc = raw_error(raw_exchange(url, head))
        assert status == 431 and doc["error"] == "RequestHeadTooLarge", doc
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_malformed_request_is_a_400_in_the_error_shape(app_factory: AppFactory) -> None:
    with uvicorn_server(ChannelApp(app_factory(), "public"), http=serving.protocol()) as url:
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"):
            status, doc = raw_error(raw_exchange(url, raw))
            assert status == 400 and doc["error"] == "BadRequest", doc


def test_a_client_that_never_finishes_its_head_is_cut_off(app_factory: AppFactory) -> None:
    """A connection that sends nothing, or a head trickled without end (first request or a
    kept-alive connection's next one), held its connection for ever: uvicorn arms no timer
    before a first response."""
    with uvicorn_server(ChannelApp(app_factory(), "public"), http=_QuickGuard) as url:
        for partial in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "):
            t0 = time.monotonic()
            status, doc = raw_error(raw_exchange(url, partial, timeout=10))
            assert status == 408 and doc["error"] == "RequestTimeout", doc
            assert time.monotonic() - t0 < 5
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 "), first
            s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
        assert rest.startswith(b"HTTP/1.1 408 "), rest


def test_a_body_that_stops_arriving_is_a_408(app_factory: AppFactory) -> None:
    """A declared body never sent in full (or a chunked one without its last chunk) held the
    request, and its connection, for ever."""
    app = app_factory()
    app.deadline = 0.5  # BodyLimit's (attest.serving.body), default 30 s
    head = b"POST /v1/evidence HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with uvicorn_server(ChannelApp(app, "public"), http=serving.protocol()) as url:
        for raw in (
            head + b"Content-Length: 100\r\n\r\n{",
            head + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
        ):
            t0 = time.monotonic()
            status, doc = raw_error(raw_exchange(url, raw, timeout=10))
            assert status == 408 and doc["error"] == "RequestTimeout", doc
            assert time.monotonic() - t0 < 5
