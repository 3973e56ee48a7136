"""The fleet service's garbage-collection policy (attest.verifier.fleet.heap)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from attest.verifier.fleet import heap


@pytest.fixture()
def restored_gc() -> Iterator[None]:
    """The test process's collector as it was: thresholds, nothing left frozen."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_tune_gc_freezes_the_started_process_and_stops_full_collections_by_count(
    restored_gc: None,
) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    heap.tune_gc()
    assert gc.get_freeze_count() > 1000  # the modules, classes, ... alive now
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 1 << 30)
    gc.set_threshold(50_000, 10, 10)
    heap.tune_gc()
    assert gc.get_threshold() == (50_000, 10, 1 << 30)  # never more often than configured

    class Cycle:
        me: object

    made = Cycle()
    made.me = made  # made after: still the collector's to find
    del made
    assert gc.collect() >= 1


async def test_collect_periodically_collects_each_period_and_stops_when_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap.gc, "collect", lambda: calls.append(1) or 0)
    stop = asyncio.Event()
    task = asyncio.create_task(heap.collect_periodically(stop, period=0.02))
    await asyncio.sleep(0.15)
    assert 3 <= len(calls) <= 8
    stop.set()
    await asyncio.wait_for(task, 1.0)  # returns at once, not after another period
    seen = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == seen
