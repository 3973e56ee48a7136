"""Signed webhooks on every change of a node's verdict, delivered from an outbox in the fleet's
database (an adapter).

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
``verify_signature``), and ``Idempotency-Key: <id>``, the event's ``id`` (128 random bits).

Delivery is at least once, so receivers deduplicate on ``id`` (the signed body's; the header
repeats it). Events wait in the ``webhook_outbox`` table of the fleet's database
(``attest.verifier.fleet.outbox``), not in memory: a verdict change's event is written in the
transaction that records the change; a ``node-stale`` / ``node-fresh`` event right after the
watcher builds it. An event is deleted only after the receiver answered 2xx, so events outlive
a stopped or killed ``fleet serve`` (the next one, or another worker on the same database,
delivers them) and a receiver outage of any length (bounded by ``max_events``, below).

The sender (one per worker) claims the oldest due event, POSTs it, and deletes it on a 2xx.
On a failure (an error, a non-2xx status, no answer within ``timeout``) the event's own next
attempt moves back (``backoff`` doubling per failed attempt of that event, at most
``max_backoff``) and the sender itself pauses as long before its next attempt (doubling per
consecutive failure), so a receiver that is down gets one attempt per pause, not one per event,
and one event the receiver keeps refusing does not hold up the others. No event is ever given
up: it is retried until a 2xx or until the bound drops it. Several workers on one PostgreSQL
database share the outbox: a claim (``claimed_until``: 2 x ``timeout`` + 5 s) keeps other
workers off an event while one delivers it; a worker that dies mid-delivery leaves its claim to
expire, and the event may then reach the receiver twice.

The bound: at most ``max_events`` undelivered events (default 100,000, ``fleet serve
--webhook-outbox-max``), counted every ``poll`` seconds; beyond it the oldest are deleted,
counted in ``metrics.dropped`` (``attest_fleet_webhooks_dropped_total``) and logged.
While the database is unreachable, the watcher's events are held in this process's memory
(at most ``max_held``, oldest dropped and counted), sent from there, and written to the outbox
as soon as the database answers; only these die with the process.

Only the receiver's status is read, never its body, and each attempt has one total deadline
(``timeout``: connect, send and the answer's headers together), so a receiver that trickles or
streams without end holds a sender for ``timeout`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from attest.appraisal.layers import LAYERS as PAIR_LAYERS
from attest.errors import DatabaseUnavailable, WebhookSignatureError
from attest.verifier.fleet.config import DEFAULT_OUTBOX_MAX
from attest.verifier.fleet.model import NodeRow, iso
from attest.verifier.fleet.outbox import ClaimedEvent, OutboxEvent, OutboxStore
from attest.verifier.fleet.store import Outcome

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Attest-Signature"
TIMESTAMP_HEADER = "X-Attest-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"

T = TypeVar("T")


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


def _event(doc: dict[str, Any], at: float) -> OutboxEvent:
    doc = {"id": secrets.token_hex(16), **doc}
    return OutboxEvent(doc["id"], json.dumps(doc, separators=(",", ":")), at)


def verdict_event(o: Outcome) -> OutboxEvent:
    """The ``verdict-changed`` event of an outcome (stored with it: ``Outcome.event``)."""
    doc: dict[str, Any] = {
        "event": "verdict-changed",
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
        doc["failed_layer"] = o.layers.get("failed_layer")
        doc["layers"] = {
            name: {k: lay.get(k) for k in ("node_id", "verdict", "explanation", "release")}
            for name, lay in o.layers.items()
            if name in PAIR_LAYERS and isinstance(lay, dict)
        }
    return _event(doc, o.at)


def freshness_event(n: NodeRow, *, stale: bool, age: float | None, now: float) -> OutboxEvent:
    """A ``node-stale`` (or ``node-fresh``) event: the verdict stopped (started) being current."""
    doc = {
        "event": "node-stale" if stale else "node-fresh",
        "node_id": n.node_id,
        "verdict": n.verdict,
        "age": None if age is None else round(age, 3),
        "last_appraised": iso(n.last_appraised),
        "enrollment_strength": n.enrollment,
        "at": iso(now),
    }
    return _event(doc, now)


@dataclass
class WebhookMetrics:
    sent: int = 0  # delivered (2xx) by this worker
    failed_attempts: int = 0
    dropped: int = 0  # oldest undelivered events dropped at the bound, by this worker
    pending: int = 0  # undelivered events in the outbox (every worker's) at the last count


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    max_events: int = DEFAULT_OUTBOX_MAX  # undelivered events kept in the outbox
    backoff: float = 0.5  # seconds after the first failed attempt; doubling
    max_backoff: float = 60.0
    timeout: float = 5.0  # one attempt, all told
    poll: float = 1.0  # seconds between two looks at an empty outbox (other workers' events)
    max_held: int = 10_000  # events held in memory while the database is unreachable

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_held < 1:
            raise ValueError("the webhook bounds must be at least 1")
        if min(self.backoff, self.max_backoff, self.timeout, self.poll) <= 0:
            raise ValueError("webhook times must be positive")

    @property
    def claim_ttl(self) -> float:
        """How long a claim keeps other senders off an event (one attempt fits twice)."""
        return 2 * self.timeout + 5.0

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` consecutive failed attempts."""
        return min(self.backoff * 2.0 ** max(0, min(failures, 40) - 1), self.max_backoff)


