"""A minimal asyncio HTTP/1.1 keep-alive client for the node API (an adapter).

The poller makes ~1,000 requests per second from one process; httpx's async pool tops out
near 300 here, so the hot path uses this: one request at a time per connection, a bounded pool
of idle connections per origin, ``Content-Length`` and chunked bodies, a hard size limit
(``max_response``: a declared length over it is refused before reading, a chunked body is cut
at it), one total deadline per request (``timeout``: connect, send, headers and body together;
a trickling peer is cut off when it passes), and the peer's TLS key binding (sha256 of its
SubjectPublicKeyInfo) for evidence bound to the TLS channel. Anything it cannot read raises
``TransportError``.

Memory: each answer may hold ``SMALL_ANSWER`` bytes of its own; beyond that it draws on one
budget shared by every answer being read (``max_buffered``). An answer that would overdraw it
is refused (``ReadBudgetSpent``; the poller asks that node again shortly without counting a
failure). So N peers streaming endless bodies hold at most N x ``SMALL_ANSWER`` +
``max_buffered`` bytes, not N x ``max_response`` (bench/peer_memory.py measures it).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from attest.errors import ReadBudgetSpent, TransportError

MAX_RESPONSE = 16 << 20
MAX_HEADER = 64 << 10
SMALL_ANSWER = 256 << 10  # held by an answer without drawing on the shared budget
MAX_BUFFERED = 16 << 20  # shared by all answers being read, beyond their SMALL_ANSWER


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # the URL's path, without a trailing slash: "/n/17" for a simulated node

    @classmethod
    def parse(cls, url: str) -> Origin:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        return cls(u.scheme, u.hostname, port, u.path.rstrip("/"))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    tls_binding: bytes | None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except ValueError:
            raise TransportError("the answer is not JSON") from None


class _OverBudget(Exception):  # noqa: N818 - internal, becomes ReadBudgetSpent
    """An answer that would overdraw the pool's shared budget."""


class _Drawn:
    """What one answer has drawn on its pool's shared budget."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class _Conn:
    __slots__ = ("reader", "writer", "binding")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.binding: bytes | None = None
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is not None:
            der = sslobj.getpeercert(binary_form=True)
            if der:
                self.binding = _spki_binding(der)

    def close(self) -> None:
        self.writer.close()


def _spki_binding(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(spki).digest()


class HttpPool:
    """Keep-alive connections per origin, at most ``max_idle`` idle ones kept per origin."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_idle: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        max_response: int = MAX_RESPONSE,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.timeout = timeout
        self.max_response = max_response
        self.max_buffered = max_buffered
        self.buffered = 0  # drawn on the shared budget now (one event loop: no lock)
        self.over_budget = 0  # answers refused because the budget was held by others
        self.max_idle = max_idle
        self.ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.opened = 0

    async def _connect(self, origin: Origin) -> _Conn:
        ctx = None
        if origin.scheme == "https":
            ctx = self.ssl_context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            origin.host, origin.port, ssl=ctx, limit=MAX_HEADER
        )
        self.opened += 1
        return _Conn(reader, writer)

    async def request(
        self, origin: Origin, method: str, path: str, body: Mapping[str, Any] | bytes | None = None
    ) -> Response:
        """One request on ``origin``'s prefix + ``path``; raise ``TransportError`` on any
        connection problem, timeout or malformed answer (the status is the caller's)."""
        data = orjson.dumps(body) if isinstance(body, Mapping) else (body or b"")
        head = (
            f"{method} {origin.prefix}{path} HTTP/1.1\r\nHost: {origin.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        where = f"{origin.scheme}://{origin.host}:{origin.port}{origin.prefix}{path}"
        try:
            async with asyncio.timeout(self.timeout):
                idle = self._idle.get(origin.key)
                if idle:
                    conn = idle.pop()
                    try:
                        status, payload, keep = await self._exchange(conn, head + data)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        # The server closed an idle keep-alive connection: one fresh retry.
                        conn.close()
                        conn = await self._connect(origin)
                        status, payload, keep = await self._exchange(conn, head + data)
                else:
                    conn = await self._connect(origin)
                    status, payload, keep = await self._exchange(conn, head + data)
        except TimeoutError:
            raise TransportError(
                f"{where}: no complete answer within the deadline of {self.timeout:g} s"
            ) from None
        except _OverBudget as exc:
            raise ReadBudgetSpent(f"{where}: {exc}") from None
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ssl.SSLError,
        ) as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {exc}") from None
        binding = conn.binding
        if keep:
            pool = self._idle.setdefault(origin.key, [])
            if len(pool) < self.max_idle:
                pool.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return Response(status, payload, binding)

    async def _exchange(self, conn: _Conn, raw: bytes) -> tuple[int, bytes, bool]:
        conn.writer.write(raw)
        await conn.writer.drain()
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError("not an HTTP/1.x status line")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                keep = v == b"keep-alive" or (keep and v != b"close")
        drawn = _Drawn()  # this answer's share of the budget, given back however it ends
        try:
            if chunked:
                return status, await self._chunked(conn.reader, drawn), keep
            if length is None:
                raise ValueError("no Content-Length")
            if not 0 <= length <= self.max_response:
                raise ValueError(
                    f"response of {length} bytes, over the limit of {self.max_response} bytes"
                )
            self._draw(drawn, length)
            return status, await conn.reader.readexactly(length), keep
        finally:
            self.buffered -= drawn.bytes

    def _draw(self, drawn: _Drawn, size: int) -> None:
        """Account for an answer reaching ``size`` bytes: beyond ``SMALL_ANSWER`` from the
        shared budget, or ``ValueError`` when the other answers being read hold it."""
        need = max(0, size - SMALL_ANSWER) - drawn.bytes
        if need <= 0:
            return
        if self.buffered + need > self.max_buffered:
            self.over_budget += 1
            raise _OverBudget(
                f"an answer of {size} bytes or more: the pool's budget of {self.max_buffered} "
                "bytes for answers being read is held by other answers"
            )
        self.buffered += need
        drawn.bytes += need

    async def _chunked(self, reader: asyncio.StreamReader, drawn: _Drawn) -> bytes:
        # The chunks are kept as they came and joined once at the end: a growing buffer would
        # be copied at each reallocation (twice the memory, for a moment, per answer).
        parts: list[bytes] = []
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected; the final CRLF
                return b"".join(parts)
            if not 0 < total + size <= self.max_response:
                raise ValueError(f"chunked response over the limit of {self.max_response} bytes")
            total += size
            self._draw(drawn, total)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
