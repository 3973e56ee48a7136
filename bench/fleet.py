#!/usr/bin/env python3
"""The fleet verifier under load: N simulated nodes (fake TPMs with real ECDSA P-256 AKs, one
lightweight HTTP server on loopback in a separate process) appraised continuously by one
verifier process (the real poller, store and appraisal: ``attest.appraisal.appraise``).

    python bench/fleet.py [--nodes N] [--interval S] [--seconds S] [--concurrency C]
                          [--db sqlite|postgresql://...] [--workers W]

Prints appraisals/s (target: N / interval), p99 latency (challenge + appraisal), the CPU share
of the verifier and of the simulator, and -- measured in the same run, without the network --
the CPU cost of one appraisal against the bare ECDSA signature check of the same quote. With
``--workers 2 --db postgresql://...`` two verifier processes share the fleet and the simulator
counts challenges per node to show no node was appraised twice within an interval.
Last line:
    fleet nodes=… interval_s=… target_aps=… aps=… p99_ms=… verifier_cpu=… sim_cpu=…
          appraise_us=… bare_verify_us=… appraise_over_verify=… double_appraisals=…
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def simulate(n: int, port_q: mp.Queue, stop: mp.Event, gaps_q: mp.Queue) -> None:  # type: ignore[type-arg]
    from attest.fleet.sim import SimFleet

    async def main() -> None:
        fleet = SimFleet(n, record_times=True)
        port_q.put(await fleet.start())
        while not stop.is_set():
            await asyncio.sleep(0.2)
        # the minimum gap between two challenges to the same node, and the count of gaps
        # under 0.5 s (a double appraisal), for the report
        gaps = [b - a for node in fleet.nodes
                for a, b in zip(node.times, node.times[1:], strict=False)]
        gaps_q.put((min(gaps) if gaps else float("nan"), sum(1 for g in gaps if g < 0.5),
                    sum(node.requests for node in fleet.nodes)))
        await fleet.stop()

    _run(main())


def verifier(db: str, worker: str, args: argparse.Namespace, start_at: float,
             out: mp.Queue) -> None:  # type: ignore[type-arg]
    from attest.fleet.appraiser import default_appraiser
    from attest.fleet.poller import Poller, PollSettings
    from attest.fleet.store import open_store

    store = open_store(db)
    settings = PollSettings(worker_id=worker, interval=args.interval, jitter=0.1,
                            concurrency=args.concurrency, timeout=5.0, lease_ttl=30.0)
    poller = Poller(store, settings=settings, appraise=default_appraiser(),
                    record_latencies=True)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await asyncio.sleep(max(0.0, start_at - time.time()))  # warm-up ends
        m = poller.metrics
        a0, f0, s0 = m.appraisals, m.failures, m.appraise_seconds
        c0, t0 = time.process_time(), time.time()
        del m.latencies[:]
        await asyncio.sleep(args.seconds)
        a1, f1, s1 = m.appraisals, m.failures, m.appraise_seconds
        c1, t1 = time.process_time(), time.time()
        lat = sorted(m.latencies)
        stop.set()
        await task
        out.put({"worker": worker, "aps": (a1 - a0) / (t1 - t0), "failures": f1 - f0,
                 "cpu": (c1 - c0) / (t1 - t0), "appraise_cpu_share": (s1 - s0) / (t1 - t0),
                 "p99": lat[int(len(lat) * 0.99) - 1] if lat else float("nan"),
                 "p50": lat[len(lat) // 2] if lat else float("nan"),
                 "dropped": m.dropped})

    _run(main())
    poller.close()
    store.close()


def offline_costs(rounds: int = 5, n: int = 400) -> tuple[float, float]:
    """µs per appraisal (appraise() on a real evidence document, no network) and µs per bare
    ECDSA verify of the same quote, both min-of-rounds, measured here and now."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from attest.appraisal import appraise
    from attest.evidence import unb64
    from attest.fleet.sim import SimFleet
    from attest.model import PcrSelection
    from attest.tpmstruct import parse_signature

    fleet = SimFleet(1, verity_root_hash=bytes(32))
    node = fleet.nodes[0]
    nonce = os.urandom(32)
    sel = PcrSelection.parse("sha256:0-7,13")
    doc = fleet.evidence(node, {"nonce": nonce.hex(), "pcrs": {"sha256": [*range(8), 13]},
                                "logs": {"runtime": {"start": 0}}})
    enrollment = fleet.enrollment(0)
    now = datetime.now(UTC)
    assert appraise(doc, enrollment=enrollment, nonce=nonce, selection=sel, registry=None,
                    platform_id=None, previous=None, tls_binding=None, now=now).status != "none"
    attest = unb64(doc["quote"]["attest"], "attest")
    s = parse_signature(unb64(doc["quote"]["signature"], "sig"))
    der = encode_dss_signature(int.from_bytes(s.r, "big"), int.from_bytes(s.s, "big"))
    key = node.tpm.ak_public().key
    algo = ec.ECDSA(hashes.SHA256())
    best_a = best_v = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            key.verify(der, attest, algo)  # type: ignore[union-attr]
        best_v = min(best_v, (time.perf_counter() - t) / n)
        t = time.perf_counter()
        for _ in range(n):
            appraise(doc, enrollment=enrollment, nonce=nonce, selection=sel, registry=None,
                     platform_id=None, previous=None, tls_binding=None, now=now)
        best_a = min(best_a, (time.perf_counter() - t) / n)
    return best_a * 1e6, best_v * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=None, help="default: one interval")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--db", default="sqlite", help="sqlite or a postgresql:// DSN")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    from attest.fleet.sim import SimFleet
    from attest.fleet.store import open_store

    appraise_us, verify_us = offline_costs()
    print(f"offline: appraise {appraise_us:.0f} µs, bare ECDSA verify {verify_us:.0f} µs "
          f"({appraise_us / verify_us:.1f}×)")

    ctx = mp.get_context("spawn")
    port_q, gaps_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sim = ctx.Process(target=simulate, args=(args.nodes, port_q, stop, gaps_q), daemon=True)
    sim.start()
    port = port_q.get(timeout=120)
    db = args.db
    if db == "sqlite":
        db = f"sqlite:///{tempfile.mkdtemp(prefix='attest-fleet-bench-')}/fleet.db"
    # The verifier's enrollment records, as `attest fleet add` would make them (the simulated
    # TPMs derive their AKs from the same seeds).
    enroll = SimFleet(args.nodes)
    store = open_store(db)
    t0 = time.time()
    for i in range(args.nodes):  # first challenges spread over one interval, not all at once
        store.add_node(f"sim-{i}", f"http://127.0.0.1:{port}/n/{i}", enroll.enrollment(i),
                       now=t0 + args.interval * i / args.nodes)
    store.close()
    del enroll
    warmup = args.interval if args.warmup is None else args.warmup
    start_at = time.time() + warmup
    out = ctx.Queue()
    workers = [ctx.Process(target=verifier, args=(db, f"w{k + 1}", args, start_at, out))
               for k in range(args.workers)]  # fmt: skip
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    sim_c0 = _cpu(sim.pid)  # type: ignore[arg-type]
    time.sleep(args.seconds)
    sim_cpu = (_cpu(sim.pid) - sim_c0) / args.seconds  # type: ignore[arg-type]
    results = [out.get(timeout=args.seconds + 120) for _ in workers]
    for w in workers:
        w.join(30)
    stop.set()
    min_gap, doubles, requests = gaps_q.get(timeout=60)
    sim.join(30)
    aps = sum(r["aps"] for r in results)
    p99 = max(r["p99"] for r in results) * 1000
    for r in sorted(results, key=lambda r: r["worker"]):
        print(f"{r['worker']}: {r['aps']:7.1f} appraisals/s  p50 {r['p50'] * 1000:6.1f} ms  "
              f"p99 {r['p99'] * 1000:6.1f} ms  CPU {r['cpu']:.2f} core (appraise() "
              f"{r['appraise_cpu_share']:.2f})  failures {r['failures']}  dropped {r['dropped']}")
    target = args.nodes / args.interval
    print(f"simulator CPU {sim_cpu:.2f} core; min gap between two challenges to one node "
          f"{min_gap:.2f} s; {requests} challenges served")
    print(f"fleet nodes={args.nodes} interval_s={args.interval:g} workers={args.workers} "
          f"db={'postgresql' if db.startswith('postgres') else 'sqlite'} target_aps={target:.0f} "
          f"aps={aps:.0f} keeps_up={int(aps >= 0.97 * target)} p99_ms={p99:.1f} "
          f"verifier_cpu={sum(r['cpu'] for r in results):.2f} sim_cpu={sim_cpu:.2f} "
          f"appraise_us={appraise_us:.0f} bare_verify_us={verify_us:.0f} "
          f"appraise_over_verify={appraise_us / verify_us:.1f} double_appraisals={doubles}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
