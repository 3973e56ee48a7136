"""The floor under issue 18's target 4: what one appraisal cycle costs in this stack (CPython,
the stdlib event loop, orjson, cryptography, SQLite) when it does only what no verifier can skip,
with none of attest's code, measured in one run against the bare ECDSA P-256 verify.

python bench/fleet_floor.py [--nodes N] [--interval S] [--seconds S] [--quick]

The same simulated nodes as ``bench/fleet.py`` (one HTTP server process on loopback, fake TPMs
with real P-256 AKs, the OVMF firmware log and a runtime log) are challenged by a client that
does, per node and interval, only this:

1. one ``POST /v1/evidence`` on a kept-alive connection (asyncio streams, the body made with
   orjson, the answer read by its Content-Length), asking for the logs from where they ended;
2. ``orjson.loads`` of the answer, base64 of the quote and its signature, the ECDSA signature
   taken from the TPMT_SIGNATURE's fixed offsets, the challenge's Merkle leaf (a batch of one,
   ``attest.merkle``) looked for in the quote, and the ECDSA P-256 verify -- no TPMS_ATTEST
   parsing, no PCR, no log, no policy;
3. an EAR of five claims, JSON and base64url, signed ES256 (a JWS);
4. the node's row (status, EAR, next due time) and one result row written to SQLite (WAL,
   ``synchronous=NORMAL``, as the fleet store), in one transaction per 50 ms, on the same
   thread: no lease, no thread hand-off, no result document.

Each node is a coroutine sleeping until it is due (the first contacts spread over one
interval). After a warm-up of one interval the process's CPU time over a window is divided by
the cycles completed in it; the bare verify is sampled on the event loop during the window
(``bench/fleet.py``'s ``_sample_verify``, its CPU taken out) and printed beside it.

What it says: ``bench/fleet.py``'s ``cpu_per_appraisal_over_verify`` cannot go below
``floor_over_verify`` printed here without leaving out work this floor keeps (the exchange,
the JSON, the verify, the signed EAR, the write), so the distance between the two is all that
attest's own code could still win. ``--quick``: 2,000 nodes at 2 s for 10 s (1,000 cycles/s,
as ``bench/fleet.py --quick``).

Last line: fleet_floor nodes=… interval_s=… cycles_per_s=… keeps_up=… cpu=…
floor_us_per_cycle=… bare_verify_us=… floor_over_verify=… failures=… ears_verified=…
(exit 1 unless every check passed and the 20 sampled stored EARs verify)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
PCRS = {"sha256": [0, 1, 2, 3, 4, 5, 6, 7, 13]}  # bench/fleet.py's selection
sys.path.insert(0, str(HERE.parent / "src"))


def _fleet_bench() -> Any:
    """``bench/fleet.py`` as a module: its simulator and its verify sampler, so that both
    benchmarks challenge the same nodes and take the same reference (importable by name, for
    the simulator's spawned process)."""
    sys.path.insert(0, str(HERE))
    import fleet

    return fleet


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Floor:
    """The floor client: per-node coroutines, a batched SQLite writer on the loop thread."""

    def __init__(self, port: int, keys: list[Any], interval: float, db: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.port = port
        self.keys = keys  # each node's AK public key, known in advance (enrolment)
        self.interval = interval
        self.algo = ec.ECDSA(hashes.SHA256())
        self.ear_key = ec.generate_private_key(ec.SECP256R1())
        self.ear_head = _b64url(b'{"alg":"ES256","typ":"JWT"}')
        self.db = sqlite3.connect(db, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE nodes (id INTEGER PRIMARY KEY, status TEXT, ear TEXT, due REAL)"
        )
        self.db.execute(
            "CREATE TABLE results (node INTEGER, slot INTEGER, ear TEXT, PRIMARY KEY (node, slot))"
        )
        self.db.executemany(
            "INSERT INTO nodes (id, status, ear, due) VALUES (?, '', '', 0)",
            [(i,) for i in range(len(keys))],
        )
        self.pending: list[tuple[int, str, str, float, int]] = []
        self.cycles = 0
        self.failures = 0

    async def node(self, i: int, first: float, stop: asyncio.Event) -> None:
        import orjson
        from cryptography.hazmat.primitives.asymmetric.utils import (
            decode_dss_signature,
            encode_dss_signature,
        )

        from attest.merkle import challenge_leaf, leaf_hash

        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, first - loop.time()))
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        path = f"/n/{i}/v1/evidence".encode()
        key = self.keys[i]
        offsets = {"firmware": {"start": 0}, "runtime": {"start": 0}}
        due, slot = loop.time(), 0
        while not stop.is_set():
            nonce = os.urandom(32)
            body = orjson.dumps({"nonce": nonce.hex(), "pcrs": PCRS, "logs": offsets})
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            doc = orjson.loads(await reader.readexactly(length))
            attest = base64.b64decode(doc["quote"]["attest"])
            sig = base64.b64decode(doc["quote"]["signature"])
            # TPMT_SIGNATURE, ECDSA: sigAlg, hashAlg, then r and s as TPM2B (2 + 32 each)
            der = encode_dss_signature(
                int.from_bytes(sig[6:38], "big"), int.from_bytes(sig[40:72], "big")
            )
            # the challenge as the node binds it (a batch of one: the root is the leaf's hash)
            ok = leaf_hash(challenge_leaf(nonce)) in attest
            try:
                key.verify(der, attest, self.algo)
            except Exception:
                ok = False
            if not ok:
                self.failures += 1
            fw, rt = doc["firmware_log"], doc["runtime_log"]
            offsets = {
                "firmware": {"start": fw["total"]},
                "runtime": {"start": rt["start"] + len(rt["records"])},
            }
            status = "affirming" if ok else "contraindicated"
            payload = _b64url(
                orjson.dumps(
                    {
                        "eat_profile": "tag:github.com,2023:veraison/ear",
                        "iat": int(time.time()),
                        "ear.verifier-id": {"developer": "floor", "build": "0"},
                        "eat_nonce": _b64url(nonce).decode(),
                        "submods": {f"sim-{i}": {"ear.status": status}},
                    }
                )
            )
            signing_input = self.ear_head + b"." + payload
            r, s = decode_dss_signature(self.ear_key.sign(signing_input, self.algo))
            token = signing_input + b"." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            due += self.interval
            self.pending.append((i, status, token.decode(), due, slot))
            slot = (slot + 1) % 20
            self.cycles += 1
            await asyncio.sleep(max(0.0, due - loop.time()))
        writer.close()

    def ear_verifies(self, token: str) -> bool:
        """Whether a stored EAR is a JWS this run's key signed (the floor signs for real)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        head, payload, sig = token.encode().split(b".")
        raw = base64.urlsafe_b64decode(sig + b"=" * (-len(sig) % 4))
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:
            self.ear_key.public_key().verify(der, head + b"." + payload, self.algo)
        except InvalidSignature:
            return False
        return True

    async def writer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            self.flush()

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        if not rows:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "UPDATE nodes SET status = ?, ear = ?, due = ? WHERE id = ?",
            [(st, ear, due, i) for i, st, ear, due, _ in rows],
        )
        self.db.executemany(
            "INSERT OR REPLACE INTO results (node, slot, ear) VALUES (?, ?, ?)",
            [(i, slot, ear) for i, _, ear, _, slot in rows],
        )
        self.db.execute("COMMIT")


def run(args: argparse.Namespace, fb: Any, port: int, keys: list[Any], work: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        floor = Floor(port, keys, args.interval, f"{work}/floor.db")
        loop = asyncio.get_running_loop()
        stop, stop_sampling = asyncio.Event(), asyncio.Event()
        t0 = loop.time()
        tasks = [
            asyncio.create_task(floor.node(i, t0 + args.interval * i / len(keys), stop))
            for i in range(len(keys))
        ]
        write_task = asyncio.create_task(floor.writer(stop))
        await asyncio.sleep(args.interval + 1.0)  # warm-up: every node has been contacted
        sampled: list[float] = []
        sampling_cpu = [0.0]
        sampler = asyncio.create_task(fb._sample_verify(stop_sampling, sampled, sampling_cpu))
        c0, n0, f0, w0 = time.process_time(), floor.cycles, floor.failures, time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu = time.process_time() - c0 - sampling_cpu[0]
        cycles, wall = floor.cycles - n0, time.monotonic() - w0
        failures = floor.failures - f0
        stop_sampling.set()
        await sampler
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await write_task
        floor.flush()
        stored = floor.db.execute("SELECT count(*) FROM results").fetchone()[0]
        sample = [r[0] for r in floor.db.execute("SELECT ear FROM results LIMIT 20")]
        floor.db.close()
        return {
            "cycles": cycles,
            "wall": wall,
            "cpu": cpu,
            "failures": failures,
            "sampled": sampled,
            "stored": stored,
            "ears_verified": sum(floor.ear_verifies(t) for t in sample),
        }

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="2,000 nodes at 2 s for 10 s")
    ap.add_argument("--runtime-events", type=int, default=4)
    args = ap.parse_args()
    if args.quick:
        args.nodes, args.interval, args.seconds = 2000, 2.0, 10.0

    fb = _fleet_bench()
    firmware = fb.OVMF_LOG.read_bytes()
    from attest.testing.fleet_sim import SimFleet

    ctx = mp.get_context("spawn")
    port_q, gaps_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sim = ctx.Process(
        target=fb.simulate,
        args=(args.nodes, firmware, args.runtime_events, port_q, stop, gaps_q),
        daemon=True,
    )
    sim.start()
    port = port_q.get(timeout=300)
    enroll = SimFleet(args.nodes)
    keys = [enroll.nodes[i].tpm.ak_public().key for i in range(args.nodes)]
    del enroll
    with tempfile.TemporaryDirectory(prefix="attest-fleet-floor-") as work:
        edge = fb._bare_verify_us()
        got = run(args, fb, port, keys, work)
        edge += fb._bare_verify_us()
    stop.set()
    with contextlib.suppress(Exception):
        gaps_q.get(timeout=60)
    sim.join(30)
    rate = got["cycles"] / got["wall"]
    target = args.nodes / args.interval
    per_us = got["cpu"] / max(got["cycles"], 1) * 1e6
    verify_us = median(got["sampled"]) if got["sampled"] else median(edge)
    print(
        f"floor: {rate:.1f} cycles/s (target {target:.0f}), CPU {got['cpu'] / got['wall']:.2f} "
        f"core, {per_us:.0f} µs per cycle; bare ECDSA P-256 verify {verify_us:.1f} µs "
        f"(sampled in the window; {median(edge):.1f} at its edges); "
        f"{got['failures']} failed checks, {got['stored']} result rows stored, "
        f"{got['ears_verified']} of 20 sampled EARs verify"
    )
    print(
        f"fleet_floor nodes={args.nodes} interval_s={args.interval:g} cycles_per_s={rate:.0f} "
        f"keeps_up={int(rate >= 0.95 * target)} cpu={got['cpu'] / got['wall']:.2f} "
        f"floor_us_per_cycle={per_us:.0f} bare_verify_us={verify_us:.0f} "
        f"floor_over_verify={per_us / verify_us:.1f} failures={got['failures']} "
        f"ears_verified={got['ears_verified']}"
    )
    return 0 if got["failures"] == 0 and got["cycles"] > 0 and got["ears_verified"] == 20 else 1


if __name__ == "__main__":
    sys.exit(main())
