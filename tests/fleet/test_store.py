"""Leases, fencing and history, on both back ends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.store import SIM, outcome

from attest.verifier.fleet.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/fleet.db", history=3)
    else:
        s = open_store(request.getfixturevalue("pg_dsn"), history=3)
    for i in range(3):
        s.add_node(f"sim-{i}", f"http://127.0.0.1:1/n/{i}", SIM.enrollment(i), now=100.0)
    yield s
    s.close()


def test_lease_takes_each_due_node_once(store: Store) -> None:
    first = store.lease("w1", now=101.0, limit=2, ttl=30)
    second = store.lease("w2", now=101.0, limit=10, ttl=30)
    assert len(first) == 2 and len(second) == 1
    assert {n.node_id for n in first}.isdisjoint({n.node_id for n in second})
    assert store.lease("w3", now=101.0, limit=10, ttl=30) == []


def test_nodes_not_due_are_not_leased(store: Store) -> None:
    assert store.lease("w1", now=99.0, limit=10, ttl=30) == []


def test_completion_moves_due_time_and_records_history(store: Store) -> None:
    leased = store.lease("w1", now=101.0, limit=10, ttl=30)
    done = store.complete("w1", [outcome(n, 101.0) for n in leased])
    assert len(done) == 3
    n0 = store.get_node("sim-0")
    assert n0 is not None and n0.verdict == "affirming" and n0.next_due == 111.0
    assert n0.release == "1.0.0" and n0.appraisals == 1
    assert store.lease("w1", now=105.0, limit=10, ttl=30) == []
    assert [c["to"] for c in store.changes("sim-0")] == ["affirming"]


def test_dead_worker_loses_nothing_and_its_late_result_is_fenced(store: Store) -> None:
    (a,) = store.lease("w1", now=101.0, limit=1, ttl=30)
    # w1 dies (or stalls): its lease expires and w2 takes the node over.
    taken = {n.node_id: n for n in store.lease("w2", now=140.0, limit=10, ttl=30)}
    assert a.node_id in taken
    # The stalled worker's late answer must not overwrite w2's lease or result.
    assert store.complete("w1", [outcome(a, 141.0, "contraindicated")]) == []
    assert store.complete("w2", [outcome(taken[a.node_id], 142.0)]) != []
    node = store.get_node(a.node_id)
    assert node is not None and node.verdict == "affirming"


def test_result_ring_keeps_the_last_n(store: Store) -> None:
    now = 101.0
    for k in range(5):
        (n,) = [x for x in store.lease("w1", now=now, limit=10, ttl=30) if x.node_id == "sim-1"]
        others = [x for x in store.lease("w1", now=now, limit=10, ttl=30)]
        store.complete(
            "w1",
            [outcome(n, now, "warning" if k % 2 else "affirming")]
            + [outcome(o, now) for o in others],
        )
        now += 11
    got = store.results("sim-1", 10)
    assert [r["seq"] for r in got] == [5, 4, 3]  # history=3
    assert len(store.changes("sim-1")) == 5  # every verdict change is kept


def test_unreachable_node_keeps_its_last_release(store: Store) -> None:
    (n,) = [x for x in store.lease("w1", now=101.0, limit=10, ttl=30) if x.node_id == "sim-2"]
    store.complete("w1", [outcome(n, 101.0)])
    (n,) = store.lease("w1", now=112.0, limit=10, ttl=30)[-1:]
    n = (
        next(x for x in store.lease("w1", now=200.0, limit=10, ttl=30) if x.node_id == "sim-2")
        if n.node_id != "sim-2"
        else n
    )
    store.complete(
        "w1",
        [outcome(n, 200.0, "unreachable", result=None, release=None, error="refused", failures=2)],
    )
    row = store.get_node("sim-2")
    assert row is not None and row.verdict == "unreachable" and row.release == "1.0.0"
    assert row.failures == 2 and row.last_error == "refused"


def test_fleet_complete_mark_is_set_once(store: Store) -> None:
    assert store.mark_fleet_complete("1.2.0", 500.0)
    assert not store.mark_fleet_complete("1.2.0", 600.0)
    assert store.release_marks() == {"1.2.0": 500.0}


def test_lease_affinity_leaves_a_node_to_its_worker_until_overdue(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL: a node w1 took last is left to w1 (which holds its logs) until it is
    ``affinity`` seconds overdue; then another worker takes it over (w1 died or stalls)."""
    s = open_store(request.getfixturevalue("pg_dsn"), history=3)
    try:
        s.add_node("sim-0", "http://127.0.0.1:1/n/0", SIM.enrollment(0), now=100.0)
        (n,) = s.lease("w1", now=101.0, limit=10, ttl=30, affinity=5.0)
        assert s.complete("w1", [outcome(n, 101.0)])  # due again at 111
        assert s.lease("w2", now=112.0, limit=10, ttl=30, affinity=5.0) == []
        (again,) = s.lease("w1", now=112.0, limit=10, ttl=30, affinity=5.0)
        assert s.complete("w1", [outcome(again, 112.0)])  # due again at 122
        (taken,) = s.lease("w2", now=128.0, limit=10, ttl=30, affinity=5.0)
        assert taken.node_id == "sim-0"
        assert s.lease("w1", now=128.0, limit=10, ttl=30, affinity=5.0) == []  # leased to w2
    finally:
        s.close()


