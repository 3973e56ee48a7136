"""``attest.serving.body.BodyLimit``, the one body bound of both HTTP APIs (attestd's and the
fleet's), driven as ASGI without a server: what reaches the app, and each refusal's answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from attest.serving.body import BodyLimit


def _run(
    limit: int,
    headers: list[tuple[bytes, bytes]],
    parts: list[bytes],
    *,
    path: str = "/v1/x",
    streaming: dict[str, int] | None = None,
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """The bodies the app read, and what was sent back (the app answers nothing)."""
    got: list[bytes] = []
    sent: list[dict[str, Any]] = []
    queue = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        got.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers}
    asyncio.run(BodyLimit(app, limit, streaming=streaming)(scope, receive, send))
    return got, sent


def _refusal(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    start, body = sent
    return start["status"], json.loads(body["body"]), dict(start["headers"])


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    got, sent = _run(10, [(b"content-length", b"10")], [b"01234", b"56789"])
    assert got == [b"0123456789"] and sent == []


@pytest.mark.parametrize("value", [b"11", b"+5", b"1_0", b" 5", b"0x5", b"", b"5.0", b"-1"])
def test_a_declared_length_over_the_limit_or_not_a_number_is_413_and_closes(value: bytes) -> None:
    got, sent = _run(10, [(b"content-length", value)], [b"x"])
    status, doc, headers = _refusal(sent)
    assert got == [] and status == 413
    assert doc == {
        "error": "RequestTooLarge",
        "check": None,
        "detail": "request body over 10 bytes",
    }
    assert headers[b"connection"] == b"close"


def test_a_streamed_body_is_cut_as_it_passes_the_limit() -> None:
    got, sent = _run(10, [], [b"0123456", b"789ab", b"never read"])
    status, _, headers = _refusal(sent)
    assert got == [] and status == 413 and headers[b"connection"] == b"close"


def test_a_streaming_route_reads_its_own_body_under_its_own_limit() -> None:
    """attestd's upload: a declared length over the small limit reaches the route (which
    records its own refusal); only a malformed length is refused here, naming the route's limit."""
    streaming = {"/v1/upgrades": 1000}
    got, sent = _run(
        10, [(b"content-length", b"500")], [b"x" * 500], path="/v1/upgrades", streaming=streaming
    )
    assert got == [b"x" * 500] and sent == []
    got, sent = _run(
        10, [(b"content-length", b"5e2")], [b"x"], path="/v1/upgrades", streaming=streaming
    )
    status, doc, _ = _refusal(sent)
    assert got == [] and status == 413 and doc["detail"] == "request body over 1000 bytes"
