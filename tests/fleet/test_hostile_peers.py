"""Every client read of a peer is bounded in bytes and in total time: ``NodeClient`` (attest
verify, fleet enrollment), the poller's ``HttpPool`` and the webhook sender, each against real
hostile servers on 127.0.0.1 (``attest.testing.hostile_peers``). A refusal is a
``TransportError`` naming the bound, within the deadline, with the client's memory bounded by
the cap."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from attest.errors import EvidenceFormatError, TransportError
from attest.evidence import parse_evidence
from attest.testing.hostile_peers import hostile
from attest.verifier.client import NodeClient
from attest.verifier.fleet.http import HttpPool, Origin, Response
from attest.verifier.fleet.store import Outcome, SqliteStore
from attest.verifier.fleet.webhooks import WebhookSender, WebhookSettings, verdict_event

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


def test_node_client_frees_a_refused_body_with_its_error_not_at_a_collection() -> None:
    """The body read up to the cap goes when the error is dropped. It used to stay in a
    reference cycle (the refusal was a local of the frame that raised it, and its traceback
    held that frame) until a garbage collection: a fleet registering hostile URLs fast kept
    ~1 MiB per registration (bench/peer_memory.py: 100 MiB over idle, then 13)."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        with hostile("endless") as srv, NodeClient(srv.url, max_response=CAP, deadline=20) as c:
            for _ in range(3):
                with contextlib.suppress(TransportError):
                    c.identity()
        held, _ = tracemalloc.get_traced_memory()
        assert held < CAP // 2, held  # three refused bodies of 1 MiB each: none is left
    finally:
        tracemalloc.stop()
        gc.enable()


def test_node_clients_share_one_tls_context_of_the_system_cas() -> None:
    """Each TLS context loads the CA store (~32 ms, ~850 KiB): clients that trust the
    system's CAs share one; a client with its own CAs (or none) keeps its own."""
    import ssl

    def context(c: NodeClient) -> ssl.SSLContext:
        return c._http._transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]

    with NodeClient("https://a.invalid") as a, NodeClient("https://b.invalid") as b:
        assert context(a) is context(b)
        assert context(a).verify_mode == ssl.CERT_REQUIRED and context(a).check_hostname
    mine = ssl.create_default_context()
    with NodeClient("https://a.invalid", verify=mine) as c:
        assert context(c) is mine
    with NodeClient("https://a.invalid", verify=False) as d, NodeClient("http://x") as e:
        assert context(d) is not context(e) and context(d).verify_mode == ssl.CERT_NONE


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
def test_webhook_sender_reads_no_body_and_each_attempt_ends_by_the_deadline(
    behaviour: str, peak: Callable[[], int], tmp_path: Path
) -> None:
    """A receiver that streams without end or trickles costs one deadline per attempt and no
    memory: only its status is read. An event not accepted stays in the outbox."""
    store = SqliteStore(str(tmp_path / "f.db"))
    store.outbox_add([verdict_event(_outcome())])
    with hostile(behaviour) as srv:
        sender = WebhookSender(
            srv.url,
            b"k" * 32,
            store=store,
            worker_id="w",
            settings=WebhookSettings(backoff=0.3, max_backoff=0.3, timeout=1.0),
        )

        async def go() -> float:
            stop = asyncio.Event()
            t0 = time.monotonic()
            task = asyncio.create_task(sender.run(stop))
            while sender.metrics.failed_attempts < 2 and sender.metrics.sent == 0:
                await asyncio.sleep(0.05)
                assert time.monotonic() - t0 < 10
            stop.set()
            await task
            return time.monotonic() - t0

        took = asyncio.run(go())
    m = sender.metrics
    left = store.outbox_rows()
    store.close()
    if behaviour != "trickle-headers":  # a 200 status line came at once: its body is ignored
        assert m.sent == 1 and took < 3 and left == []
    else:
        assert m.sent == 0 and m.failed_attempts == 2 and took < 4, (m, took)
        (row,) = left
        assert row["attempts"] == 2 and "deadline of 1 s" in row["last_error"], row
        assert row["claimed_by"] is None  # let go: another sender may take it
    assert peak() < 4 * CAP, peak()


# --- many peers at once: memory bounded by one budget, not by peers x cap ----------------------


def test_node_client_reads_small_documents_under_a_small_cap(peak: Callable[[], int]) -> None:
    """An identity is a few KiB: an endless one is cut at MAX_SMALL_RESPONSE even though the
    client's cap (for evidence) is 16 MiB -- so enrolling many hostile URLs at once costs
    little each."""
    from attest.verifier.client import MAX_RESPONSE, MAX_SMALL_RESPONSE

    with hostile("endless") as srv, NodeClient(srv.url) as c:
        assert c.max_response == MAX_RESPONSE > MAX_SMALL_RESPONSE
        exc, took = _timed(c.identity)
    assert f"over the limit of {MAX_SMALL_RESPONSE} bytes" in str(exc) and took < 10
    assert peak() < 4 * MAX_SMALL_RESPONSE, peak()


def _many(pool: HttpPool, urls: list[str]) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return await asyncio.gather(
                *(pool.request(Origin.parse(u), "POST", "/v1/evidence", {}) for u in urls),
                return_exceptions=True,
            )
        finally:
            pool.close()

    return asyncio.run(go())


