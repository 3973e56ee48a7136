"""Telling the fleet's receivers when a verdict stops being current (an adapter).

``watch_staleness`` re-reads the node list every ``period`` seconds and, for each node that
turned stale (``model.Freshness``: not appraised within the freshness bound) or current again,
queues a ``node-stale`` / ``node-fresh`` webhook. While the database is unreachable it keeps
judging the last list it read against the clock: an outage is exactly when verdicts go stale,
and the receivers hear of it then, not after the database is back. Every worker watches, so
a receiver may hear of one node from each (at least once; events carry the node id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from attest.errors import DatabaseUnavailable
from attest.verifier.fleet.model import Freshness, NodeRow
from attest.verifier.fleet.store import Store
from attest.verifier.fleet.webhooks import WebhookSender

logger = logging.getLogger(__name__)


class StaleWatch:
    """Which nodes were stale at the last look (so that each change is told once)."""

    def __init__(self, freshness: Freshness, sender: WebhookSender) -> None:
        self.freshness = freshness
        self.sender = sender
        self.nodes: list[NodeRow] = []
        self.stale: set[str] = set()

    def look(self, nodes: list[NodeRow] | None, now: float) -> None:
        """Judge ``nodes`` (None: the database is away, judge the last list read)."""
        if nodes is not None:
            self.nodes = nodes
        seen = set()
        went: dict[bool, list[str]] = {True: [], False: []}
        for n in self.nodes:
            seen.add(n.node_id)
            stale = self.freshness.stale(n, now)
            if stale == (n.node_id in self.stale):
                continue
            (self.stale.add if stale else self.stale.discard)(n.node_id)
            went[stale].append(n.node_id)
            self.sender.notify_freshness(n, stale=stale, age=self.freshness.age(n, now), now=now)
        for stale, ids in went.items():
            if ids:  # one line per look, not one per node
                logger.warning(
                    "%d node verdicts %s",
                    len(ids),
                    "are stale (not appraised within the freshness bound)"
                    if stale
                    else "are current again",
                    extra={"nodes": ids[:20]},
                )
        self.stale &= seen  # removed nodes


async def watch_staleness(
    store: Store,
    watch: StaleWatch,
    stop: asyncio.Event,
    *,
    period: float,
    clock: Callable[[], float] = time.time,
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        nodes: list[NodeRow] | None
        try:
            nodes = await loop.run_in_executor(None, store.list_nodes)
        except DatabaseUnavailable:  # logged by the store once per outage
            nodes = None
        except Exception:
            logger.exception("reading the nodes for staleness failed")
            nodes = None
        watch.look(nodes, clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
