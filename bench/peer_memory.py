#!/usr/bin/env python3
"""Memory of the verifiers while hostile peers stream endless bodies (issue 15): the resident
set of ``attest verify`` and of ``attest fleet serve`` must stay within ``--bound`` MiB (50)
of the same process idle, measured in the same run.

    python bench/peer_memory.py [--peers N] [--seconds S] [--bound MIB]

The peers: N servers on 127.0.0.1 (``attest.testing.hostile_peers``, ``endless``) answering
every request with a chunked body that never ends, as fast as loopback carries it.

- ``attest verify``: one process talks to one node. Each peer answers a valid identity
  (a simulated node's) and streams without end from the next request on -- the evidence,
  whose cap (16 MiB) is the largest a verifier reads. The reference is the peak RSS
  (``wait4``'s ``ru_maxrss``) of ``attest verify`` against a peer that answers the same
  identity and then a small JSON object that is no evidence (3 runs, the largest); then N
  processes, 5 at a time, each against its own endless peer: their largest peak and its
  excess over the reference.
- ``attest fleet serve`` (SQLite, no auth on loopback, ``--interval 2``) under two loads: (a)
  N enrolled nodes whose URLs are the peers are polled (added to its database while it runs)
  and (b) a client keeps one registration of each peer in flight (``POST /v1/nodes``, each
  probing the peer's identity). Warm-up: 10 s of both against N peers answering a small JSON
  object (the same code paths, imports and pools, small answers); idle is the largest RSS
  sampled over the next 2 s, those nodes still polled. Then ``--seconds`` s of both against
  the endless peers, RSS sampled every 50 ms; the growth of ``VmHWM`` (the kernel's peak) over
  the idle one catches what the sampling misses. The excess is the larger of the two.
  ``--serve-load poll|register`` runs one load alone.

Both excesses must stay within the bound; the exit status is 1 otherwise. The bytes the peers
managed to send are printed too (what an unbounded reader would have held).
Last line:
    peer_memory peers=… bound_mib=… verify_ref_mib=… verify_peak_mib=… verify_excess_mib=…
                serve_idle_mib=… serve_peak_mib=… serve_excess_mib=… peers_sent_gib=… ok=…
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from attest.testing.hostile_peers import HostileServer, hostile  # noqa: E402

MIB = 1 << 20
PY = [sys.executable, "-m", "attest"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _verify_peak_kib(url: str, state: Path) -> int:
    """The peak RSS (KiB) of one ``attest verify`` of ``url``."""
    proc = subprocess.Popen(
        [*PY, "verify", url, "--tofu", "--state", str(state)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here
    return int(usage.ru_maxrss)


def _identity() -> bytes:
    from attest.testing.fleet_sim import SimFleet

    sim = SimFleet(1, seed="peer-memory-verify")
    return json.dumps(sim.identity(sim.nodes[0])).encode()


def bench_verify(n: int, work: Path) -> tuple[float, float, int]:
    """(reference MiB, largest peak MiB, bytes the peers sent) of ``attest verify``."""
    ident = _identity()
    with hostile("json", identity=ident) as small:
        ref = max(_verify_peak_kib(small.url, work / f"ref{i}") for i in range(3))
    with ExitStack() as stack, ThreadPoolExecutor(5) as pool:
        peers = [stack.enter_context(hostile("endless", identity=ident)) for _ in range(n)]
        peaks = list(
            pool.map(lambda ip: _verify_peak_kib(ip[1].url, work / f"v{ip[0]}"), enumerate(peers))
        )
        sent = sum(p.sent for p in peers)
    return ref / 1024, max(peaks) / 1024, sent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _fleet(work: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = _free_port()
    (work / "dev.toml").write_text("allow_unidentified_release = true\n")
    db = work / "fleet.db"
    cmd = [*PY, "fleet", "serve", "--db", f"sqlite:///{db}", "--insecure-no-auth", "--tofu"]
    cmd += ["--policy", str(work / "dev.toml"), "--ear-key", str(work / "ear.pem")]
    cmd += ["--listen", f"127.0.0.1:{port}", "--interval", "2", "--timeout", "5"]
    log = (work / "fleet.log").open("wb")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fleet serve exited: {(work / 'fleet.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("fleet serve did not start within 30 s")
            time.sleep(0.1)
        yield proc, url, db
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _enroll(db: Path, peers: list[HostileServer], name: str) -> None:
    """N enrolled nodes whose URLs are the peers, written to the running service's database."""
    from attest.testing.fleet_sim import SimFleet
    from attest.verifier.fleet.store import SqliteStore

    sim = SimFleet(len(peers), seed=f"peer-memory-{name}")
    store = SqliteStore(str(db))
    try:
        for i, peer in enumerate(peers):
            store.add_node(f"{name}-{i}", peer.url, sim.enrollment(i), now=time.time())
    finally:
        store.close()


