"""What every clean refusal of hostile input must look like (``assert_refused_cleanly``). The
hostile peers themselves are ``attest.testing.hostile_peers`` (the benchmarks use them too)."""

from __future__ import annotations

import httpx

# Python's json extensions (NaN, Infinity, 1e999, lone surrogates) a refusal must not echo back.
ECHOES = ("NaN", "Infinity", "1e999", "ud800", "udfff", "\ud800", "\udfff")


def assert_refused_cleanly(r: httpx.Response) -> None:
    """A 4xx in the API's error shape, bounded, ASCII, echoing none of ``ECHOES``."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert len(r.content) < 1024
    doc = r.json()
    assert set(doc) == {"error", "check", "detail"}, doc
    assert isinstance(doc["detail"], str) and doc["detail"].isascii()
    for echo in ECHOES:
        assert echo not in r.text, (echo, r.text)


def raw_exchange(url: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is to the server at ``url`` (``http://host:port``) and return its first
    answer: read until it is complete (its ``content-length``), the server closes the
    connection or ``timeout`` seconds pass (the server may close before all of ``data`` is
    sent: what it answered is still read)."""
    import contextlib
    import socket
    import time
    from urllib.parse import urlsplit

    u = urlsplit(url)
    out = b""
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                got = s.recv(65536)
            except OSError:  # TimeoutError included
                break
            if not got:
                break
            out += got
            head, sep, body = out.partition(b"\r\n\r\n")
            length = [h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")]
            if sep and length and len(body) >= int(length[0].split(b":")[1]):
                break
    return out


def raw_error(answer: bytes) -> tuple[int, dict[str, object]]:
    """The status and the JSON error of a raw HTTP/1.1 answer, checked to be the APIs' error
    shape ``{error, check, detail}`` in ``application/json``."""
    import json

    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    assert b"content-type: application/json" in head.lower(), answer[:300]
    doc = json.loads(body)
    assert set(doc) == {"error", "check", "detail"}, doc
    return status, doc
