"""The fleet service's garbage-collection policy (an adapter: process-wide settings).

A verifier keeps tens of thousands of long-lived objects (the modules and configuration of the
started service, then each node's ``NodeMemory`` and enrollment) and makes many short-lived
ones per appraisal. CPython's cyclic collector runs a full collection whenever enough objects
have survived its young generations, and each full collection walks every long-lived object
again: measured with ``bench/fleet.py`` at 1,000 appraisals/s, five full collections per 10 s
over ~160,000 objects, ~70 µs of CPU per appraisal -- more than half of a bare ECDSA verify --
and a pause of ~0.13 s on the event loop each time.

So the service (``attest fleet serve``, and the benchmark as it) calls ``tune_gc`` once before
it polls: what is alive then is frozen out of the collector's view (``gc.freeze``), and full
collections no longer follow the allocation count but a clock: ``collect_periodically`` runs
one every ``FULL_COLLECTION_PERIOD`` seconds, and memory held only by reference cycles waits
at most one period to be freed. The youngest generation is collected every ``YOUNG_THRESHOLD``
allocations instead of 700: each young collection walks what the appraisals in flight hold at
that moment, so fewer of them cost less -- at 1,000 appraisals/s the collector's CPU went from
25-28 to 5-6 µs per appraisal (``bench/fleet.py --quick``, A B A B, 2026-12-07).

Garbage in reference cycles waits longer so, and up to a minute once it has lived through a
young collection: nothing a peer sends may be freed only by the collector (a body in a cycle
with its error was: ``attest.verifier.client``, fixed 2026-12-08). ``bench/peer_memory.py``,
run by CI, holds the service to its memory bound against endless peers with these settings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

logger = logging.getLogger(__name__)

FULL_COLLECTION_PERIOD = 60.0
YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)
# Full collections by allocation count: practically never.
_NO_FULL_BY_COUNT = 1 << 30


def tune_gc() -> None:
    """Freeze what is alive now, collect the young generation less often and leave full
    collections to ``collect_periodically``."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, _NO_FULL_BY_COUNT)


async def collect_periodically(stop: asyncio.Event, period: float = FULL_COLLECTION_PERIOD) -> None:
    """One full collection every ``period`` seconds until ``stop`` is set."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=period)
            return
        except TimeoutError:
            pass
        t = time.perf_counter()
        found = gc.collect()
        logger.debug(
            "full garbage collection: %d unreachable objects in %.0f ms",
            found,
            (time.perf_counter() - t) * 1000,
        )
