"""Fixtures of the fleet tier: simulated nodes on loopback, a throwaway PostgreSQL server,
and a signed registry.

PostgreSQL: a throwaway cluster (``attest.testing.pg``: Debian's server binaries, a temporary
directory, a free port) for the session. Missing binaries skip the PostgreSQL tests with the
reason, and FAIL them under ``CI=true`` (``.ci/run`` installs the ``postgresql`` package).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.manifest import NOW, World, build_world, release
from tests.support.poller import SIM_PLATFORMS

from attest.manifest import VerifiedRegistry, verify_snapshot
from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import PgCluster, PgServer, PgUnavailable
from attest.verifier.fleet.trust import RegistryState


def serve_command(db: str, *args: str) -> list[str]:
    """``attest fleet serve --db DB ARGS`` as a subprocess's command line."""
    return [sys.executable, "-m", "attest.cli.fleet", "serve", "--db", db, *args]


class SimServer:
    """A ``SimFleet`` serving from its own thread and event loop (so that worker processes and
    the test's own loop can both talk to it)."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(fleet.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def url(self, i: int) -> str:
        return self.fleet.url(self.port, i)

    def origin(self, i: int) -> str:
        """Node ``i`` on a port of its own: an origin URL, as ``POST /v1/nodes`` accepts."""
        port = asyncio.run_coroutine_threadsafe(self.fleet.listen(i), self.loop).result(5)
        return f"http://127.0.0.1:{port}"

    def call(self, fn: object, *args: object) -> None:
        """Run a control (``set_image``, ``tamper``, ...) on the server's thread."""
        done = threading.Event()

        def go() -> None:
            fn(*args)  # type: ignore[operator]
            done.set()

        self.loop.call_soon_threadsafe(go)
        done.wait(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fleet.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def sim_server(fleet: SimFleet) -> Iterator[SimServer]:
    srv = SimServer(fleet)
    try:
        yield srv
    finally:
        srv.close()


# --- a signed registry -------------------------------------------------------------------------


@dataclass
class Registry:
    world: World
    verified: VerifiedRegistry

    def root_hash(self, version: str) -> bytes:
        return self.verified.snapshot.releases[version].verity.root_hash

    def state(self) -> RegistryState:
        """What a fleet's registry source answers while this registry is valid and fresh."""
        return RegistryState(self.verified, configured=True)


def dev_policy(directory: Path) -> str:
    """A rules file with the developer rule that lets ``fleet serve`` start without a
    registry (``allow_unidentified_release``)."""
    path = directory / "dev-policy.json"
    path.write_text('{"allow_unidentified_release": true}')
    return str(path)


def dev_serve_args(directory: Path) -> list[str]:
    """``fleet serve`` options for a test on loopback: simulated nodes (trust on first use), no
    API token, an EAR key and the developer rule in ``directory``."""
    ear = str(directory / "ear.pem")
    return ["--tofu", "--insecure-no-auth", "--ear-key", ear, "--policy", dev_policy(directory)]


@pytest.fixture(scope="session")
def registry() -> Registry:
    """Releases 1.0.0 and 1.1.0, and 1.2.0 embargoed (blessed by checksum only)."""
    from attest.manifest.model import Embargo

    world = build_world()
    snap = world.snapshot(
        releases=[
            release("1.0.0", 1),
            release("1.1.0", 2),
            release("1.2.0", 3, commit=False, embargo=Embargo()),
        ],
        platforms=SIM_PLATFORMS,
    )
    verified = verify_snapshot(world.root, world.registry_bytes(snap), now=NOW)
    return Registry(world, verified)


# --- PostgreSQL --------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A cluster of its own (a test that stops and restarts it). Missing server binaries or
    psycopg skip the test with the reason, and fail it under ``CI=true``."""
    try:
        c = PgCluster.create()
    except PgUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    c.start()
    try:
        yield c
    finally:
        c.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with pg_cluster() as c:
        yield PgServer(c.dsn_base)


@pytest.fixture()
def pg_dsn(pg_server: PgServer) -> str:
    return pg_server.new_database()
