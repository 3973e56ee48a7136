"""A request body bounded in size and in time before any route reads it, and the JSON answer
both HTTP APIs give when they refuse in middleware (pure ASGI: attestd's API and ``attest fleet
serve`` share it).

``BodyLimit`` reads the whole (small, JSON) body itself: a declared ``Content-Length`` over
``limit`` -- or one that is not a number -- is refused with 413 before a byte is read, a
streamed body with 413 as soon as it passes ``limit``, and a body not received within
``deadline`` seconds with 408 (a client that stops sending holds no request for ever). Each
refusal closes the connection: the rest of the body is never read. The app then gets exactly
the bytes that were read. ``streaming`` names paths whose routes stream their bodies to disk
under limits of their own (attestd's image uploads, so that the refusal is recorded): for them
only a malformed ``Content-Length`` is refused here, and their error answers close the
connection (the rest of a refused upload is not read and discarded for as long as the client
sends it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_DEADLINE = 30.0  # seconds for a whole (small, JSON) body to arrive
CLOSE = ((b"connection", b"close"),)


async def json_reply(
    send: Send, status: int, body: Mapping[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``status`` with the JSON ``body`` (the APIs' ``{error, check, detail}``)."""
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
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


def too_large(limit: int) -> dict[str, Any]:
    return {"error": "RequestTooLarge", "check": None, "detail": f"request body over {limit} bytes"}


def _closing_on_refusal(send: Send) -> Send:
    """``send``, adding ``Connection: close`` to an error answer: a streaming route refuses
    (unauthenticated, too large, malformed) without reading the rest of a body that may be
    gigabytes, which the server would otherwise read and discard for as long as the client
    sends it."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"connection" for name, _ in headers):
                message = {**message, "headers": [*headers, *CLOSE]}
        await send(message)

    return wrapped


class BodyLimit:
    """Pure ASGI middleware: the request body bounded by ``limit`` bytes and ``deadline``
    seconds (the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        *,
        deadline: float = BODY_DEADLINE,
        streaming: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.deadline = deadline
        self.streaming = dict(streaming or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stream_limit = self.streaming.get(scope.get("path", ""))
        for name, value in scope.get("headers", ()):
            if name != b"content-length":
                continue
            if not value.isdigit():
                await json_reply(send, 413, too_large(stream_limit or self.limit), CLOSE)
                return
            if stream_limit is None and int(value) > self.limit:
                await json_reply(send, 413, too_large(self.limit), CLOSE)
                return
        if stream_limit is not None:  # the route reads it, under its own limit
            await self.app(scope, receive, _closing_on_refusal(send))
            return
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
                        await json_reply(send, 413, too_large(self.limit), CLOSE)
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            detail = f"request body not received within {self.deadline:g} s"
            await json_reply(
                send, 408, {"error": "RequestTimeout", "check": None, "detail": detail}, CLOSE
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
