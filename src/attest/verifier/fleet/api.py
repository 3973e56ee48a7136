"""The fleet service's HTTP face: ``create_fleet_app(store, ...)``.

REST (JSON; times ISO 8601 UTC): ``/v1/nodes`` (GET list, POST register),
``/v1/nodes/{id}`` (GET, DELETE), ``/v1/nodes/{id}/ear`` (the latest signed EAR),
``/v1/nodes/{id}/results`` (recent appraisals), ``/v1/nodes/{id}/history`` (verdict changes,
each with its EAR), ``/v1/verifier-key`` (the EAR signing key as a JWK set),
``/v1/releases`` (rollout shares and embargo
clocks), ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` (503 with the reason while
the database is unreachable); and pages for people: ``/`` (fleet overview, rollout, embargo
clocks; the nodes searched and filtered by ``?q=&verdict=&release=&enrollment=&page=``) and
``/nodes/{id}`` (verdict, explanation, findings, history).
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
(``access.Error``, declared by every operation of the OpenAPI document; the HTML pages are not
in it) and never echoes what a node or a client sent: a node that does not answer as an attest
node is one fixed ``502`` whatever it answered (or whether anything listens at all).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest import __version__
from attest.enroll import Enrollment, EnrollmentStrength
from attest.errors import (
    AttestError,
    DatabaseUnavailable,
    EvidenceFormatError,
    NodeIdTaken,
    RegistrationRefused,
    TransportError,
    VerificationError,
)
from attest.serving.body import BodyLimit
from attest.verifier.fleet.access import (
    MAX_BODY,
    Access,
    TokenAuth,
    error_answer,
    error_responses,
    http_error,
    internal_error,
    printable,
    unreachable_answer,
    validation_error,
)
from attest.verifier.fleet.admission import (
    NODE_ID_RULE,
    NodeAddresses,
    check_node_id,
)
from attest.verifier.fleet.enrolled import PairEnrollment
from attest.verifier.fleet.enrollment import Registration
from attest.verifier.fleet.metrics import METRICS_MEDIA_TYPE, FleetCollector, fleet_registry
from attest.verifier.fleet.model import Freshness, NodeRow, NodeStatus, iso, node_json
from attest.verifier.fleet.pages import (
    MAX_PAGE,
    RELEASE_RULE,
    SEARCH_RULE,
    STRENGTH_RULE,
    VERDICT_RULE,
    NodeFilter,
    render_node,
    render_overview,
    sorry_page,
)
from attest.verifier.fleet.poller import Poller
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
    guest_vtpm: bool = Field(
        default=True,
        strict=True,  # JSON true or false: not "yes", "off", 0 or 1
        description="a pair: false when the guest has no vTPM -- only the host is enrolled, and "
        "the guest is appraised by its SEV-SNP report alone, tied to the host by the chip the "
        "host records (layers host and guest-snp)",
    )
    re_enroll: bool = Field(
        default=False,
        strict=True,
        description="replace the enrollment (URL and AK) of a node id that is already enrolled; "
        "recorded in its history, resets its continuity",
    )


EAR_MEDIA_TYPE = "application/eat+jwt"  # RFC 9711 §10.9.1: an EAT in a JWT
EAR_CWT_MEDIA_TYPE = "application/eat+cwt"  # RFC 9782: an EAT in a CWT

# Registrations contacting nodes at once; more wait their turn. Each holds at most one small
# answer (attest.verifier.client.MAX_SMALL_RESPONSE) whatever its node streams: memory stays
# bounded however many registrations of hostile URLs arrive together.
MAX_ENROLLING = 4


@dataclass(frozen=True, slots=True)
class _Fleet:
    """What the routes serve from: the store and the service's parts (``create_fleet_app``)."""

    store: Store
    registry: Callable[[], RegistryState]
    poller: Poller | None
    webhooks: WebhookSender | None
    enroll: Callable[[Registration], Enrollment | PairEnrollment] | None
    nodes: NodeAddresses
    clock: Callable[[], float]
    signer: EarSigner | None
    freshness: Freshness

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def report(self, nodes: list[NodeRow] | None = None) -> list[ReleaseRollout]:
        return rollout(
            self.store.list_nodes() if nodes is None else nodes,
            self.registry().registry,
            self.store.release_marks(),
            now=self.now_dt(),
        )

    def as_json(self, n: NodeRow, *, ear: bool = True) -> dict[str, Any]:
        return node_json(n, ear=ear, now=self.clock(), freshness=self.freshness)

    def get(self, node_id: str) -> NodeRow:
        n = self.store.get_node(node_id)
        if n is None:
            raise HTTPException(404, f"no node {node_id!r}")
        return n


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
    app.add_middleware(BodyLimit, limit=MAX_BODY)  # inside TokenAuth: no token, no body read
    app.add_middleware(TokenAuth, access=access)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    fleet = _Fleet(store, registry, poller, webhooks, enroll, nodes, clock, signer, freshness)
    _node_routes(app, fleet)
    _service_routes(app, fleet)
    _pages(app, fleet)
    _error_handlers(app)
    return app


errors = error_responses


