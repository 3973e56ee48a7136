"""Two ``attest fleet serve`` processes sharing one real PostgreSQL: every node is appraised,
by one worker at a time, never twice within an interval; when a worker is killed, the other
takes its nodes over once their leases expire."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from tests.fleet.conftest import dev_policy, sim_server

from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.store import open_store

N = 40
INTERVAL = 1.0
JITTER = 0.1
TTL = 3.0


def serve(dsn: str, worker: str, log: Path) -> subprocess.Popen[bytes]:
    # Simulated nodes have no EK: trust on first use, explicitly. Both workers share one EAR
    # key file (created by whichever starts first).
    cmd = [
        sys.executable,
        "-m",
        "attest.cli.fleet",
        "serve",
        "--db",
        dsn,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--interval",
        str(INTERVAL),
        "--jitter",
        str(JITTER),
        "--timeout",
        "1",
        "--lease-ttl",
        str(TTL),
        "--concurrency",
        "8",
        "--worker-id",
        worker,
        "--tofu",
        "--insecure-no-auth",  # on loopback: nothing is registered over the API here
        "--ear-key",
        str(log.parent / "ear.pem"),
        "--policy",  # no registry: the developer rule
        dev_policy(log.parent),
    ]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def _has_results(dsn: str, worker: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT 1 FROM results WHERE worker_id = %s LIMIT 1", (worker,)
        ).fetchone()
    return row is not None


def test_two_workers_never_double_appraise_and_survive_a_kill(pg_dsn: str, tmp_path: Path) -> None:
    sim = SimFleet(N, record_times=True)
    with sim_server(sim) as srv:
        store = open_store(pg_dsn)
        for i in range(N):
            store.add_node(f"sim-{i}", srv.url(i), sim.enrollment(i), now=time.time())
        store.close()
        # w1 starts first and must have written results before w2 joins: with lease affinity
        # a worker that keeps up keeps its nodes, so which worker appraises what is otherwise
        # a race; what must hold is no double appraisal and a full takeover when w1 dies.
        w1 = serve(pg_dsn, "w1", tmp_path / "w1.log")
        w2 = None
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not _has_results(pg_dsn, "w1"):
                time.sleep(0.2)
            w2 = serve(pg_dsn, "w2", tmp_path / "w2.log")
            time.sleep(4.0)
            w1.send_signal(signal.SIGKILL)  # dies mid-flight: leases held, results unflushed
            w1.wait(10)
            killed_at = time.time()
            time.sleep(TTL + 3.0)
            end = time.time()
        finally:
            procs = [w for w in (w1, w2) if w is not None]
            for w in procs:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in procs:
                try:
                    w.wait(15)
                except subprocess.TimeoutExpired:
                    w.kill()
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("w1", "w2")}
    assert w2 is not None and w2.returncode == 0, logs["w2"]

    # One worker at a time: consecutive challenges to any node are the jittered interval
    # apart, less what the arrival times add on a loaded machine (a challenge delivered late,
    # the next on time: 0.82 s was seen under a load of 5 on 2 cores). A double appraisal is
    # two workers on independent schedules: gaps spread over [0, interval), and over 40 nodes
    # times 5+ challenges some fall far below this bound.
    min_gap = INTERVAL * (1 - JITTER) - 0.25
    for node in sim.nodes:
        t = node.times
        assert len(t) >= 5, (node.node_id, len(t))
        gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
        assert min(gaps) >= min_gap, (node.node_id, min(gaps), logs)
        # ... and every node is still appraised after w1 died (w2 took its nodes over).
        assert any(x > killed_at + TTL for x in t), node.node_id
        assert t[-1] > end - 2 * INTERVAL - TTL
    with psycopg.connect(pg_dsn) as conn:
        workers = {r[0] for r in conn.execute("SELECT DISTINCT worker_id FROM results")}
        verdicts = {r[0] for r in conn.execute("SELECT verdict FROM nodes")}
        ears = [r[0] for r in conn.execute("SELECT ear FROM nodes")]
        change_ears = [r[0] for r in conn.execute("SELECT ear FROM changes")]
    assert workers == {"w1", "w2"}, "both workers shared the fleet"
    assert verdicts <= {"affirming", "warning"}, verdicts
    # Every node's latest result and every verdict change is an EAR under the one shared key.
    from attest.appraisal.ear import jwk_public_key, verify_ear
    from attest.verifier.fleet.signing import load_or_create_key

    key = jwk_public_key(load_or_create_key(tmp_path / "ear.pem").jwk)
    assert len(ears) == N and len(change_ears) >= N
    for token in [*ears, *change_ears]:
        (sm,) = verify_ear(token, key)["submods"].values()
        assert sm["ear.status"] in ("affirming", "warning")
    print({n.node_id: len(n.times) for n in sim.nodes})  # shown with pytest -s
