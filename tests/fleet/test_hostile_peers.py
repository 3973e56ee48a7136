"""Every client read of a peer is bounded in bytes and in total time: ``NodeClient`` (attest
verify, fleet enrollment), the poller's ``HttpPool`` and the webhook sender, each against real
hostile servers on 127.0.0.1 (``attest.testing.hostile_peers``). A refusal is a
``TransportError`` naming the bound, within the deadline, with the client's memory bounded by
the cap."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from attest.errors import TransportError
from attest.testing.hostile_peers import hostile
from attest.verifier.client import NodeClient
from attest.verifier.fleet.http import HttpPool, Origin
from attest.verifier.fleet.store import Outcome
from attest.verifier.fleet.webhooks import WebhookSender

CAP = 1 << 20


@pytest.fixture()
def peak() -> Iterator[Callable[[], int]]:
    """The peak of Python allocations (bytes) since the test started."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _timed(fn: Callable[[], Any], limit: float = 15.0) -> tuple[BaseException, float]:
    """Run ``fn`` (on a thread, so that a client without bounds fails the test instead of
    hanging it): the exception it raised and how long it took."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    took = time.monotonic() - t0
    assert out, f"the client was still reading after {limit} s"
    assert isinstance(out[0], TransportError), out[0]
    return out[0], took


def test_node_client_cuts_an_endless_chunked_body_at_the_cap(peak: Callable[[], int]) -> None:
    with hostile("endless") as srv, NodeClient(srv.url, max_response=CAP, deadline=20) as c:
        exc, took = _timed(c.identity)
    assert f"over the limit of {CAP} bytes" in str(exc)
    assert took < 10
    assert peak() < 4 * CAP, peak()  # the cap plus one chunk, not what the peer sent
    assert srv.sent > CAP  # the peer did send more than the cap


def test_node_client_refuses_a_declared_length_over_the_cap_without_reading() -> None:
    with hostile("huge-length") as srv, NodeClient(srv.url, max_response=CAP) as c:
        exc, took = _timed(c.status)
    assert f"over the limit of {CAP} bytes" in str(exc) and took < 5


@pytest.mark.parametrize("behaviour", ["trickle", "trickle-headers"])
def test_node_client_cuts_a_trickling_peer_at_the_total_deadline(behaviour: str) -> None:
    """A byte every 50 ms never trips the per-read timeout (1 s); the total deadline
    (1.5 s) ends the request."""
    with hostile(behaviour) as srv, NodeClient(srv.url, timeout=1.0, deadline=1.5) as c:
        exc, took = _timed(c.identity)
        sent = srv.sent
    assert "deadline of 1.5 s" in str(exc)
    assert 1.4 < took < 3.0, took
    assert sent > 10  # the peer was trickling, not silent


def test_node_client_does_not_echo_control_characters_of_a_peer() -> None:
    with hostile("reflect") as srv, NodeClient(srv.url) as c:
        exc, _ = _timed(c.identity)
    assert "HTTP 418" in str(exc) and all(ch.isprintable() for ch in str(exc))


def _pool_request(pool: HttpPool, url: str) -> None:
    async def go() -> None:
        try:
            await pool.request(Origin.parse(url), "POST", "/v1/evidence", {"nonce": "00"})
        finally:
            pool.close()

    asyncio.run(go())


def test_poller_pool_cuts_an_endless_chunked_body_at_the_cap(peak: Callable[[], int]) -> None:
    with hostile("endless") as srv:
        pool = HttpPool(timeout=20, max_response=CAP)
        exc, took = _timed(lambda: _pool_request(pool, srv.url))
    assert f"over the limit of {CAP} bytes" in str(exc) and took < 10
    assert peak() < 4 * CAP, peak()


@pytest.mark.parametrize("behaviour", ["trickle", "trickle-headers"])
def test_poller_pool_cuts_a_trickling_peer_at_the_total_deadline(behaviour: str) -> None:
    with hostile(behaviour) as srv:
        pool = HttpPool(timeout=1.5)
        exc, took = _timed(lambda: _pool_request(pool, srv.url))
    assert "deadline of 1.5 s" in str(exc) and 1.4 < took < 3.0, (exc, took)


def _outcome() -> Outcome:
    return Outcome(
        node_id="n1",
        token=1,
        at=0.0,
        verdict="contraindicated",
        explanation="x",
        first_divergence=None,
        release=None,
        clock=None,
        result=None,
        error="",
        failures=0,
        next_due=0.0,
        seq=1,
        previous_verdict="affirming",
    )


@pytest.mark.parametrize("behaviour", ["endless", "trickle", "trickle-headers"])
def test_webhook_sender_reads_no_body_and_gives_up_by_the_deadline(
    behaviour: str, peak: Callable[[], int]
) -> None:
    """A receiver that streams without end or trickles costs one deadline per attempt and no
    memory: only its status is read."""
    with hostile(behaviour) as srv:
        sender = WebhookSender(srv.url, b"k" * 32, attempts=2, backoff=0.01, timeout=1.0)
        sender.notify(_outcome())

        async def go() -> float:
            stop = asyncio.Event()
            t0 = time.monotonic()
            task = asyncio.create_task(sender.run(stop))
            while sender.metrics.given_up + sender.metrics.sent == 0:
                await asyncio.sleep(0.05)
                assert time.monotonic() - t0 < 10
            stop.set()
            await task
            return time.monotonic() - t0

        took = asyncio.run(go())
    m = sender.metrics
    if behaviour != "trickle-headers":  # a 200 status line came at once: its body is ignored
        assert m.sent == 1 and took < 3
    else:
        assert m.given_up == 1 and m.failed_attempts == 2 and took < 4, (m, took)
    assert peak() < 4 * CAP, peak()
