"""The webhook outbox (issue 22, 5): events wait in the fleet's database, not in memory.

On both back ends (SQLite and a real PostgreSQL): a verdict change is stored with its event or
not at all; claims keep senders off each other's events until they expire; a failed attempt
is counted and pushed back; the bound drops the oldest. With a real receiver on 127.0.0.1 that
checks every signature: a receiver down longer than the old retry window (15.5 s) loses
nothing; the bound's drops are counted in /metrics and logged; two PostgreSQL workers never
deliver one event twice; events the watcher makes while the database is away are sent from
memory. The restarted and killed ``fleet serve`` is tests/fleet/test_webhook_restart.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.fleet.hooks import Receiver, make_event
from tests.support.prom import samples
from tests.support.store import SIM, outcome

from attest.errors import DatabaseUnavailable
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.model import NodeRow
from attest.verifier.fleet.outbox import OutboxEvent
from attest.verifier.fleet.store import Outcome, SqliteStore, Store, open_store
from attest.verifier.fleet.webhooks import WebhookSender, WebhookSettings, verdict_event

FAST = WebhookSettings(backoff=0.1, max_backoff=1.0, timeout=1.0, poll=0.2)


def _open(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Store:
    if backend == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/fleet.db")
    return open_store(request.getfixturevalue("pg_dsn"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = _open(request, tmp_path, request.param)
    for i in range(3):
        s.add_node(f"sim-{i}", f"http://127.0.0.1:1/n/{i}", SIM.enrollment(i), now=100.0)
    yield s
    s.close()


def rows(store: Store) -> list[dict[str, object]]:
    return store.outbox_rows()  # type: ignore[attr-defined,no-any-return]


def sender(store: Store, receiver: Receiver, worker: str = "w1", **kw: object) -> WebhookSender:
    return WebhookSender(
        receiver.url,
        receiver.secret,
        store=store,
        worker_id=worker,
        settings=replace(FAST, **kw),  # type: ignore[arg-type]
    )


async def until(what: str, cond: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


# --- the outbox in the store ---------------------------------------------------------------


def test_a_verdict_change_is_stored_with_its_event_and_a_fenced_one_enqueues_nothing(
    store: Store,
) -> None:
    def with_event(o: Outcome) -> Outcome:
        return replace(o, event=verdict_event(o))

    leased = store.lease("w1", now=101.0, limit=10, ttl=30)
    done = store.complete("w1", [with_event(outcome(n, 101.0)) for n in leased])
    assert len(done) == 3
    stored = [r["id"] for r in rows(store)]
    assert sorted(stored) == sorted(o.event.id for o in done if o.event is not None)
    # w1 stalls past its lease; w2 takes the node over: w1's late change is fenced off and
    # enqueues nothing, w2's change is stored with its event.
    (a,) = store.lease("w1", now=112.0, limit=1, ttl=5)
    (b,) = [n for n in store.lease("w2", now=118.0, limit=10, ttl=30) if n.node_id == a.node_id]
    late = with_event(outcome(a, 119.0, "contraindicated"))
    assert store.complete("w1", [late]) == []
    assert len(rows(store)) == 3
    assert store.complete("w2", [with_event(outcome(b, 120.0, "warning"))]) != []
    assert len(rows(store)) == 4 == len(store.changes())
    body = json.loads(store.outbox_claim("s", now=200.0, limit=10, ttl=10)[-1].body)
    assert (body["node_id"], body["from"], body["to"]) == (b.node_id, "affirming", "warning")


def test_a_claim_keeps_other_senders_off_until_it_expires(store: Store) -> None:
    store.outbox_add([make_event(i) for i in range(3)])
    store.outbox_add([make_event(0)])  # adding an id again is harmless
    a = store.outbox_claim("A", now=1000.0, limit=2, ttl=10)
    b = store.outbox_claim("B", now=1005.0, limit=5, ttl=10)
    assert [c.id for c in a] == [make_event(0).id, make_event(1).id]
    assert [c.id for c in b] == [make_event(2).id]
    assert store.outbox_claim("B", now=1009.0, limit=5, ttl=10) == []
    # A dies holding its claims: once they expire B takes the events over, and A's late
    # failure report changes nothing (the claim is B's now).
    taken = store.outbox_claim("B", now=1010.5, limit=5, ttl=10)
    assert [c.seq for c in taken] == [c.seq for c in a]
    store.outbox_failed(a[0].seq, "A", next_attempt=5000.0, error="late")
    assert {r["claimed_by"] for r in rows(store)} == {"B"}
    assert {r["attempts"] for r in rows(store)} == {0}


def test_a_failed_attempt_is_counted_pushed_back_and_let_go(store: Store) -> None:
    store.outbox_add([make_event(0), make_event(1)])
    (c,) = store.outbox_claim("A", now=1000.0, limit=1, ttl=10)
    store.outbox_failed(c.seq, "A", next_attempt=2000.0, error="HTTP 503")
    first = rows(store)[0]
    assert (first["attempts"], first["last_error"], first["claimed_by"]) == (1, "HTTP 503", None)
    # Not due before its next attempt: the next event goes first.
    assert [x.id for x in store.outbox_claim("B", now=1500.0, limit=5, ttl=1000)] == [
        make_event(1).id
    ]
    (again,) = store.outbox_claim("B", now=2000.0, limit=5, ttl=10)
    assert again.id == c.id and again.attempts == 1
    store.outbox_delivered(again.seq)
    assert [r["id"] for r in rows(store)] == [make_event(1).id]


def test_the_bound_drops_the_oldest_undelivered_events(store: Store) -> None:
    store.outbox_add([make_event(i) for i in range(12)])
    assert store.outbox_trim(5) == (5, 7)
    assert [r["id"] for r in rows(store)] == [make_event(i).id for i in range(7, 12)]
    assert store.outbox_trim(5) == (5, 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_the_outbox_gets_its_table_on_start(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    old = _open(request, tmp_path, backend)
    with old._outbox_tx() as cur:  # type: ignore[attr-defined]
        cur.execute("DROP TABLE webhook_outbox")
    old.close()
    store = _open(request, tmp_path, backend)
    store.outbox_add([make_event(0)])
    assert [r["id"] for r in rows(store)] == [make_event(0).id]
    store.close()


# --- delivery to a real receiver -------------------------------------------------------------


@pytest.mark.slow
async def test_a_receiver_down_longer_than_the_old_retry_window_loses_nothing(
    tmp_path: Path,
) -> None:
    """The in-memory queue gave an event 6 attempts over 15.5 s; the receiver is down 16 s
    here, with events arriving during the outage, and every one is delivered exactly once."""
    store = SqliteStore(str(tmp_path / "f.db"))
    receiver = Receiver()
    s = sender(store, receiver)
    store.outbox_add([make_event(i, at=time.time()) for i in range(20)])
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        await asyncio.sleep(8.0)
        store.outbox_add([make_event(i, at=time.time()) for i in range(20, 30)])
        await asyncio.sleep(8.0)
        down = s.metrics.failed_attempts
        assert s.metrics.sent == 0 and len(rows(store)) == 30
        assert down >= 10, down  # retried all along (backoff at most 1 s)
        receiver.start()
        took = await until("every event delivered", lambda: len(receiver.received()) == 30, 15)
        await asyncio.sleep(0.5)  # time for a duplicate to show
    finally:
        stop.set()
        await task
        receiver.stop()
    assert receiver.bad == [] and receiver.duplicates() == {}
    assert receiver.received() == {make_event(i).id for i in range(30)}
    assert s.metrics.sent == 30 and s.metrics.dropped == 0 and rows(store) == []
    store.close()
    print(
        f"\nreceiver down 16 s: {down} failed attempts; 30/30 events delivered, each once, "
        f"{took:.2f} s after it came back"
    )


async def test_the_bound_drops_the_oldest_counts_them_in_metrics_and_logs_it(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _open(request, tmp_path, "sqlite")
    receiver = Receiver()
    s = sender(store, receiver, max_events=5)
    store.outbox_add([make_event(i, at=time.time()) for i in range(12)])
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        await until("the bound applied", lambda: s.metrics.pending == 5, 5)
        client = TestClient(create_fleet_app(store, access=Access("w" * 16), webhooks=s))
        got = samples(client.get("/metrics").text)
        assert got["attest_fleet_webhooks_dropped_total"] == 7, got
        assert got["attest_fleet_webhook_outbox_pending"] == 5, got
        assert got["attest_fleet_webhooks_sent_total"] == 0, got
        assert got["attest_fleet_webhook_queue"] == 0, got
        receiver.start()  # the newest five, each once
        await until("the rest delivered", lambda: len(receiver.received()) == 5, 10)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
        receiver.stop()
    assert receiver.received() == {make_event(i).id for i in range(7, 12)}
    assert receiver.duplicates() == {} and s.metrics.dropped == 7
    (line,) = [r for r in caplog.records if "outbox over its bound" in r.getMessage()]
    assert line.levelno == logging.WARNING and "the 7 oldest dropped" in line.getMessage()
    store.close()


async def test_two_postgres_workers_never_deliver_one_event_twice(pg_dsn: str) -> None:
    n = 300
    stores = [open_store(pg_dsn), open_store(pg_dsn)]
    receiver = Receiver(delay=0.003)
    receiver.start()
    stores[0].outbox_add([make_event(i, at=time.time()) for i in range(n)])
    senders = [sender(st, receiver, f"w{k}") for k, st in enumerate(stores)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(x.run(stop)) for x in senders]
    try:
        took = await until("every event delivered", lambda: len(receiver.received()) == n, 60)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        receiver.stop()
    sent = [x.metrics.sent for x in senders]
    assert receiver.duplicates() == {} and receiver.bad == []
    assert sum(sent) == n and min(sent) > 0, sent  # both delivered, neither twice
    assert rows(stores[0]) == []
    for st in stores:
        st.close()
    print(f"\ntwo PostgreSQL workers: {n} events in {took:.2f} s, split {sent}, no duplicate")


class FlakyOutbox(SqliteStore):
    """The outbox's writes fail as PostgreSQL's do while the server is stopped."""

    away = True

    def outbox_add(self, events: Sequence[OutboxEvent]) -> None:
        if self.away:
            raise DatabaseUnavailable("OperationalError: connection refused")
        super().outbox_add(events)


async def test_events_made_while_the_database_is_away_are_sent_from_memory_then_stored(
    tmp_path: Path,
) -> None:
    store = FlakyOutbox(str(tmp_path / "f.db"))
    receiver = Receiver()
    receiver.start()
    s = sender(store, receiver)
    row = NodeRow("n0", "u", True, 0.0, 10.0, "affirming", "", None, None, 1.0, 1.0, "", 0, 1, None)
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        s.notify_freshness(row, stale=True, age=31.0, now=time.time())
        await until("sent from memory", lambda: len(receiver.received()) == 1 and not s.held, 5)
        assert rows(store) == [] and s.metrics.sent == 1
        receiver.stop()  # now both are away: the next event waits in memory ...
        s.notify_freshness(row, stale=False, age=1.0, now=time.time())
        await asyncio.sleep(0.5)
        assert len(s.held) == 1 and s.metrics.failed_attempts >= 1
        store.away = False  # ... and goes to the outbox as soon as the database answers
        await until("written to the outbox", lambda: not s.held, 5)
    finally:
        stop.set()
        await task
    (event,) = receiver.events.values()
    assert (event["event"], event["node_id"], event["age"]) == ("node-stale", "n0", 31.0)
    (waiting,) = store.outbox_claim("peek", now=time.time() + 60, limit=5, ttl=1)
    assert json.loads(waiting.body)["event"] == "node-fresh"
    store.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--webhook-outbox-max", "0"),
        ("--webhook-timeout", "-1"),
        ("--webhook-max-backoff", "0"),
        ("--webhook-timeout", "nan"),  # compared with 0, NaN was neither over nor under it
        ("--webhook-backoff", "inf"),
    ],
)
def test_serve_refuses_a_webhook_bound_or_time_that_is_not_positive_before_it_starts(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.cli.fleet import main as fleet_main

    (tmp_path / "hook.key").write_bytes(b"0123456789abcdef0123")
    (tmp_path / "dev.json").write_text('{"allow_unidentified_release": true}')
    db = tmp_path / "fleet.db"
    rc = fleet_main(
        [
            "serve",
            "--db",
            f"sqlite:///{db}",
            "--webhook",
            "http://127.0.0.1:1/",
            "--webhook-secret-file",
            str(tmp_path / "hook.key"),
            option,
            value,
            "--tofu",
            "--insecure-no-auth",
            "--policy",
            str(tmp_path / "dev.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        rc == 2
        and err
        == f"attest: configuration error: {option}: must be a finite number over 0, not {value}"
    )
    assert not db.exists()  # refused before anything started
