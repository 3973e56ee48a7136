"""A host that replays an old quote: forwards identity requests (GET) to the real node and
answers every challenge (POST) with the same old evidence document, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Replay(BaseHTTPRequestHandler):
    upstream = ""
    old: bytes = b""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        with urllib.request.urlopen(self.upstream + self.path, timeout=10) as r:
            self._send(r.status, r.read())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, self.old)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def replaying(upstream: str, old: dict[str, Any]) -> Iterator[str]:
    """The URL of a host in front of ``upstream`` that answers every challenge with ``old``."""
    attrs = {"upstream": upstream, "old": json.dumps(old).encode()}
    with _serving(type("Replay", (_Replay,), attrs)) as url:
        yield url


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Splice(BaseHTTPRequestHandler):
    upstream = ""
    member = ""
    old: Any = None

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        with urllib.request.urlopen(self.upstream + self.path, timeout=10) as r:
            self._send(r.status, r.read())

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = urllib.request.Request(
            self.upstream + self.path, body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            doc = json.loads(r.read())
        if self.path == "/v1/evidence":
            doc[self.member] = self.old
        self._send(200, json.dumps(doc).encode())

    _send = _Replay._send
    log_message = _Replay.log_message


@contextlib.contextmanager
def splicing(upstream: str, member: str, old: Any) -> Iterator[str]:
    """The URL of a node in front of ``upstream`` that answers each challenge with the real
    node's fresh answer, but with ``member`` replaced by ``old`` (one half of an earlier
    answer: e.g. an SEV-SNP report from an earlier challenge beside a fresh vTPM quote)."""
    attrs = {"upstream": upstream, "member": member, "old": old}
    with _serving(type("Splice", (_Splice,), attrs)) as url:
        yield url
