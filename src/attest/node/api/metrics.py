"""attestd's ``/metrics``: the Prometheus text exposition, through ``prometheus-client``.

One ``CollectorRegistry`` per app (``node_registry``), never the process-wide default: two apps
in one process (tests, an embedding service) each expose their own node. The collector reads
the node's state when scraped -- the self-appraisal, the TPM and broker state, the batcher,
the broker's state file system report -- so the numbers are never cached between scrapes.
Every metric has HELP; counters end in ``_total``; times are seconds, sizes bytes (the names
are listed in docs/api.md and checked by ``promtool check metrics`` in tests/api).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from attest.errors import AttestError
from attest.node.port import StateFs

if TYPE_CHECKING:
    from attest.node.api.app import NodeContext

logger = logging.getLogger(__name__)

# The text format every Prometheus 2.x reads (the names need nothing newer).
METRICS_MEDIA_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def state_fs(ctx: NodeContext) -> StateFs | None:
    """The broker's state file system report; None (logged) when the broker cannot say."""
    try:
        return ctx.node.state_fs()
    except AttestError as exc:
        logger.info("state file system report unavailable: %s", exc)
        return None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    """attestd's metrics, read from its ``NodeContext`` at every scrape (blocking: the status
    and the state file system report ask the broker; ``/metrics`` collects off the loop)."""

    def __init__(self, ctx: NodeContext, status: Callable[[], dict[str, Any]]) -> None:
        self.ctx = ctx
        self.status = status

    def describe(self) -> Iterable[Metric]:
        return ()  # names are not checked at registration: collecting asks the broker

    def collect(self) -> Iterable[Metric]:
        # At the first scrape, not at start (as attest.node.api.app.basic_status).
        from attest.appraisal.selfcheck import SelfVerdict

        ctx = self.ctx
        m, b = ctx.metrics, ctx.batcher
        verdict = str(self.status().get("verdict", SelfVerdict.UNKNOWN))
        yield _gauge("attest_up", "1 while attestd runs", 1)
        yield _gauge(
            "attest_tpm_ready",
            "1 while the TPM answers through attestd-tpm: evidence can be served (/readyz)",
            int(ctx.ready),
        )
        yield _gauge("attest_broker_up", "0 while attestd-tpm cannot be reached", ctx.broker_up)
        ok = GaugeMetricFamily(
            "attest_status_ok",
            "1 when the self-appraisal verdict (label) is ok or blessed",
            labels=["verdict"],
        )
        ok.add_metric([verdict], int(verdict in (SelfVerdict.OK, SelfVerdict.BLESSED)))
        yield ok
        yield _counter("attest_challenges", "evidence requests (challenges) received", m.challenges)
        yield _counter(
            "attest_quotes", "TPM quotes taken (one quote answers a batch of challenges)", b.quotes
        )
        yield _gauge("attest_quote_waiting", "challenges waiting for the next TPM quote", b.waiting)
        yield _counter(
            "attest_tpm_failures",
            "TPM operations that failed (readiness off until a probe passes)",
            m.tpm_failures,
        )
        yield _counter(
            "attest_activations",
            "credential activations answered (TPM2_ActivateCredential)",
            m.activations,
        )
        yield _gauge(
            "attest_start_time_seconds",
            "when attestd started, in seconds since the epoch",
            m.started,
        )
        yield from _state_fs_metrics(state_fs(ctx))


def _state_fs_metrics(fs: StateFs | None) -> Iterable[Metric]:
    if fs is None:
        return
    yield _gauge(
        "attest_state_fs_free_bytes", "free bytes on the broker's state file system", fs.free_bytes
    )
    yield _gauge(
        "attest_state_fs_low", "1 when free bytes are below the broker's threshold", int(fs.low)
    )
    yield _counter(
        "attest_state_fs_write_failures",
        "records refused: a log could not be written",
        fs.write_failures,
    )


def node_registry(ctx: NodeContext, status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """The app's own registry (not the process-wide default) holding its node's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(ctx, status))
    return registry
