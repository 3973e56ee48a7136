"""Frames over a connected stream socket (an adapter shared by the broker's server and client).
A frame is ``wire.HEADER`` (4-byte big-endian length) + body; see ``wire``."""

from __future__ import annotations

import socket
import time

from attest.errors import TransportError
from attest.node.broker.wire import HEADER, encode_frame, frame_length

_CHUNK = 256 * 1024


def _recv_exact(
    sock: socket.socket, n: int, *, eof_ok: bool = False, deadline: float | None = None
) -> bytes | None:
    """``n`` bytes; with ``deadline`` (``time.monotonic``) all of them by then, whatever the
    pace (a socket timeout bounds each ``recv``, not a peer that trickles a byte at a time)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("message not finished in time")
            sock.settimeout(left)
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
    """The next frame's body, or ``None`` on a clean end of stream before a frame. Its first
    byte is awaited with the socket's current timeout; the rest of the frame, header and body,
    must then arrive within ``body_timeout`` in all (a peer that starts a message must finish
    it promptly). Raises ``TransportError`` for an oversized or truncated frame and ``OSError``
    (e.g. ``TimeoutError``) from the socket."""
    first = _recv_exact(sock, 1, eof_ok=True)
    if first is None:
        return None
    deadline = None if body_timeout is None else time.monotonic() + body_timeout
    header = first + (_recv_exact(sock, HEADER.size - 1, deadline=deadline) or b"")
    n = frame_length(header, limit=limit)
    body = _recv_exact(sock, n, deadline=deadline)
    assert body is not None
    return body


def send_frame(sock: socket.socket, body: bytes, *, limit: int) -> None:
    sock.sendall(encode_frame(body, limit=limit))