@contextmanager
def _load(
    url: str, db: Path, peers: list[HostileServer], name: str, load: str
) -> Iterator[list[int]]:
    """While inside: N enrolled nodes at ``peers`` being polled (``load`` poll or both) and one
    registration of each peer in flight (register or both); yields the registrations' codes."""
    if load in ("both", "poll"):
        _enroll(db, peers, name)
    stop = threading.Event()
    codes: list[int] = []
    client = threading.Thread(
        target=lambda: codes.extend(_registrations(url, peers, stop)), daemon=True
    )
    if load in ("both", "register"):
        client.start()
    try:
        yield codes
    finally:
        stop.set()
        if client.is_alive():
            client.join(80)


def _sample(pid: int, seconds: float) -> int:
    """The largest VmRSS (KiB) of ``pid`` sampled every 50 ms for ``seconds``."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, _status_kib(pid)[0])
        time.sleep(0.05)
    return peak


def _registrations(url: str, peers: list[HostileServer], stop: threading.Event) -> list[int]:
    """Keep one ``POST /v1/nodes`` per peer in flight until ``stop``; their status codes."""
    codes: list[int] = []

    def one(peer: HostileServer) -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                codes.append(c.post(url + "/v1/nodes", json={"url": peer.url}).status_code)

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in peers]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(70)
    return codes


def bench_serve(
    peers: list[HostileServer], work: Path, seconds: float, load: str = "both"
) -> tuple[float, float]:
    """(idle MiB, excess MiB) of ``attest fleet serve``; prints what it saw. ``load``: poll
    (enrolled hostile nodes), register (registrations in flight) or both. Idle is measured
    after a warm-up doing the same with peers that answer a small JSON object (the same code
    paths, imports and pools, small answers), while those nodes are still polled."""
    with ExitStack() as stack, _fleet(work) as (proc, url, db):
        time.sleep(3)  # started: imports done, the first (empty) leases taken
        small = [stack.enter_context(hostile("json")) for _ in peers]
        with _load(url, db, small, "small", load) as warm:
            time.sleep(10)
        idle = _sample(proc.pid, 2)
        idle_hwm = _status_kib(proc.pid)[1]
        with _load(url, db, peers, "hostile", load) as codes:
            peak = _sample(proc.pid, seconds)
            hwm = _status_kib(proc.pid)[1]
        alive = proc.poll() is None
        nodes = httpx.get(url + "/v1/nodes", timeout=10).json()["nodes"] if alive else []
    hostile_nodes = [n for n in nodes if str(n.get("node_id", "")).startswith("hostile-")]
    verdicts = sorted({str(n.get("verdict")) for n in hostile_nodes})
    print(
        f"  fleet serve: warm-up {len(warm)} registrations of small-answer peers; under load "
        f"{len(codes)} registrations answered "
        f"({', '.join(f'{c}: {codes.count(c)}' for c in sorted(set(codes)))}); "
        f"{len(hostile_nodes)} hostile nodes polled, verdicts {verdicts}; alive {alive}",
        flush=True,
    )
    print(
        f"  fleet serve: idle {idle / 1024:.1f} MiB, sampled peak {peak / 1024:.1f} MiB, "
        f"VmHWM {idle_hwm / 1024:.1f} -> {hwm / 1024:.1f} MiB",
        flush=True,
    )
    return idle / 1024, max(peak - idle, hwm - idle_hwm) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0, help="fleet serve under load")
    ap.add_argument("--bound", type=float, default=50.0, help="MiB over idle (default 50)")
    ap.add_argument(
        "--serve-load",
        choices=("both", "poll", "register"),
        default="both",
        help="fleet serve: polled hostile nodes, registrations of them, or both (default)",
    )
    ap.add_argument("--skip-verify", action="store_true", help="measure fleet serve only")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="peer-memory-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        t0 = time.monotonic()
        v_ref, v_peak, sent_verify = (
            (0.0, 0.0, 0) if args.skip_verify else bench_verify(args.peers, work)
        )
        v_excess = v_peak - v_ref
        peers = [stack.enter_context(hostile("endless")) for _ in range(args.peers)]
        print(
            f"  attest verify: reference {v_ref:.1f} MiB, largest peak of {args.peers} against "
            f"endless peers {v_peak:.1f} MiB (+{v_excess:.1f}); peers sent "
            f"{sent_verify / MIB:.0f} MiB ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        t1 = time.monotonic()
        s_idle, s_excess = bench_serve(peers, work, args.seconds, args.serve_load)
        sent_serve = sum(p.sent for p in peers)
        sent = sent_verify + sent_serve
        print(
            f"  fleet serve: excess {s_excess:.1f} MiB; peers sent "
            f"{sent_serve / MIB:.0f} MiB ({time.monotonic() - t1:.0f} s)",
            flush=True,
        )
    ok = v_excess <= args.bound and s_excess <= args.bound
    print(
        f"peer_memory peers={args.peers} bound_mib={args.bound:g} verify_ref_mib={v_ref:.1f} "
        f"verify_peak_mib={v_peak:.1f} verify_excess_mib={v_excess:.1f} "
        f"serve_idle_mib={s_idle:.1f} serve_peak_mib={s_idle + s_excess:.1f} "
        f"serve_excess_mib={s_excess:.1f} peers_sent_gib={sent / (1 << 30):.2f} "
        f"ok={int(ok)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
