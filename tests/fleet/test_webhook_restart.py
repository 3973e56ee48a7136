"""``attest fleet serve`` stopped (SIGTERM) or killed (SIGKILL) while its webhook receiver is
down, and a new ``fleet serve`` started on the same database once the receiver is back
(issue 22, 5): every event the first one left is delivered, exactly once, with a valid
signature and its ``Idempotency-Key``; every verdict change in the history was told. On SQLite
and on a real PostgreSQL. The measured delivery time is printed (docs/reliability.md,
"fleet: webhook receiver down / fleet serve restarted")."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tests.fleet.conftest import dev_serve_args, serve_command, sim_server
from tests.fleet.hooks import SECRET, Receiver

from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.store import open_store

N = 10
INTERVAL = 1.0


def serve(db: str, hook: str, tmp: Path, worker: str) -> subprocess.Popen[bytes]:
    (tmp / "hook.key").write_bytes(SECRET)
    cmd = serve_command(
        db,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--interval",
        str(INTERVAL),
        "--timeout",
        "1",
        "--lease-ttl",
        "3",
        "--worker-id",
        worker,
        "--webhook",
        hook,
        "--webhook-secret-file",
        str(tmp / "hook.key"),
        "--webhook-timeout",
        "1",
        "--webhook-backoff",
        "0.1",
        "--webhook-max-backoff",
        "0.5",
        *dev_serve_args(tmp),
    )
    return subprocess.Popen(
        cmd, stdout=(tmp / f"{worker}.log").open("wb"), stderr=subprocess.STDOUT
    )


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return list(conn.execute(sql).fetchall())
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        return list(conn.execute(sql).fetchall())


def outbox(db: str) -> dict[str, dict[str, Any]]:
    rows = query(db, "SELECT event_id, body, attempts, claimed_until FROM webhook_outbox")
    return {r[0]: {**json.loads(r[1]), "_attempts": r[2], "_claimed": r[3]} for r in rows}


def wait_for(what: str, cond: Any, timeout: float) -> float:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.time() - t0


def stop(w: subprocess.Popen[bytes]) -> None:
    if w.poll() is None:
        w.send_signal(signal.SIGTERM)
        try:
            w.wait(15)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait(5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "how"),
    [("sqlite", signal.SIGTERM), ("sqlite", signal.SIGKILL), ("postgresql", signal.SIGKILL)],
    ids=["sqlite-stopped", "sqlite-killed", "postgresql-killed"],
)
def test_a_new_fleet_serve_delivers_what_a_stopped_or_killed_one_left_exactly_once(
    backend: str, how: signal.Signals, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = (
        request.getfixturevalue("pg_dsn")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/fleet.db"
    )
    sim = SimFleet(N)
    receiver = Receiver()  # down: nothing listens on its port yet
    with sim_server(sim) as srv:
        store = open_store(db)
        for i in range(N):
            store.add_node(f"sim-{i}", srv.url(i), sim.enrollment(i), now=time.time())
        store.close()
        w1 = serve(db, receiver.url, tmp_path, "w1")
        w2 = None
        try:

            def changes_queued() -> bool:
                kinds = [e["event"] for e in outbox(db).values()]
                return kinds.count("verdict-changed") == N and any(
                    e["_attempts"] > 0 for e in outbox(db).values()
                )

            wait_for("every node's verdict change queued and tried", changes_queued, 40)
            w1.send_signal(how)
            w1.wait(20)
            left = outbox(db)
            # Every verdict change recorded was queued with it, and none was delivered.
            (changed,) = query(db, "SELECT count(*) FROM changes")
            kinds = [e["event"] for e in left.values()]
            assert kinds.count("verdict-changed") == changed[0] == N, kinds
            assert receiver.received() == set()
            claimed = sum(e["_claimed"] is not None for e in left.values())  # killed mid-attempt

            receiver.start()
            w2 = serve(db, receiver.url, tmp_path, "w2")
            took = wait_for(
                "every event left delivered", lambda: receiver.received() >= set(left), 40
            )
            time.sleep(1.5)  # time for a duplicate to show
        finally:
            for w in (w1, w2):
                if w is not None:
                    stop(w)
            receiver.stop()
    logs = {w: (tmp_path / f"{w}.log").read_text() for w in ("w1", "w2")}
    assert w1.returncode == (0 if how == signal.SIGTERM else -signal.SIGKILL), logs["w1"]
    assert w2 is not None and w2.returncode == 0, logs["w2"]
    assert receiver.bad == [] and receiver.duplicates() == {}, receiver.bad
    told = {
        (e["node_id"], e["to"]) for e in receiver.events.values() if e["event"] == "verdict-changed"
    }
    assert told == {(f"sim-{i}", "affirming") for i in range(N)}
    assert set(outbox(db)) & set(left) == set()  # delivered, so deleted
    assert "Traceback" not in logs["w1"] + logs["w2"], logs
    print(
        f"\n{backend}, {how.name}: {len(left)} events left ({N} verdict changes, {claimed} "
        f"claimed by the dead sender); all delivered once {took:.2f} s after the new fleet serve "
        "was started"
    )
