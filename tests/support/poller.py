"""The fleet poller as the tests run it: fast settings, waiting for a condition, the verdicts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attest.testing.fleet_sim import SimFleet
from attest.verifier.fleet.poller import PollSettings
from attest.verifier.fleet.store import Store

# The simulated nodes' platforms, as their signed references go into the fleet tests' registry:
# nodes without a firmware log (PCRs 0-7 zero), and nodes booted with the OVMF q35 log of
# ../shared/eventlogs. The poll settings name the first unless told otherwise.
SIM_PLATFORM = "sim-no-firmware"
SIM_OVMF_PLATFORM = "sim-ovmf-q35"
OVMF_LOG = Path(__file__).resolve().parents[2].parent / "shared/eventlogs/ovmf__q35-direct-boot.bin"
SIM_PLATFORMS = (
    SimFleet(0).platform_reference(SIM_PLATFORM),
    SimFleet(0, firmware_log=OVMF_LOG.read_bytes()).platform_reference(SIM_OVMF_PLATFORM),
)


def settings(**kw: Any) -> PollSettings:
    """Poll settings for loopback tests (half-second interval, short leases, the simulated
    nodes' platform); ``kw`` overrides."""
    base: dict[str, Any] = dict(
        worker_id="t",
        interval=0.5,
        jitter=0.1,
        concurrency=16,
        timeout=1.0,
        lease_ttl=5.0,
        flush_interval=0.05,
        tick=0.02,
        unreachable_after=2,
        max_backoff=1.0,
        platform_id=SIM_PLATFORM,
    )
    base.update(kw)
    return PollSettings(**base)


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def verdicts(store: Store) -> dict[str, str]:
    return {n.node_id: n.verdict for n in store.list_nodes()}
