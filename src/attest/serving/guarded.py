"""uvicorn's HTTP/1.1 protocol with the bounds it lacks before a request reaches the app
(``attest.serving``; this module needs httptools)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 << 10
HEAD_DEADLINE = 10.0


def _answer(status: int, phrase: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "check": None, "detail": detail}).encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a head limit, a head deadline and JSON refusals."""

    max_head = MAX_HEAD
    head_deadline = HEAD_DEADLINE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0
        if self._head_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            raw = _answer(
                431,
                "Request Header Fields Too Large",
                "RequestHeadTooLarge",
                f"request line and headers over {self.max_head} bytes",
            )
        else:
            raw = _answer(400, "Bad Request", "BadRequest", "malformed HTTP request")
        self._disarm()
        self.transport.write(raw)
        self.transport.close()

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > self.max_head:
            self._head_too_large = True
            raise ValueError("head too large")  # the parser's error: send_400_response

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_deadline, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        detail = f"request line and headers not received within {self.head_deadline:g} s"
        self.transport.write(_answer(408, "Request Timeout", "RequestTimeout", detail))
        self.transport.close()
