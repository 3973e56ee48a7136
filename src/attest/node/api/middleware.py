"""Pure ASGI middleware: listener channel, request size limit, per-client rate limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Which listener a request came in on: "public" (TCP, anyone), "mtls" (TCP, client certificate
# verified against the configured CA during the TLS handshake), "operator" (the local Unix
# socket, file-permission protected). Mutating endpoints accept only mtls and operator.
CHANNEL_KEY = "attest.channel"
TRUSTED_CHANNELS = frozenset({"mtls", "operator"})


class ChannelApp:
    """Marks every request with the listener it arrived on."""

    def __init__(self, app: ASGIApp, channel: str) -> None:
        self.app = app
        self.channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[CHANNEL_KEY] = self.channel
        await self.app(scope, receive, send)


async def _reply(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


BODY_DEADLINE = 30.0  # seconds for a whole (small, JSON) body to arrive


class SizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced by
    Content-Length or streamed in chunks, and bodies not received within ``deadline`` seconds
    with 408 (a client that stops sending holds no request for ever)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        *,
        streaming: dict[str, int] | None = None,
        deadline: float = BODY_DEADLINE,
    ) -> None:
        self.app = app
        self.limit = limit
        self.deadline = deadline
        # Paths whose bodies are streamed to disk by their route (image uploads), with their
        # own limits: the route refuses a declared or streamed length over the limit itself,
        # so that the refusal is recorded (``upload-too-large``); only a malformed
        # Content-Length is refused here.
        self.streaming = streaming or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stream_limit = self.streaming.get(scope.get("path", ""))
        if stream_limit is not None:
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and not value.isdigit():
                    await _reply(send, 413, _too_large(stream_limit))
                    return
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    await _reply(send, 413, _too_large(self.limit))
                    return
        # Read the (small, JSON) body here, bounded, so an over-long chunked body is refused
        # with 413 before any route sees it; then hand the app exactly what was read.
        chunks: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.deadline):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    body = message.get("body", b"")
                    seen += len(body)
                    if seen > self.limit:
                        await _reply(send, 413, _too_large(self.limit))
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            detail = f"request body not received within {self.deadline:g} s"
            await _reply(
                send,
                408,
                {"error": "RequestTimeout", "check": None, "detail": detail},
                [(b"connection", b"close")],
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> dict[str, Any]:
    return {"error": "RequestTooLarge", "check": None, "detail": f"request body over {limit} bytes"}


class RateLimit:
    """Token bucket per client address; the operator socket is not limited. Memory is
    bounded: at most ``max_clients`` buckets, the least recently seen evicted first."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        burst: int,
        max_clients: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(CHANNEL_KEY) == "operator":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "?"
        now = self.clock()
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            self.refused += 1
            retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
            await _reply(
                send,
                429,
                {
                    "error": "RateLimited",
                    "check": None,
                    "detail": "too many requests from this address",
                },
                [(b"retry-after", str(retry).encode())],
            )
            return
        self.buckets[key] = (tokens - 1.0, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        await self.app(scope, receive, send)