def test_a_worker_behind_on_its_own_nodes_takes_none_of_anothers_until_takeover(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL: past ``affinity``, another worker's node is taken only by a worker with room
    to spare (its own due nodes do not fill the lease), and by any worker past ``takeover``: two
    workers that are both behind keep to their own nodes (a taken node costs a full-log
    appraisal)."""
    s = open_store(request.getfixturevalue("pg_dsn"), history=3)
    kw = {"ttl": 30.0, "affinity": 5.0, "takeover": 15.0}
    try:
        for i in range(4):
            s.add_node(f"sim-{i}", f"http://127.0.0.1:1/n/{i}", SIM.enrollment(i), now=100.0)
        got = {n.node_id: n for n in s.lease("w1", now=101.0, limit=2, **kw)}
        assert set(got) == {"sim-0", "sim-1"}
        assert s.complete("w1", [outcome(n, 101.0) for n in got.values()])  # due at 111
        got = {n.node_id: n for n in s.lease("w2", now=101.0, limit=2, **kw)}
        assert set(got) == {"sim-2", "sim-3"}
        assert s.complete("w2", [outcome(n, 105.0) for n in got.values()])  # due at 115
        # 120: w1's nodes are 9 s overdue, past affinity, and due before w2's own two; but
        # those fill w2's lease of two
        got = {n.node_id: n for n in s.lease("w2", now=120.0, limit=2, **kw)}
        assert set(got) == {"sim-2", "sim-3"}
        assert s.complete("w2", [outcome(n, 120.0) for n in got.values()])  # due at 130
        # with room for four, w2 takes w1's two as well (w1 may have died)
        taken = {n.node_id for n in s.lease("w2", now=121.0, limit=4, **kw)}
        assert taken == {"sim-0", "sim-1"}
        # past takeover, a worker takes another's node even with no room to spare
        s.add_node("sim-4", "http://127.0.0.1:1/n/4", SIM.enrollment(4), now=140.0)
        (n4,) = s.lease("w1", now=140.0, limit=1, **kw)
        assert s.complete("w1", [outcome(n4, 140.0)])  # due at 150, w1's
        mine = s.lease("w2", now=160.0, limit=4, **kw)  # sim-4 10 s overdue: w2's own four
        assert {n.node_id for n in mine} == {"sim-0", "sim-1", "sim-2", "sim-3"}
        assert s.complete("w2", [outcome(n, 150.0) for n in mine])  # due again at 160
        again = s.lease("w2", now=166.0, limit=4, **kw)  # sim-4 16 s overdue, w2's four due
        assert "sim-4" in {n.node_id for n in again}
    finally:
        s.close()


def test_text_with_quotes_backslashes_and_unicode_is_stored_as_written(store: Store) -> None:
    """What a result carries (JSON documents, explanations, the EAR, continuity) is stored
    byte for byte: PostgreSQL gets the text arrays in binary, nothing is escaped or lost."""
    odd = 'the "quoted" \\ path \\"x\\" ünïcødé \u2028 {"k": [1, "2"]} \t end'
    leased = {n.node_id: n for n in store.lease("w1", now=101.0, limit=10, ttl=30)}
    n0 = leased["sim-0"]
    o = outcome(
        n0,
        101.0,
        "contraindicated",
        explanation=odd,
        first_divergence=odd,
        result={"status": "contraindicated", "why": odd, "nested": {"q": '"\\'}},
        ear="eyJhbGciOiJFUzI1NiJ9." + "A" * 50 + "." + "B-_" * 20,
        continuity='{"audit_head":null,"reset_count":7,"runtime_seen":true}',
    )
    assert len(store.complete("w1", [o, outcome(leased["sim-1"], 101.0, release=None)])) == 2
    node = store.get_node("sim-0")
    assert node is not None and node.explanation == odd and node.first_divergence == odd
    assert node.verdict == "contraindicated"
    (latest,) = store.results("sim-0", limit=1)
    assert latest["explanation"] == odd
    assert latest["result"] == {"status": "contraindicated", "why": odd, "nested": {"q": '"\\'}}
    (row,) = [r for r in store.list_nodes(ear=True) if r.node_id == "sim-0"]
    assert row.ear == o.ear
    again = {n.node_id: n for n in store.lease("w1", now=200.0, limit=10, ttl=30)}
    assert again["sim-0"].continuity == o.continuity
    n1 = store.get_node("sim-1")
    assert n1 is not None and n1.release is None and n1.explanation == "affirming at 101.0"
