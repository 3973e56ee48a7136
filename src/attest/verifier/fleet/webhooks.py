"""Signed webhooks on every change of a node's verdict (an adapter).

Each event is a JSON POST::

    {"event": "verdict-changed", "node_id": ..., "from": ..., "to": ..., "explanation": ...,
     "first_divergence": ..., "release": ..., "at": ISO 8601, "id": unique event id,
     "enrollment_strength": ek-chain+activated | activated | tofu,
     "ear": the signed EAR of the appraisal that changed it (or null),
     "failed_layer"?, "layers"?: {"host": {...}, "guest": {...}} for a host + guest pair}

and, when a node's verdict stops being current (``attest.verifier.fleet.staleness``: not
appraised within the freshness bound) and when it is current again::

    {"event": "node-stale" | "node-fresh", "node_id": ..., "verdict": the stored verdict,
     "age": seconds since its last appraisal (or null), "last_appraised": ISO 8601 (or null),
     "at": ISO 8601, "id": unique event id, "enrollment_strength": ...}

each with ``X-Attest-Timestamp: <unix seconds>`` and ``X-Attest-Signature: sha256=<hex>``, the
HMAC-SHA256 under the shared secret of ``<timestamp>.<body>`` (the receiver recomputes it over
the raw body, compares in constant time, and rejects stale timestamps to stop replays:
``verify_signature``). Delivery is at least once: a bounded queue (the oldest event is dropped
and counted when it is full), retries with exponential backoff on errors and non-2xx answers.
Only the receiver's status is read, never its body, and each attempt has one total deadline
(``timeout``: connect, send and the answer's headers together), so a receiver that trickles or
streams without end holds a sender for ``timeout`` at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from attest.errors import WebhookSignatureError
from attest.verifier.fleet.model import NodeRow, iso
from attest.verifier.fleet.store import Outcome

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Attest-Signature"
TIMESTAMP_HEADER = "X-Attest-Timestamp"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float = 300.0
) -> dict[str, Any]:
    """For receivers: the event, if the signature is ours and fresh; raise otherwise."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lower[TIMESTAMP_HEADER.lower()])
        got = lower[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        raise WebhookSignatureError("missing or malformed signature headers") from None
    if abs(now - ts) > tolerance:
        raise WebhookSignatureError(f"timestamp {ts} is more than {tolerance:g} s from now")
    if not hmac.compare_digest(sign(secret, ts, body), got):
        raise WebhookSignatureError("the signature does not match the body")
    doc: dict[str, Any] = json.loads(body)
    return doc


@dataclass
class WebhookMetrics:
    queued: int = 0
    sent: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    given_up: int = 0


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        max_queue: int = 10000,
        attempts: int = 6,
        backoff: float = 0.5,
        timeout: float = 5.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the webhook secret must be at least 16 bytes")
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.metrics = WebhookMetrics()

    def notify(self, o: Outcome) -> None:
        """Queue the event for a verdict change (never blocks the poller)."""
        event: dict[str, Any] = {
            "event": "verdict-changed",
            "id": secrets.token_hex(8),
            "node_id": o.node_id,
            "from": o.previous_verdict,
            "to": o.verdict,
            "explanation": o.explanation,
            "first_divergence": o.first_divergence,
            "release": o.release,
            "enrollment_strength": o.enrollment,
            "at": datetime.fromtimestamp(o.at, UTC).isoformat(),
            "ear": o.ear,
        }
        if o.layers is not None:  # a host + guest pair: each layer's verdict and explanation
            event["failed_layer"] = o.layers.get("failed_layer")
            event["layers"] = {
                name: {k: lay.get(k) for k in ("node_id", "verdict", "explanation", "release")}
                for name, lay in o.layers.items()
                if name in ("host", "guest") and isinstance(lay, dict)
            }
        self._enqueue(event)

    def notify_freshness(self, n: NodeRow, *, stale: bool, age: float | None, now: float) -> None:
        """Queue a ``node-stale`` (or ``node-fresh``) event: the node's verdict stopped (or
        started again) being current."""
        self._enqueue(
            {
                "event": "node-stale" if stale else "node-fresh",
                "id": secrets.token_hex(8),
                "node_id": n.node_id,
                "verdict": n.verdict,
                "age": None if age is None else round(age, 3),
                "last_appraised": iso(n.last_appraised),
                "enrollment_strength": n.enrollment,
                "at": iso(now),
            }
        )

    def _enqueue(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.metrics.dropped += 1
            logger.warning("webhook queue full: oldest event dropped")
        self.queue.put_nowait(event)
        self.metrics.queued += 1

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            while not (stop.is_set() and self.queue.empty()):
                try:
                    event = await asyncio.wait_for(self.queue.get(), 0.2)
                except TimeoutError:
                    continue
                await self._deliver(client, event, stop)

    async def _deliver(
        self, client: httpx.AsyncClient, event: dict[str, Any], stop: asyncio.Event
    ) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(self.secret, ts, body),
            }
            try:
                async with asyncio.timeout(self.timeout):
                    status = await self._post(client, body, headers)
                if 200 <= status < 300:
                    self.metrics.sent += 1
                    return
                why = f"HTTP {status}"
            except TimeoutError:
                why = f"no answer within the deadline of {self.timeout:g} s"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            self.metrics.failed_attempts += 1
            logger.info("webhook delivery failed", extra={"attempt": attempt, "error": why})
            if attempt < self.attempts and not stop.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        self.metrics.given_up += 1
        logger.warning("webhook event given up", extra={"event_id": event["id"]})

    async def _post(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> int:
        """The receiver's status; its body is never read (the connection is closed)."""
        async with client.stream("POST", self.url, content=body, headers=headers) as r:
            return r.status_code
