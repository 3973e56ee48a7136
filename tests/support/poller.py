"""The fleet poller as the tests run it: fast settings, waiting for a condition, the verdicts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from attest.verifier.fleet.poller import PollSettings
from attest.verifier.fleet.store import Store


def settings(**kw: Any) -> PollSettings:
    """Poll settings for loopback tests (half-second interval, short leases); ``kw`` overrides."""
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