def _node_routes(app: FastAPI, f: _Fleet) -> None:
    """``/v1/nodes`` (list, register), one node, its EAR and the key that signs it, its
    removal, results and history."""

    @app.get("/v1/nodes", responses=errors(401, 422, 503))
    def list_nodes(
        verdict: str | None = Query(None, max_length=32), ear: bool = Query(False)
    ) -> dict[str, Any]:
        """Every registered node with its current verdict, its age and whether it is stale
        (``?verdict=`` a verdict or ``stale``; ``?ear=true``: and its latest signed EAR)."""
        nodes = [f.as_json(n, ear=ear) for n in f.store.list_nodes(ear=ear)]
        return {
            "registry": f.registry().to_json(),
            "nodes": [d for d in nodes if verdict in (None, d["verdict"], d["state"])],
        }

    _register_route(app, f)

    @app.get("/v1/nodes/{node_id}", responses=errors(401, 404, 503))
    def node(node_id: str) -> dict[str, Any]:
        """The node, with its latest appraisal result."""
        n = f.get(node_id)
        latest = f.store.results(node_id, 1)
        return {
            **f.as_json(n),
            "latest": latest[0] if latest else None,
            "registry": f.registry().to_json(),
        }

    @app.get(
        "/v1/nodes/{node_id}/ear",
        responses={
            200: {"content": {EAR_MEDIA_TYPE: {}, EAR_CWT_MEDIA_TYPE: {}}},
            **errors(401, 404, 409, 422, 503),
        },
    )
    def node_ear(node_id: str, format: str = Query("jwt", pattern="^(jwt|cwt)$")) -> Response:
        """The node's latest attestation result: an EAR (draft-ietf-rats-ear, ES256) signed with
        the key at ``/v1/verifier-key``; a JWT, or with ``?format=cwt`` the same claims as a CWT
        (COSE_Sign1 over CBOR, signed on request)."""
        n = f.get(node_id)
        if n.ear is None:
            raise HTTPException(404, f"no signed result for {node_id!r} yet")
        headers = {"Cache-Control": "no-store"}
        if format == "jwt":
            return Response(n.ear, media_type=EAR_MEDIA_TYPE, headers=headers)
        if f.signer is None:
            raise HTTPException(404, "this service signs no attestation results")
        try:
            cwt = f.signer.as_cwt(n.ear)
        except AttestError:
            raise HTTPException(
                409, f"the stored result of {node_id!r} was signed by another key: JWT only"
            ) from None
        return Response(cwt, media_type=EAR_CWT_MEDIA_TYPE, headers=headers)

    @app.get("/v1/verifier-key", responses=errors(401, 404))
    def verifier_key() -> JSONResponse:
        """The public key that signs the EARs, as a JWK set (RFC 7517 §5)."""
        if f.signer is None:
            raise HTTPException(404, "this service signs no attestation results")
        return JSONResponse(f.signer.jwks(), media_type="application/jwk-set+json")

    @app.delete("/v1/nodes/{node_id}", responses=errors(401, 403, 404, 503))
    def remove(node_id: str) -> dict[str, Any]:
        """Stop appraising a node and forget its history."""
        if not f.store.remove_node(node_id):
            raise HTTPException(404, f"no node {node_id!r}")
        return {"removed": node_id}

    @app.get("/v1/nodes/{node_id}/results", responses=errors(401, 404, 422, 503))
    def results(node_id: str, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        """The node's most recent appraisals, newest first."""
        f.get(node_id)
        docs = f.store.results(node_id, limit)
        for d in docs:
            d["at"] = iso(d.get("at"))
        return {"node_id": node_id, "results": docs}

    @app.get("/v1/nodes/{node_id}/history", responses=errors(401, 404, 422, 503))
    def history(node_id: str, limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        """Every change of the node's verdict and every re-enrollment (``detail``), newest
        first."""
        f.get(node_id)
        docs = f.store.changes(node_id, limit)
        for d in docs:
            d["at"] = iso(d["at"])
        return {"node_id": node_id, "changes": docs}


def _register_route(app: FastAPI, f: _Fleet) -> None:
    enrolling = asyncio.Semaphore(MAX_ENROLLING)

    @app.post(
        "/v1/nodes",
        status_code=201,
        response_model=None,
        responses=errors(401, 403, 409, 422, 502, 503),
    )
    async def register(req: RegisterRequest) -> dict[str, Any] | JSONResponse:
        """Register a node -- or, with ``host_url``, a host and its guest as one node: enroll
        (EK certificate chain to the configured roots and credential activation, or trust on
        first use where the service allows it; each layer of a pair, only the host with
        ``guest_vtpm: false``) and start appraising.
        422 names the failed check (and the layer) or the rule a node id or URL breaks; 502:
        the node did not answer as an attest node; 409: the id is already enrolled (give
        ``re_enroll``)."""
        if f.enroll is None:
            raise HTTPException(503, "this service has no enroller configured")
        enroll = f.enroll
        if req.host_url is None and (req.guest_id or req.host_activation_url or not req.guest_vtpm):
            raise HTTPException(
                422,
                "guest_id, host_activation_url and guest_vtpm: false are for a pair: give host_url",
            )
        if not req.guest_vtpm and req.activation_url:
            raise HTTPException(
                422,
                "activation_url is for a guest vTPM's credential activation: not with "
                "guest_vtpm false",
            )
        reg = Registration(
            req.url,
            req.host_url,
            req.guest_id,
            req.activation_url,
            req.host_activation_url,
            guest_vtpm=req.guest_vtpm,
        )
        loop = asyncio.get_running_loop()
        if req.node_id is not None and not req.re_enroll:  # before contacting anything
            known = await loop.run_in_executor(None, f.store.get_node, req.node_id)
            if known is not None and known.enrolled:
                return _taken(req.node_id)
        try:
            async with enrolling:
                await loop.run_in_executor(None, _check_urls, f.nodes, reg)
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
                lambda: f.store.add_node(
                    node_id,
                    req.url,
                    enrollment,
                    now=f.clock(),
                    host_url=req.host_url,
                    re_enroll=req.re_enroll,
                    by="operator re-enroll over the REST API",
                ),
            )
        except NodeIdTaken as exc:
            return _taken(exc.node_id)
        doc = {**f.as_json(f.get(node_id)), "enrollment": enrollment.to_json()}
        if change is not None:
            doc["re_enrolled"] = {**change, "at": iso(change["at"])}
        return doc


def _service_routes(app: FastAPI, f: _Fleet) -> None:
    """Releases and rollout, Prometheus metrics, liveness and readiness."""

    @app.get("/v1/releases", responses=errors(401, 503))
    def releases() -> dict[str, Any]:
        """Per release: the share of nodes attesting to it, and embargo clocks."""
        return {"time": f.now_dt().isoformat(), "releases": [r.to_json() for r in f.report()]}

    registry = fleet_registry(
        FleetCollector(
            f.store,
            report=f.report,
            registry=f.registry,
            stale=lambda nodes: sum(f.freshness.stale(n, f.clock()) for n in nodes),
            poller=f.poller,
            webhooks=f.webhooks,
        )
    )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_MEDIA_TYPE: {}}}, **errors(401, plain=True)},
    )
    def metrics() -> Response:
        """Prometheus text exposition (the names: docs/fleet.md, "Metrics")."""
        return Response(generate_latest(registry), media_type=METRICS_MEDIA_TYPE)

    def health(kind: str) -> JSONResponse:
        db = f.store.check()
        if db.up:
            return JSONResponse({"status": kind, "database": db.to_json()})
        reason = printable(f"the fleet's database is unreachable: {db.detail}")
        return JSONResponse(
            {
                "error": "DatabaseUnavailable",
                "check": "database",
                "detail": reason,
                "status": "unavailable",
                "ready": False,
                "reason": reason,
                "database": db.to_json(),
            },
            status_code=503,
        )

    @app.get("/healthz", responses=errors(503))
    def healthz() -> JSONResponse:
        """200 while the service works; 503 with the reason while its database is
        unreachable (nothing is appraised then)."""
        return health("alive")

    @app.get("/readyz", responses=errors(503))
    def readyz() -> JSONResponse:
        """Ready to serve: 503 with the reason while the database is unreachable."""
        return health("ready")