def test_poller_pool_holds_one_budget_for_all_answers_being_read(
    peak: Callable[[], int],
) -> None:
    """Ten endless peers read at once hold the shared budget plus a small share each, not ten
    times the 16 MiB cap; the budget is given back whatever the answers' fate."""
    from attest.verifier.fleet.http import MAX_RESPONSE, SMALL_ANSWER

    budget = 4 << 20
    with contextlib.ExitStack() as stack:
        peers = [stack.enter_context(hostile("endless")) for _ in range(10)]
        pool = HttpPool(timeout=20, max_buffered=budget)
        t0 = time.monotonic()
        got = _many(pool, [p.url for p in peers])
        took = time.monotonic() - t0
        sent = sum(p.sent for p in peers)
    assert all(isinstance(g, TransportError) for g in got), got
    assert any("budget of 4194304 bytes" in str(g) for g in got), got
    assert pool.over_budget >= 1 and pool.buffered == 0 and took < 15
    # the budget, a small share each, and the sockets' read buffers: not 10 x 16 MiB
    assert peak() < 32 << 20 < 10 * MAX_RESPONSE, peak()
    assert sent > 10 * SMALL_ANSWER and MAX_RESPONSE == 16 << 20


def test_poller_pool_reads_a_large_honest_answer_within_the_budget() -> None:
    from attest.testing.hostile_peers import LARGE

    with hostile("large") as srv:
        pool = HttpPool(timeout=20, max_buffered=4 << 20)
        (got,) = _many(pool, [srv.url])
    assert not isinstance(got, BaseException), got
    assert got.status == 200 and len(got.body) == LARGE and got.json()["pad"].startswith("aaa")
    assert pool.buffered == 0 and pool.over_budget == 0


def test_fleet_contacts_at_most_max_enrolling_nodes_at_once(tmp_path: Any) -> None:
    """However many registrations arrive together, MAX_ENROLLING of them contact nodes at a
    time (each holding at most one small answer); the others wait their turn."""
    import httpx

    from attest.verifier.fleet.access import Access
    from attest.verifier.fleet.api import MAX_ENROLLING, create_fleet_app
    from attest.verifier.fleet.store import SqliteStore

    lock = threading.Lock()
    now = [0, 0]  # in flight, most at once

    def enroll(reg: object) -> Any:
        with lock:
            now[0] += 1
            now[1] = max(now[1], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        raise TransportError("no node here")

    store = SqliteStore(str(tmp_path / "fleet.db"))
    app = create_fleet_app(store, enroll=enroll, access=Access("w" * 16))

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": "Bearer " + "w" * 16}
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:
            answers = await asyncio.gather(
                *(
                    c.post(
                        "/v1/nodes", json={"url": f"http://127.0.0.1:{9000 + i}"}, headers=headers
                    )
                    for i in range(3 * MAX_ENROLLING)
                )
            )
        return [r.status_code for r in answers]

    codes = asyncio.run(go())
    store.close()
    assert codes == [502] * (3 * MAX_ENROLLING)
    assert now[1] == MAX_ENROLLING, now


HOSTILE_JSON = [
    b"",
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": 1e400}',  # infinite as a double
    b'{"a": "\\ud800"}',  # a lone surrogate
    b'{"a": "\xff"}',  # not UTF-8
    '{"a": 1}'.encode("utf-16"),
    b"[" * 100_000 + b"]" * 100_000,  # nesting past any recursion limit
    b'{"a": 1} trailing',
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=lambda b: repr(b[:12]))
def test_poller_reads_a_hostile_json_answer_as_one_transport_error(body: bytes) -> None:
    """The poller parses each node's answer with orjson: whatever the bytes, the answer is a
    document or one TransportError -- never RecursionError, never a NaN or a lone surrogate
    handed to the appraisal."""
    with pytest.raises(TransportError, match="not JSON"):
        Response(200, body, None).json()


def test_poller_reads_numbers_past_64_bits_as_floats_the_evidence_checks_refuse() -> None:
    """orjson reads an integer past 64 bits as a float (json made it an int): the evidence's
    integer checks refuse a float, so such a number is a format error, not a bigger offset."""
    doc = Response(200, b'{"from": 18446744073709551616, "ok": 18446744073709551615}', None).json()
    assert doc == {"from": float(2**64), "ok": 2**64 - 1}
    assert type(doc["from"]) is float and type(doc["ok"]) is int
    big = b'{"version": 1, "quote": {}, "ak": {}, "pcrs": {}, "batch": {"size": 1%s}}' % (b"0" * 30)
    with pytest.raises(EvidenceFormatError, match="batch.size is not an integer"):
        parse_evidence(Response(200, big, None).json())


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=lambda b: repr(b[:12]))
def test_node_client_reads_a_hostile_json_answer_as_the_poller_does(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`attest verify` and enrollment read a node's answer as the poller does: one
    TransportError, whatever the bytes (json read NaN and lone surrogates, and UTF-16)."""
    monkeypatch.setattr(NodeClient, "_exchange", lambda self, *a, **kw: (200, body))
    with NodeClient("http://127.0.0.1:9") as c, pytest.raises(TransportError, match="not JSON"):
        c._request("GET", "/v1/identity")
