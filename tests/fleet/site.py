"""A small simulated fleet behind a real fleet service on 127.0.0.1, for the page, filter and
metrics tests (``fleet_site``), and headless Chromium (Debian's ``chromium``) to look at it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from tests.fleet.conftest import Registry, sim_server
from tests.support.poller import settings

from attest.errors import NodeIdRefused
from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.enrolled import PairEnrollment
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.store import SqliteStore
from attest.verifier.fleet.webhooks import WebhookSender

HOSTILE = 'evil"><script>alert(1)</script>'


def chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tempfile.mkdtemp(prefix="attest-chromium-")
    try:
        return subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@dataclass(frozen=True)
class Site:
    base: str  # http://127.0.0.1:PORT
    store: SqliteStore
    poller: Poller


@contextlib.contextmanager
def fleet_site(tmp_path: Path, registry: Registry) -> Iterator[Site]:
    """A fleet of five: three on 1.2.0 (embargoed), one tampered, one down, and a hostile id;
    and a host + guest pair whose host vouched for another vTPM (the guest layer fails).
    Appraised once by a real poller; the service exposes that poller's counters and a
    (never started) webhook sender's."""
    sim = SimFleet(7)
    with sim_server(sim) as srv:
        for i in range(7):
            srv.call(sim.set_image, i, registry.root_hash("1.2.0" if i < 4 else "1.0.0"))
        srv.call(sim.tamper, 3)
        srv.call(sim.vouch, 5, "g1", bytes(32))
        store = SqliteStore(str(tmp_path / "fleet.db"))
        for i in range(5):
            store.add_node(f"node-{i}", srv.url(i), sim.enrollment(i), now=time.time())
        store.add_node(
            "pair-1",
            srv.url(6),
            PairEnrollment(sim.enrollment(5), sim.enrollment(6, ek=True), "g1"),
            now=time.time(),
            host_url=srv.url(5),
        )
        # A hostile id cannot be registered at all (one rule for every node id); hostile text
        # still reaches the page through what the store keeps, here the URL in the error.
        with pytest.raises(NodeIdRefused):
            store.add_node(HOSTILE, "http://127.0.0.1:1/", sim.enrollment(0), now=time.time())
        store.add_node(
            "hostile",
            f"http://127.0.0.1:{free_port()}/{HOSTILE}",
            sim.enrollment(0),
            now=time.time(),
        )
        poller = Poller(
            store,
            settings=settings(interval=60, timeout=0.5, unreachable_after=1),
            appraise=default_appraiser(),
            registry=registry.state,
        )

        async def poll_once() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            end = time.monotonic() + 10
            while time.monotonic() < end and any(
                n.verdict in ("none",) for n in store.list_nodes()
            ):
                await asyncio.sleep(0.05)
            stop.set()
            await task

        asyncio.run(poll_once())
        poller.close()
    webhooks = WebhookSender(
        f"http://127.0.0.1:{free_port()}/hook", b"s" * 16, store=store, worker_id="w1"
    )
    app = create_fleet_app(
        store, registry=registry.state, access=Access("w" * 16), poller=poller, webhooks=webhooks
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield Site(f"http://127.0.0.1:{port}", store, poller)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
