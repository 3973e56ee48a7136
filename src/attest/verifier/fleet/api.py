"""The fleet service's HTTP face: ``create_fleet_app(store, ...)``.

REST (JSON; times ISO 8601 UTC): ``/v1/nodes`` (GET list, POST register),
``/v1/nodes/{id}`` (GET, DELETE), ``/v1/nodes/{id}/ear`` (the latest signed EAR),
``/v1/nodes/{id}/results`` (recent appraisals), ``/v1/nodes/{id}/history`` (verdict changes,
each with its EAR), ``/v1/verifier-key`` (the EAR signing key as a JWK set),
``/v1/releases`` (rollout shares and embargo
clocks), ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` (503 with the reason while
the database is unreachable); and pages for people: ``/`` (fleet overview,
rollout, embargo clocks) and ``/nodes/{id}`` (verdict, explanation, findings, history).
Pages are rendered on the server with no script (``attest.verifier.fleet.pages``).

Registration never replaces an enrolled node silently: an id that is already enrolled -- given
by the client or claimed by the node -- is a ``409`` naming it, unless the request says
``"re_enroll": true``; a re-enrollment is recorded in the node's history (previous and new AK,
previous and new enrollment strength, "weaker" when it is) and resets its continuity.
Without a valid fresh registry (``--trust-dir``) every node is could-not-appraise with the
problem named: ``/v1/nodes`` and ``/v1/nodes/{id}`` carry ``registry``, ``/metrics`` the
gauge ``attest_fleet_registry_ok``, the page a banner. A node not appraised within its
freshness bound (``model.Freshness``) is shown ``stale`` with its age, its stored verdict kept;
while the database is unreachable every call that needs it is ``503`` (``check: "database"``).

Access (``attest.verifier.fleet.access``): writes need the write token, reads the read or the
write token when the service has a read token. Every error is ``{"error", "check", "detail"}``
and never echoes what a node or a client sent: a node that does not answer as an attest node is
one fixed ``502`` whatever it answered (or whether anything listens at all).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest import __version__
from attest.enroll import Enrollment
from attest.errors import (
    AttestError,
    DatabaseUnavailable,
    EvidenceFormatError,
    NodeIdTaken,
    RegistrationRefused,
    TransportError,
    VerificationError,
)
from attest.verifier.fleet.access import (
    Access,
    TokenAuth,
    error_answer,
    http_error,
    unreachable_answer,
    validation_error,
)
from attest.verifier.fleet.admission import (
    NODE_ID_RULE,
    NodeAddresses,
    check_node_id,
)
from attest.verifier.fleet.enrollment import PairEnrollment, Registration
from attest.verifier.fleet.model import SEVERITY, Freshness, NodeRow, iso
from attest.verifier.fleet.pages import render_node, render_overview, sorry_page
from attest.verifier.fleet.poller import LATENCY_BUCKETS, Poller
from attest.verifier.fleet.rollout import ReleaseRollout, rollout
from attest.verifier.fleet.signing import EarSigner
from attest.verifier.fleet.store import Store
from attest.verifier.fleet.trust import NO_REGISTRY, RegistryState
from attest.verifier.fleet.webhooks import WebhookSender

logger = logging.getLogger(__name__)


_URL = r"^https?://"


class RegisterRequest(BaseModel):
    url: str = Field(max_length=2048, pattern=_URL, description="the node's API (a pair's guest)")
    node_id: str | None = Field(default=None, pattern=NODE_ID_RULE)  # 1..128 characters
    host_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=_URL,
        description="a host + guest pair: the host's API",
    )
    guest_id: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:@+/-]+$",
        description="a pair: the guest's id on the host",
    )
    activation_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=_URL,
        description="the node's mutual-TLS listener, for credential activation (default: url)",
    )
    host_activation_url: str | None = Field(default=None, max_length=2048, pattern=_URL)
    re_enroll: bool = Field(
        default=False,
        description="replace the enrollment (URL and AK) of a node id that is already enrolled; "
        "recorded in its history, resets its continuity",
    )


EAR_MEDIA_TYPE = "application/eat+jwt"  # RFC 9711 §10.9.1: an EAT in a JWT
# Registrations contacting nodes at once; more wait their turn. Each holds at most one small
# answer (attest.verifier.client.MAX_SMALL_RESPONSE) whatever its node streams: memory stays
# bounded however many registrations of hostile URLs arrive together.
MAX_ENROLLING = 4


def node_json(n: NodeRow, *, ear: bool = True, now: float, freshness: Freshness) -> dict[str, Any]:
    """The node as REST and ``fleet ls --json`` show it: its stored verdict with its ``age``
    (seconds since its last appraisal), ``stale`` and ``state`` (the verdict, or ``stale``)."""
    doc = {**n.to_json(ear=ear), **freshness.to_json(n, now)}
    for k in ("added_at", "next_due", "last_appraised", "last_seen"):
        doc[k] = iso(doc[k])
    return doc


def create_fleet_app(
    store: Store,
    *,
    registry: Callable[[], RegistryState] = lambda: NO_REGISTRY,
    poller: Poller | None = None,
    webhooks: WebhookSender | None = None,
    enroll: Callable[[Registration], Enrollment | PairEnrollment] | None = None,
    access: Access,
    nodes: NodeAddresses = NodeAddresses(),  # noqa: B008 - frozen, immutable
    clock: Callable[[], float] = time.time,
    signer: EarSigner | None = None,
    freshness: Freshness = Freshness(),  # noqa: B008 - frozen, immutable
) -> FastAPI:
    app = FastAPI(
        title="attest fleet",
        version=__version__,
        description="Continuous attestation of a fleet of nodes.",
    )
    app.add_middleware(TokenAuth, access=access)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

    def now_dt() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    def report() -> list[ReleaseRollout]:
        return rollout(store.list_nodes(), registry().registry, store.release_marks(), now=now_dt())

    def as_json(n: NodeRow, *, ear: bool = True) -> dict[str, Any]:
        return node_json(n, ear=ear, now=clock(), freshness=freshness)

    def get(node_id: str) -> NodeRow:
        n = store.get_node(node_id)
        if n is None:
            raise HTTPException(404, f"no node {node_id!r}")
        return n

    @app.get("/v1/nodes")
    def list_nodes(
        verdict: str | None = Query(None, max_length=32), ear: bool = Query(False)
    ) -> dict[str, Any]:
        """Every registered node with its current verdict, its age and whether it is stale
        (``?verdict=`` a verdict or ``stale``; ``?ear=true``: and its latest signed EAR)."""
        nodes = [as_json(n, ear=ear) for n in store.list_nodes(ear=ear)]
        return {
            "registry": registry().to_json(),
            "nodes": [d for d in nodes if verdict in (None, d["verdict"], d["state"])],
        }

    enrolling = asyncio.Semaphore(MAX_ENROLLING)

    @app.post("/v1/nodes", status_code=201, response_model=None)
    async def register(req: RegisterRequest) -> dict[str, Any] | JSONResponse:
        """Register a node -- or, with ``host_url``, a host and its guest as one node: enroll
        (EK certificate chain to the configured roots and credential activation, or trust on
        first use where the service allows it; each layer of a pair) and start appraising.
        422 names the failed check (and the layer) or the rule a node id or URL breaks; 502:
        the node did not answer as an attest node; 409: the id is already enrolled (give
        ``re_enroll``)."""
        if enroll is None:
            raise HTTPException(503, "this service has no enroller configured")
        if req.host_url is None and (req.guest_id or req.host_activation_url):
            raise HTTPException(422, "guest_id and host_activation_url need host_url")
        reg = Registration(
            req.url, req.host_url, req.guest_id, req.activation_url, req.host_activation_url
        )
        loop = asyncio.get_running_loop()
        if req.node_id is not None and not req.re_enroll:  # before contacting anything
            known = await loop.run_in_executor(None, store.get_node, req.node_id)
            if known is not None and known.enrolled:
                return _taken(req.node_id)
        try:
            async with enrolling:
                await loop.run_in_executor(None, _check_urls, nodes, reg)
                enrollment = await loop.run_in_executor(None, enroll, reg)
            node_id = check_node_id(req.node_id or enrollment.node_id or req.url)
        except RegistrationRefused as exc:
            return error_answer(422, exc, str(exc))
        except VerificationError as exc:
            return error_answer(422, exc, f"enrollment refused ({exc.check}): {exc}")
        except (TransportError, EvidenceFormatError) as exc:
            return unreachable_answer(req.url, exc, getattr(exc, "layer", None))
        except AttestError as exc:
            return error_answer(422, exc, f"enrollment refused: {exc}")
        except Exception as exc:  # noqa: BLE001 - whatever a peer's answer broke: no 500
            return unreachable_answer(req.url, exc, getattr(exc, "layer", None))
        logger.info(
            "node registered",
            extra={
                "node_id": node_id,
                "url": req.url,
                "host_url": req.host_url,
                "activated": _activated(enrollment),
            },
        )
        try:
            change = await loop.run_in_executor(
                None,
                lambda: store.add_node(
                    node_id,
                    req.url,
                    enrollment,
                    now=clock(),
                    host_url=req.host_url,
                    re_enroll=req.re_enroll,
                    by="operator re-enroll over the REST API",
                ),
            )
        except NodeIdTaken as exc:
            return _taken(exc.node_id)
        doc = {**as_json(get(node_id)), "enrollment": enrollment.to_json()}
        if change is not None:
            doc["re_enrolled"] = {**change, "at": iso(change["at"])}
        return doc

    @app.get("/v1/nodes/{node_id}")
    def node(node_id: str) -> dict[str, Any]:
        """The node, with its latest appraisal result."""
        n = get(node_id)
        latest = store.results(node_id, 1)
        return {
            **as_json(n),
            "latest": latest[0] if latest else None,
            "registry": registry().to_json(),
        }

    @app.get("/v1/nodes/{node_id}/ear", responses={200: {"content": {EAR_MEDIA_TYPE: {}}}})
    def node_ear(node_id: str) -> Response:
        """The node's latest attestation result: an EAR (JWT, ES256) signed with the key at
        ``/v1/verifier-key``."""
        n = get(node_id)
        if n.ear is None:
            raise HTTPException(404, f"no signed result for {node_id!r} yet")
        return Response(n.ear, media_type=EAR_MEDIA_TYPE, headers={"Cache-Control": "no-store"})

    @app.get("/v1/verifier-key")
    def verifier_key() -> JSONResponse:
        """The public key that signs the EARs, as a JWK set (RFC 7517 §5)."""
        if signer is None:
            raise HTTPException(404, "this service signs no attestation results")
        return JSONResponse(signer.jwks(), media_type="application/jwk-set+json")

    @app.delete("/v1/nodes/{node_id}")
    def remove(node_id: str) -> dict[str, Any]:
        """Stop appraising a node and forget its history."""
        if not store.remove_node(node_id):
            raise HTTPException(404, f"no node {node_id!r}")
        return {"removed": node_id}

    @app.get("/v1/nodes/{node_id}/results")
    def results(node_id: str, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        """The node's most recent appraisals, newest first."""
        get(node_id)
        docs = store.results(node_id, limit)
        for d in docs:
            d["at"] = iso(d.get("at"))
        return {"node_id": node_id, "results": docs}

    @app.get("/v1/nodes/{node_id}/history")
    def history(node_id: str, limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        """Every change of the node's verdict and every re-enrollment (``detail``), newest
        first."""
        get(node_id)
        docs = store.changes(node_id, limit)
        for d in docs:
            d["at"] = iso(d["at"])
        return {"node_id": node_id, "changes": docs}

    @app.get("/v1/releases")
    def releases() -> dict[str, Any]:
        """Per release: the share of nodes attesting to it, and embargo clocks."""
        return {"time": now_dt().isoformat(), "releases": [r.to_json() for r in report()]}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Prometheus text exposition."""
        db = store.check()
        head = [
            "# HELP attest_fleet_database_up 1 while the fleet's database answers, 0 otherwise",
            "# TYPE attest_fleet_database_up gauge",
            f"attest_fleet_database_up {int(db.up)}",
        ]
        if not db.up:  # nothing else can be read: say so, and what this worker counted
            return "\n".join([*head, *poller_metrics(poller), *webhook_metrics(webhooks)]) + "\n"
        nodes = store.list_nodes()
        stale = sum(freshness.stale(n, clock()) for n in nodes)
        return (
            "\n".join(head)
            + "\n"
            + prometheus(nodes, report(), poller, webhooks, registry(), stale=stale)
        )

    def health(kind: str) -> JSONResponse:
        db = store.check()
        if db.up:
            return JSONResponse({"status": kind, "database": db.to_json()})
        return JSONResponse(
            {
                "status": "unavailable",
                "ready": False,
                "check": "database",
                "reason": f"the fleet's database is unreachable: {db.detail}",
                "database": db.to_json(),
            },
            status_code=503,
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 while the service works; 503 with the reason while its database is
        unreachable (nothing is appraised then)."""
        return health("alive")

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready to serve: 503 with the reason while the database is unreachable."""
        return health("ready")

    @app.get("/", response_class=HTMLResponse)
    def overview() -> str:
        return render_overview(
            store.list_nodes(), report(), now=clock(), registry=registry(), freshness=freshness
        )

    @app.get("/nodes/{node_id}", response_class=HTMLResponse)
    def node_page(node_id: str) -> HTMLResponse:
        n = store.get_node(node_id)
        if n is None:
            return HTMLResponse(sorry_page(node_id), 404)
        return HTMLResponse(
            render_node(
                n,
                store.results(node_id, 20),
                store.changes(node_id, 50),
                now=clock(),
                registry=registry(),
                freshness=freshness,
            )
        )

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse(
            {
                "error": "DatabaseUnavailable",
                "check": "database",
                "detail": f"the fleet's database is unreachable: {exc}",
            },
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(AttestError)
    async def attest_error(request: Request, exc: AttestError) -> JSONResponse:
        return error_answer(500, exc, str(exc))

    return app


def _check_urls(nodes: NodeAddresses, reg: Registration) -> None:
    for what in ("url", "host_url", "activation_url", "host_activation_url"):
        url = getattr(reg, what)
        if url is not None:
            nodes.check(url, what=what)


def _taken(node_id: str) -> JSONResponse:
    exc = NodeIdTaken(node_id, "")
    return error_answer(
        409,
        exc,
        f"node {node_id!r} is already enrolled: its URL and AK are replaced only by an "
        'explicit re-enrollment ("re_enroll": true), recorded in its history',
    )


def _activated(e: Enrollment | PairEnrollment) -> bool:
    return e.host.activated and e.guest.activated if isinstance(e, PairEnrollment) else e.activated


# --- Prometheus ------------------------------------------------------------------------------


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(
    nodes: list[NodeRow],
    releases: list[ReleaseRollout],
    poller: Poller | None,
    webhooks: WebhookSender | None,
    registry: RegistryState = NO_REGISTRY,
    *,
    stale: int = 0,
) -> str:
    counts = dict.fromkeys(SEVERITY, 0)
    for n in nodes:
        counts[n.verdict] = counts.get(n.verdict, 0) + 1
    out = [
        "# HELP attest_fleet_nodes registered nodes by current verdict",
        "# TYPE attest_fleet_nodes gauge",
    ]
    out += [f'attest_fleet_nodes{{verdict="{_label(k)}"}} {v}' for k, v in sorted(counts.items())]
    strengths: dict[str, int] = {}
    for n in nodes:
        if n.enrollment is not None:
            strengths[n.enrollment] = strengths.get(n.enrollment, 0) + 1
    out += [
        "# HELP attest_fleet_stale_nodes nodes not appraised within the freshness bound "
        "(shown stale; their stored verdict is kept)",
        "# TYPE attest_fleet_stale_nodes gauge",
        f"attest_fleet_stale_nodes {stale}",
    ]
    out += [
        "# HELP attest_fleet_enrollments enrolled nodes by enrollment strength",
        "# TYPE attest_fleet_enrollments gauge",
    ]
    out += [
        f'attest_fleet_enrollments{{strength="{_label(k)}"}} {v}'
        for k, v in sorted(strengths.items())
    ]
    out += [
        "# HELP attest_fleet_registry_ok 1 while nodes are appraised against a valid, fresh "
        "trusted registry; 0 otherwise (every node is could-not-appraise when one is configured)",
        "# TYPE attest_fleet_registry_ok gauge",
        f"attest_fleet_registry_ok {int(registry.ok and registry.registry is not None)}",
    ]
    out += [
        "# HELP attest_fleet_release_share share of nodes attesting to a release",
        "# TYPE attest_fleet_release_share gauge",
    ]
    out += [
        f'attest_fleet_release_share{{version="{_label(r.version)}"}} {r.share:.6f}'
        for r in releases
    ]
    out += [
        "# HELP attest_fleet_embargo_overdue 1 when an embargoed release's disclosure is late",
        "# TYPE attest_fleet_embargo_overdue gauge",
    ]
    out += [
        f'attest_fleet_embargo_overdue{{version="{_label(r.version)}"}} {int(r.overdue)}'
        for r in releases
        if r.embargo != "none"
    ]
    out += poller_metrics(poller)
    out += webhook_metrics(webhooks)
    return "\n".join(out) + "\n"


def poller_metrics(poller: Poller | None) -> list[str]:
    """This worker's counters (known without the database)."""
    out: list[str] = []
    if poller is not None:
        m = poller.metrics
        out += [
            "# HELP attest_fleet_appraisals_total appraisals completed by this worker",
            "# TYPE attest_fleet_appraisals_total counter",
            f"attest_fleet_appraisals_total {m.appraisals}",
            "# TYPE attest_fleet_poll_failures_total counter",
            f"attest_fleet_poll_failures_total {m.failures}",
            "# HELP attest_fleet_polls_deferred_total contacts put off: the answers being read "
            "held the read budget",
            "# TYPE attest_fleet_polls_deferred_total counter",
            f"attest_fleet_polls_deferred_total {m.deferred}",
            "# HELP attest_fleet_results_dropped_total results discarded: the lease was lost",
            "# TYPE attest_fleet_results_dropped_total counter",
            f"attest_fleet_results_dropped_total {m.dropped}",
            "# HELP attest_fleet_appraisal_seconds challenge + appraisal time per node",
            "# TYPE attest_fleet_appraisal_seconds histogram",
        ]
        acc = 0
        for bound, k in zip((*LATENCY_BUCKETS, float("inf")), m.latency_buckets, strict=True):
            acc += k
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'attest_fleet_appraisal_seconds_bucket{{le="{le}"}} {acc}')
        out += [
            f"attest_fleet_appraisal_seconds_sum {m.latency_sum:.6f}",
            f"attest_fleet_appraisal_seconds_count {acc}",
        ]
    return out


def webhook_metrics(webhooks: WebhookSender | None) -> list[str]:
    out: list[str] = []
    if webhooks is not None:
        w = webhooks.metrics
        out += [
            "# TYPE attest_fleet_webhooks_sent_total counter",
            f"attest_fleet_webhooks_sent_total {w.sent}",
            "# TYPE attest_fleet_webhooks_dropped_total counter",
            f"attest_fleet_webhooks_dropped_total {w.dropped + w.given_up}",
            "# TYPE attest_fleet_webhook_queue gauge",
            f"attest_fleet_webhook_queue {webhooks.queue.qsize()}",
        ]
    return out
