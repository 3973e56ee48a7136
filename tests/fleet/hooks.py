"""A webhook receiver on 127.0.0.1 for the outbox tests: it checks every signature and the
``Idempotency-Key`` header, and counts how often each event id arrived. It is down (nothing
listens on its port: connection refused) until ``start`` and after ``stop``."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from attest.errors import WebhookSignatureError
from attest.testing.pg import free_port
from attest.verifier.fleet.outbox import OutboxEvent
from attest.verifier.fleet.webhooks import IDEMPOTENCY_HEADER, verify_signature

SECRET = b"0123456789abcdef-outbox-secret"


class Receiver:
    def __init__(self, secret: bytes = SECRET, *, delay: float = 0.0) -> None:
        self.secret = secret
        self.delay = delay  # seconds per request (lets concurrent senders overlap)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.deliveries: Counter[str] = Counter()
        self.events: dict[str, dict[str, Any]] = {}
        self.bad: list[str] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.receive(dict(self.headers.items()), body)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        try:
            event = verify_signature(self.secret, headers, body, now=time.time())
        except WebhookSignatureError as exc:
            with self.lock:
                self.bad.append(str(exc))
            return 401
        if headers.get(IDEMPOTENCY_HEADER) != event["id"]:
            with self.lock:
                self.bad.append(f"Idempotency-Key {headers.get(IDEMPOTENCY_HEADER)!r}")
            return 400
        time.sleep(self.delay)
        with self.lock:
            self.deliveries[event["id"]] += 1
            self.events[event["id"]] = event
        return 204

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def duplicates(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.deliveries.items() if v > 1}

    def received(self) -> set[str]:
        with self.lock:
            return set(self.deliveries)


def make_event(i: int, at: float = 100.0) -> OutboxEvent:
    """A small event with the shape of the real ones (its unique id in the body)."""
    eid = f"{i:032x}"
    return OutboxEvent(eid, json.dumps({"event": "test", "id": eid, "n": i}), at)
