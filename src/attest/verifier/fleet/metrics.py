"""The fleet service's ``/metrics``: the Prometheus text exposition, through ``prometheus-client``.

One ``CollectorRegistry`` per app (``fleet_registry``), never the process-wide default: several
apps in one process (tests, workers started in one interpreter) each expose their own. The
collector reads the store and this worker's counters when scraped. Every metric has HELP;
counters end in ``_total``; times are seconds; a share is a ``_ratio`` (0..1). The names are
listed in docs/fleet.md ("Metrics") and ``promtool check metrics`` runs on them in tests/fleet.

While the database is unreachable only ``attest_fleet_database_up 0`` and this worker's own
counters (poller, webhooks) are exposed: nothing else can be read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from attest.manifest.evaluate import EmbargoState
from attest.verifier.fleet.model import SEVERITY, NodeRow
from attest.verifier.fleet.poller import LATENCY_BUCKETS, Poller
from attest.verifier.fleet.rollout import ReleaseRollout
from attest.verifier.fleet.store import Store
from attest.verifier.fleet.trust import RegistryState
from attest.verifier.fleet.webhooks import WebhookSender

# The text format every Prometheus 2.x reads (the names need nothing newer).
METRICS_MEDIA_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: Iterable[tuple[str, float]]) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=[label])
    for k, v in values:
        g.add_metric([k], v)
    return g


def fleet_metrics(
    nodes: list[NodeRow],
    releases: list[ReleaseRollout],
    registry: RegistryState,
    *,
    stale: int,
) -> Iterable[Metric]:
    """What the store says of the fleet: nodes by verdict and enrollment strength, stale nodes,
    the registry, rollout shares and embargo clocks."""
    counts = dict.fromkeys(SEVERITY, 0)
    strengths: dict[str, int] = {}
    for n in nodes:
        counts[n.verdict] = counts.get(n.verdict, 0) + 1
        if n.enrollment is not None:
            strengths[n.enrollment] = strengths.get(n.enrollment, 0) + 1
    yield _labelled(
        "attest_fleet_nodes",
        "registered nodes by current verdict",
        "verdict",
        sorted((str(k), v) for k, v in counts.items()),
    )
    yield _gauge(
        "attest_fleet_stale_nodes",
        "nodes not appraised within the freshness bound (shown stale; their stored verdict "
        "is kept)",
        stale,
    )
    yield _labelled(
        "attest_fleet_enrollments",
        "enrolled nodes by enrollment strength",
        "strength",
        sorted(strengths.items()),
    )
    yield _gauge(
        "attest_fleet_registry_ok",
        "1 while nodes are appraised against a valid, fresh trusted registry; 0 otherwise "
        "(every node is could-not-appraise when one is configured)",
        int(registry.ok and registry.registry is not None),
    )
    yield _labelled(
        "attest_fleet_release_share_ratio",
        "share of registered nodes attesting to a release (0..1)",
        "version",
        [(r.version, r.share) for r in releases],
    )
    yield _labelled(
        "attest_fleet_embargo_overdue",
        "1 when an embargoed release's disclosure is late",
        "version",
        [(r.version, int(r.overdue)) for r in releases if r.embargo is not EmbargoState.NONE],
    )


def poller_metrics(poller: Poller | None) -> Iterable[Metric]:
    """This worker's appraisal counters and latency histogram (known without the database)."""
    if poller is None:
        return
    m = poller.metrics
    yield _counter("attest_fleet_appraisals", "appraisals completed by this worker", m.appraisals)
    yield _counter(
        "attest_fleet_poll_failures",
        "appraisals by this worker that failed (the node unreachable, or its answer refused)",
        m.failures,
    )
    yield _counter(
        "attest_fleet_polls_deferred",
        "contacts put off: the answers being read held the read budget",
        m.deferred,
    )
    yield _counter(
        "attest_fleet_results_dropped", "results discarded: the lease was lost", m.dropped
    )
    buckets: list[tuple[str, float]] = []
    acc = 0
    for bound, k in zip((*LATENCY_BUCKETS, float("inf")), m.latency_buckets, strict=True):
        acc += k
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", acc))
    yield HistogramMetricFamily(
        "attest_fleet_appraisal_seconds",
        "challenge + appraisal time per node",
        buckets=buckets,
        sum_value=m.latency_sum,
    )


def webhook_metrics(webhooks: WebhookSender | None) -> Iterable[Metric]:
    """This worker's webhook counters, and the outbox's size at its last count."""
    if webhooks is None:
        return
    w = webhooks.metrics
    yield _counter(
        "attest_fleet_webhooks_sent", "webhook events delivered (2xx) by this worker", w.sent
    )
    yield _counter(
        "attest_fleet_webhooks_failed_attempts",
        "webhook deliveries that failed (retried with backoff)",
        w.failed_attempts,
    )
    yield _counter(
        "attest_fleet_webhooks_dropped",
        "undelivered webhook events this worker dropped, oldest first, at the outbox's bound "
        "(or held in memory over its bound)",
        w.dropped,
    )
    yield _gauge(
        "attest_fleet_webhook_outbox_pending",
        "undelivered webhook events in the database outbox (every worker's), at this worker's "
        "last count",
        w.pending,
    )
    yield _gauge(
        "attest_fleet_webhook_queue",
        "webhook events held in this worker's memory until the database answers",
        len(webhooks.held),
    )


@dataclass(frozen=True, slots=True)
class FleetCollector(Collector):
    """The fleet's metrics, read at every scrape."""

    store: Store
    report: Callable[[list[NodeRow]], list[ReleaseRollout]]
    registry: Callable[[], RegistryState]
    stale: Callable[[list[NodeRow]], int]
    poller: Poller | None
    webhooks: WebhookSender | None

    def describe(self) -> Iterable[Metric]:
        return ()  # names are not checked at registration: collecting reads the database

    def collect(self) -> Iterable[Metric]:
        db = self.store.check()
        yield _gauge(
            "attest_fleet_database_up",
            "1 while the fleet's database answers, 0 otherwise",
            int(db.up),
        )
        if db.up:  # otherwise nothing else can be read: say so, and what this worker counted
            nodes = self.store.list_nodes()
            yield from fleet_metrics(
                nodes, self.report(nodes), self.registry(), stale=self.stale(nodes)
            )
        yield from poller_metrics(self.poller)
        yield from webhook_metrics(self.webhooks)


def fleet_registry(collector: FleetCollector) -> CollectorRegistry:
    """The app's own registry (not the process-wide default) holding the fleet's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
