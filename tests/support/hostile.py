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
