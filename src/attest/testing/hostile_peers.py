"""Hostile peers on 127.0.0.1 for the client-side tests and ``bench/peer_memory.py``: a raw
HTTP/1.1 server that answers every request in one chosen, bad way, counting the bytes it
managed to send.

Behaviours: ``endless`` (200, a chunked body that never ends), ``trickle`` (200 with a
``Content-Length`` of a megabyte, sent one byte every 50 ms), ``trickle-headers`` (the status
line and headers one byte every 50 ms, never finished), ``huge-length`` (declares a 1 TB body,
sends a little), ``reflect`` (a 418 whose JSON ``detail`` and text carry ``MARKER``),
``json`` (200 with a JSON object that is no attest identity), and, not hostile, ``large`` (200,
a complete chunked JSON object of ``LARGE`` bytes: a big honest answer).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

MARKER = "SECRET-FROM-INTERNAL-SERVICE"
BEHAVIOURS = ("endless", "trickle", "trickle-headers", "huge-length", "reflect", "json", "large")
LARGE = 2 << 20


class HostileServer:
    """``identity``: a JSON document answered to ``GET /v1/identity`` (a node that passes for
    an attest node until the verifier asks for evidence); every other request gets the
    behaviour."""

    def __init__(self, behaviour: str, *, identity: bytes | None = None) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(behaviour)
        self.behaviour = behaviour
        self.identity = identity
        self.sent = 0  # bytes written to all clients
        self.requests: list[bytes] = []  # each request's head
        self.stop = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self._lock:
            self.sent += len(data)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                more = sock.recv(4096)
                if not more:
                    return
                head += more
            self.requests.append(head.split(b"\r\n\r\n")[0])
            if self.identity is not None and head.startswith(b"GET /v1/identity "):
                self._send(
                    sock,
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(self.identity), self.identity),
                )
                return
            getattr(self, "_" + self.behaviour.replace("-", "_"))(sock)
        except OSError:
            pass  # the client hung up: what the bounded client must do

    def _endless(self, sock: socket.socket) -> None:
        self._send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        self._send(sock, b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        while not self.stop.is_set():
            self._send(sock, chunk)

    def _trickle(self, sock: socket.socket) -> None:
        self._send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        self._send(sock, b"Content-Length: 1048576\r\n\r\n{")
        while not self.stop.is_set():
            time.sleep(0.05)
            self._send(sock, b" ")

    def _trickle_headers(self, sock: socket.socket) -> None:
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000:
            if self.stop.is_set():
                return
            time.sleep(0.05)
            self._send(sock, bytes([b]))

    def _huge_length(self, sock: socket.socket) -> None:
        self._send(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
        self._send(sock, b"{" + b" " * 65536)
        self.stop.wait(10)

    def _reflect(self, sock: socket.socket) -> None:
        body = json.dumps({"detail": f"{MARKER}: internal admin page"}).encode()
        self._send(
            sock,
            b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
        )

    def _large(self, sock: socket.socket) -> None:
        self._send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        self._send(sock, b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        body = b'{"pad": "' + b"a" * (LARGE - 11) + b'"}'
        for i in range(0, len(body), 65536):
            part = body[i : i + 65536]
            self._send(sock, b"%x\r\n%s\r\n" % (len(part), part))
        self._send(sock, b"0\r\n\r\n")

    def _json(self, sock: socket.socket) -> None:
        body = json.dumps({"service": MARKER, "ak": [1, 2]}).encode()
        self._send(
            sock,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
        )


@contextlib.contextmanager
def hostile(behaviour: str, *, identity: bytes | None = None) -> Iterator[HostileServer]:
    srv = HostileServer(behaviour, identity=identity)
    try:
        yield srv
    finally:
        srv.close()
