"""A verdict older than its freshness bound is never shown as current (REST, page, webhooks),
and a store whose database is away makes the service not healthy, not ready and 503 (not 500).
Fast, on SQLite with an injected clock; the real outage is tests/fleet/test_pg_outage.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.support.prom import samples

from attest.errors import DatabaseUnavailable
from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.model import Freshness, NodeRow
from attest.verifier.fleet.pgconn import DatabaseState
from attest.verifier.fleet.staleness import StaleWatch
from attest.verifier.fleet.store import Outcome, SqliteStore
from attest.verifier.fleet.webhooks import WebhookSender

T0 = 1_000_000.0
FRESH = Freshness(interval=10.0, intervals=3)


def appraised_store(tmp_path: Path) -> SqliteStore:
    """n0 appraised (affirming) at T0, next due at T0 + 10."""
    store = SqliteStore(str(tmp_path / "f.db"))
    store.add_node("n0", "http://127.0.0.1:1/", SimFleet(1).enrollment(0), now=T0 - 1)
    (leased,) = store.lease("w", now=T0, limit=1, ttl=60)
    o = Outcome(
        "n0", leased.token, T0, "affirming", "fine", None, None, None, {}, "", 0, T0 + 10, 1, "none"
    )
    assert store.complete("w", [o])
    return store


def test_a_verdict_not_appraised_within_three_intervals_shows_stale_with_its_age(
    tmp_path: Path,
) -> None:
    store = appraised_store(tmp_path)
    now = [T0 + 5]
    client = TestClient(
        create_fleet_app(store, access=Access("w" * 16), clock=lambda: now[0], freshness=FRESH)
    )
    (n,) = client.get("/v1/nodes").json()["nodes"]
    assert (n["state"], n["stale"], n["age"]) == ("affirming", False, 5.0)
    now[0] = T0 + 10 + 2 * 10 + 1  # due at T0 + 10, then two more intervals and a second
    (n,) = client.get("/v1/nodes").json()["nodes"]
    assert (n["verdict"], n["state"], n["stale"], n["age"]) == ("affirming", "stale", True, 31.0)
    assert [d["node_id"] for d in client.get("/v1/nodes?verdict=stale").json()["nodes"]] == ["n0"]
    assert client.get("/v1/nodes/n0").json()["state"] == "stale"
    page = client.get("/nodes/n0").text
    assert 'class="v stale"' in page and "31 s ago" in page
    assert 'class="v stale"' in client.get("/").text
    assert samples(client.get("/metrics").text)["attest_fleet_stale_nodes"] == 1


def test_stale_and_fresh_again_are_each_told_once(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "f.db"))
    sender = WebhookSender("http://127.0.0.1:1/", b"k" * 16, store=store, worker_id="w")
    watch = StaleWatch(FRESH, sender)
    row = NodeRow("n0", "u", True, T0, T0 + 10, "affirming", "", None, None, T0, T0, "", 0, 1, None)
    watch.look([row], T0 + 5)
    assert not sender.held
    watch.look(None, T0 + 31)  # the database is away: the last list, judged against the clock
    watch.look(None, T0 + 40)
    (held,) = sender.held
    event = json.loads(held.body)
    assert event["id"] == held.id
    assert (event["event"], event["node_id"], event["verdict"], event["age"]) == (
        "node-stale",
        "n0",
        "affirming",
        31.0,
    )
    fresh = NodeRow(
        "n0", "u", True, T0, T0 + 50, "affirming", "", None, None, T0 + 40, T0, "", 0, 2, None
    )
    watch.look([fresh], T0 + 41)
    assert [json.loads(e.body)["event"] for e in sender.held] == ["node-stale", "node-fresh"]


class AwayStore(SqliteStore):
    """Every read fails as PostgreSQL's do while the server is stopped."""

    def check(self) -> DatabaseState:
        return DatabaseState(False, "OperationalError: connection refused")

    def list_nodes(self, *, ear: bool = False) -> list[NodeRow]:
        raise DatabaseUnavailable("OperationalError: connection refused")

    def get_node(self, node_id: str) -> NodeRow | None:
        raise DatabaseUnavailable("OperationalError: connection refused")

    def results(self, node_id: str, limit: int = 50) -> list[dict[str, Any]]:
        raise DatabaseUnavailable("OperationalError: connection refused")

    def complete(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Outcome]:
        raise DatabaseUnavailable("OperationalError: connection refused")


def test_an_unreachable_database_is_not_ready_and_503_not_500(tmp_path: Path) -> None:
    client = TestClient(
        create_fleet_app(AwayStore(str(tmp_path / "f.db")), access=Access("w" * 16))
    )
    for path in ("/readyz", "/healthz"):
        r = client.get(path)
        assert r.status_code == 503 and r.json()["check"] == "database", r.text
        assert "connection refused" in r.json()["reason"] and r.json()["ready"] is False
    for path in ("/v1/nodes", "/v1/nodes/n0"):
        r = client.get(path)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "DatabaseUnavailable" and r.json()["check"] == "database"
    m = client.get("/metrics")
    assert m.status_code == 200 and samples(m.text)["attest_fleet_database_up"] == 0


def test_a_reachable_database_is_ready(tmp_path: Path) -> None:
    client = TestClient(create_fleet_app(appraised_store(tmp_path), access=Access("w" * 16)))
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["database"]["up"] is True
    assert samples(client.get("/metrics").text)["attest_fleet_database_up"] == 1


def test_fleet_ls_says_the_database_is_unreachable_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("psycopg", reason="psycopg (the fleet extra) is not installed")
    from attest.cli.fleet import main

    assert main(["ls", "--db", f"postgresql://postgres@127.0.0.1:{free_port()}/none"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("attest: the fleet's database is unreachable:") and "\n" not in err