class _Round(enum.Enum):
    SENT = "sent"  # delivered something: go on at once
    IDLE = "idle"  # nothing due (or the database is away): wait for an event or ``poll``
    FAILED = "failed"  # the receiver failed: pause with backoff


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        store: OutboxStore,
        worker_id: str,
        settings: WebhookSettings | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the webhook secret must be at least 16 bytes")
        self.url = url
        self.secret = secret
        self.store = store
        self.worker_id = worker_id
        self.settings = settings or WebhookSettings()
        self.metrics = WebhookMetrics()
        self.held: deque[OutboxEvent] = deque()  # not yet in the outbox (database away)
        self._wake = asyncio.Event()
        self._db: ThreadPoolExecutor | None = None
        self._counted = -float("inf")  # monotonic time of the last count of the outbox
        self._failures = 0  # consecutive failed attempts

    # --- enqueueing (never blocks the caller) ------------------------------------------------

    def notify(self, o: Outcome) -> None:
        """A verdict change was stored with its event (the poller's ``on_change``): look now."""
        self._wake.set()

    def notify_freshness(self, n: NodeRow, *, stale: bool, age: float | None, now: float) -> None:
        """Queue a ``node-stale`` (or ``node-fresh``) event: held in memory until the sender
        writes it to the outbox (at once while the database answers)."""
        self._hold(freshness_event(n, stale=stale, age=age, now=now))

    def _hold(self, event: OutboxEvent) -> None:
        if len(self.held) >= self.settings.max_held:
            self.held.popleft()
            self.metrics.dropped += 1
            logger.warning(
                "webhook events held in memory (database unreachable) over the bound of %d: "
                "the oldest dropped",
                self.settings.max_held,
            )
        self.held.append(event)
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; what is left stays in the outbox for the next run."""
        s = self.settings
        with ThreadPoolExecutor(1, thread_name_prefix="fleet-webhooks") as self._db:
            async with httpx.AsyncClient(timeout=s.timeout) as client:
                while not stop.is_set():
                    self._wake.clear()
                    try:
                        result = await self._round(client, stop)
                    except Exception:  # a bug or an unexpected database error: retry later
                        logger.exception("webhook outbox round failed")
                        result = _Round.IDLE
                    if result is _Round.FAILED:
                        await self._pause(stop, s.delay(self._failures), wake=False)
                    elif result is _Round.IDLE:
                        await self._pause(stop, s.poll, wake=True)
            with contextlib.suppress(Exception):  # best effort: keep held events on the way out
                await self._save_held()
        self._db = None

    async def _pause(self, stop: asyncio.Event, seconds: float, *, wake: bool) -> None:
        waits = [asyncio.ensure_future(stop.wait())]
        if wake:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A store call on the sender's own thread (off the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args, **kw))

    async def _round(self, client: httpx.AsyncClient, stop: asyncio.Event) -> _Round:
        db_up = await self._save_held() and await self._count()
        if not db_up:
            # The database is away: what is held is sent from memory; the outbox waits.
            return await self._send_held(client) if self.held else _Round.IDLE
        try:
            claimed = await self._call(
                self.store.outbox_claim,
                self.worker_id,
                now=time.time(),
                limit=1,
                ttl=self.settings.claim_ttl,
            )
        except DatabaseUnavailable:  # logged by the store once per outage
            return _Round.IDLE
        if not claimed:
            return _Round.IDLE
        return await self._send_claimed(client, claimed, stop)

    async def _save_held(self) -> bool:
        """Write the held events to the outbox; False while the database is unreachable."""
        if not self.held:
            return True
        batch = list(self.held)
        try:
            await self._call(self.store.outbox_add, batch)
        except DatabaseUnavailable:
            return False
        saved = {e.id for e in batch}
        self.held = deque(e for e in self.held if e.id not in saved)
        return True

    async def _count(self) -> bool:
        """Count the outbox and drop what is over the bound (at most once per ``poll``)."""
        s = self.settings
        if time.monotonic() - self._counted < s.poll:
            return True
        try:
            pending, dropped = await self._call(self.store.outbox_trim, s.max_events)
        except DatabaseUnavailable:
            return False
        self._counted = time.monotonic()
        self.metrics.pending = pending
        if dropped:
            self.metrics.dropped += dropped
            logger.warning(
                "webhook outbox over its bound of %d undelivered events: the %d oldest dropped",
                s.max_events,
                dropped,
                extra={"dropped": dropped, "max_events": s.max_events, "pending": pending},
            )
        return True

    async def _send_held(self, client: httpx.AsyncClient) -> _Round:
        event = self.held[0]
        if await self._attempt(client, event.id, event.body.encode()) is not None:
            return _Round.FAILED
        with contextlib.suppress(ValueError):  # written to the outbox meanwhile: not held
            self.held.remove(event)
        return _Round.SENT

    async def _send_claimed(
        self, client: httpx.AsyncClient, claimed: Sequence[ClaimedEvent], stop: asyncio.Event
    ) -> _Round:
        s = self.settings
        for i, c in enumerate(claimed):
            if stop.is_set() or time.time() + s.timeout >= c.claimed_until:
                await self._release(claimed[i:])
                return _Round.SENT if i else _Round.IDLE
            why = await self._attempt(client, c.id, c.body.encode())
            if why is None:
                await self._quietly(self.store.outbox_delivered, c.seq)
                continue
            await self._quietly(
                self.store.outbox_failed,
                c.seq,
                self.worker_id,
                next_attempt=time.time() + s.delay(c.attempts + 1),
                error=why,
            )
            await self._release(claimed[i + 1 :])
            return _Round.FAILED
        return _Round.SENT

    async def _release(self, claimed: Sequence[ClaimedEvent]) -> None:
        if claimed:
            await self._quietly(self.store.outbox_release, self.worker_id, [c.seq for c in claimed])

    async def _quietly(self, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        """A store call whose loss only delays: a claim not let go expires (``claim_ttl``); a
        delivered event not deleted is delivered again (at least once)."""
        try:
            await self._call(fn, *args, **kw)
        except DatabaseUnavailable:
            logger.debug("webhook outbox not updated: the database is unreachable")

    async def _attempt(self, client: httpx.AsyncClient, event_id: str, body: bytes) -> str | None:
        """One POST: None on a 2xx, otherwise why not (logged and counted)."""
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            IDEMPOTENCY_HEADER: event_id,
        }
        try:
            async with asyncio.timeout(self.settings.timeout):
                status = await self._post(client, body, headers)
            if 200 <= status < 300:
                self.metrics.sent += 1
                if self._failures:
                    logger.warning(
                        "webhook receiver accepts events again after %d failed attempts",
                        self._failures,
                    )
                self._failures = 0
                return None
            why = f"HTTP {status}"
        except TimeoutError:
            why = f"no answer within the deadline of {self.settings.timeout:g} s"
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.metrics.failed_attempts += 1
        self._failures += 1
        extra = {"event_id": event_id, "error": why, "failures": self._failures}
        if self._failures == 1:  # once per outage of the receiver; then each attempt at INFO
            logger.warning("webhook delivery failed: retrying with backoff (%s)", why, extra=extra)
        else:
            logger.info("webhook delivery failed", extra=extra)
        return why

    async def _post(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> int:
        """The receiver's status; its body is never read (the connection is closed)."""
        async with client.stream("POST", self.url, content=body, headers=headers) as r:
            return r.status_code
