"""The fleet poller as the tests run it: fast settings, waiting for a condition, the verdicts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.appraisal import Appraised, appraise_incremental
from attest.appraisal.memory import NodeMemory
from attest.model import PcrSelection
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


def fresh_then_replayed(sim: SimFleet) -> tuple[Appraised, Appraised]:
    """Two incremental appraisals of ``sim``'s node 0: the first answers its challenge; the
    second's quote answers another nonce (a replay), and the memory it returns still holds the
    runtime log the first verified -- which vouches for nothing now."""
    node = sim.nodes[0]
    kw: dict[str, Any] = dict(
        enrollment=sim.enrollment(0),
        selection=PcrSelection.parse("sha256:0-7,13"),
        registry=None,
        platform_id=None,
        previous=None,
        tls_binding=None,
        now=datetime.now(UTC),
    )

    def challenge(memory: NodeMemory, nonce: bytes, answer: bytes) -> Appraised:
        req = {"nonce": answer.hex(), "pcrs": {"sha256": [*range(8), 13]}}
        doc = sim.evidence(node, {**req, "logs": memory.log_request()})
        return appraise_incremental(doc, memory=memory, nonce=nonce, **kw)

    first = challenge(NodeMemory(), b"a" * 32, b"a" * 32)
    replayed = challenge(first.memory, b"b" * 32, b"c" * 32)
    assert replayed.memory.runtime is not None
    return first, replayed