def _pages(app: FastAPI, f: _Fleet) -> None:
    """The pages for people: the fleet's overview and one node's page."""

    # The pages are for people (HTML), not part of the API the OpenAPI document describes.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(
        q: str = Query("", max_length=128, pattern=SEARCH_RULE),
        verdict: str = Query("", pattern=VERDICT_RULE),
        release: str = Query("", max_length=128, pattern=RELEASE_RULE),
        enrollment: str = Query("", pattern=STRENGTH_RULE),
        page: int = Query(1, ge=1, le=MAX_PAGE),
    ) -> str:
        """The overview; ``?q=`` (node id contains), ``verdict``, ``release``, ``enrollment``
        and ``page`` choose the nodes listed (a bad value: 422 in the error shape)."""
        nodes = f.store.list_nodes()
        flt = NodeFilter(
            search=q,
            verdict=NodeStatus(verdict) if verdict else None,
            release=release,
            enrollment=EnrollmentStrength(enrollment) if enrollment else None,
            page=page,
        )
        return render_overview(
            nodes,
            f.report(nodes),
            now=f.clock(),
            registry=f.registry(),
            freshness=f.freshness,
            flt=flt,
        )

    @app.get("/nodes/{node_id}", response_class=HTMLResponse, include_in_schema=False)
    def node_page(node_id: str) -> HTMLResponse:
        n = f.store.get_node(node_id)
        if n is None:
            return HTMLResponse(sorry_page(node_id), 404)
        return HTMLResponse(
            render_node(
                n,
                f.store.results(node_id, 20),
                f.store.changes(node_id, 50),
                now=f.clock(),
                registry=f.registry(),
                freshness=f.freshness,
            )
        )


def _error_handlers(app: FastAPI) -> None:
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
    """Whether every enrolled AK was bound to its EK by credential activation."""
    if not isinstance(e, PairEnrollment):
        return e.activated
    return e.host.activated and (e.guest is None or e.guest.activated)
