"""Frames over a connected stream socket (an adapter shared by the broker's server and client).
A frame is ``wire.HEADER`` (4-byte big-endian length) + body; see ``wire``."""

from __future__ import annotations

import socket

from attest.errors import TransportError
from attest.node.broker.wire import HEADER, encode_frame, frame_length

_CHUNK = 256 * 1024


def _recv_exact(sock: socket.socket, n: int, *, eof_ok: bool = False) -> bytes | None:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, _CHUNK))
        if not chunk:
            if eof_ok and got == 0:
                return None
            raise TransportError("connection closed in the middle of a message")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_frame(
    sock: socket.socket, *, limit: int, body_timeout: float | None = None
) -> bytes | None:
    """The next frame's body, or ``None`` on a clean end of stream before a frame. The header
    is awaited with the socket's current timeout, the body with ``body_timeout`` (a peer that
    starts a message must finish it promptly). Raises ``TransportError`` for an oversized or
    truncated frame and ``OSError`` (e.g. ``TimeoutError``) from the socket."""
    header = _recv_exact(sock, HEADER.size, eof_ok=True)
    if header is None:
        return None
    n = frame_length(header, limit=limit)
    if body_timeout is not None:
        sock.settimeout(body_timeout)
    body = _recv_exact(sock, n)
    assert body is not None
    return body


def send_frame(sock: socket.socket, body: bytes, *, limit: int) -> None:
    sock.sendall(encode_frame(body, limit=limit))
