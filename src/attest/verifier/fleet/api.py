"""The fleet service's HTTP face: ``create_fleet_app(store, ...)``.

REST (JSON; times ISO 8601 UTC): ``/v1/nodes`` (GET list, POST register),
``/v1/nodes/{id}`` (GET, DELETE), ``/v1/nodes/{id}/ear`` (the latest signed EAR),
``/v1/nodes/{id}/results`` (recent appraisals), ``/v1/nodes/{id}/history`` (verdict changes,
each with its EAR), ``/v1/verifier-key`` (the EAR signing key as a JWK set),
``/v1/releases`` (rollout shares and embargo
clocks), ``/metrics`` (Prometheus), ``/healthz``; and pages for people: ``/`` (fleet overview,
rollout, embargo clocks) and ``/nodes/{id}`` (verdict, explanation, findings, history).
Pages are rendered on the server with no script; every string a node or the store supplied
is HTML-escaped.

Access (``attest.verifier.fleet.access``): writes need the write token, reads the read or the
write token when the service has a read token. Every error is ``{"error", "check", "detail"}``
and never echoes what a node or a client sent: a node that does not answer as an attest node is
one fixed ``502`` whatever it answered (or whether anything listens at all).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest import __version__
from attest.enroll import Enrollment
from attest.errors import (
    AttestError,
    EvidenceFormatError,
    RegistrationRefused,
    TransportError,
    VerificationError,
)
from attest.manifest import VerifiedRegistry
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
from attest.verifier.fleet.model import NodeRow
from attest.verifier.fleet.poller import LATENCY_BUCKETS, Poller
from attest.verifier.fleet.rollout import ReleaseRollout, rollout
from attest.verifier.fleet.signing import EarSigner
from attest.verifier.fleet.store import Store
from attest.verifier.fleet.webhooks import WebhookSender

logger = logging.getLogger(__name__)

SEVERITY = {
    "contraindicated": 0,
    "unreachable": 1,
    "warning": 2,
    "none": 3,
    "unenrolled": 4,
    "affirming": 5,
}
PAGE_ROWS = 500


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


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


EAR_MEDIA_TYPE = "application/eat+jwt"  # RFC 9711 §10.9.1: an EAT in a JWT


def node_json(n: NodeRow, *, ear: bool = True) -> dict[str, Any]:
    doc = n.to_json(ear=ear)
    for k in ("added_at", "next_due", "last_appraised", "last_seen"):
        doc[k] = iso(doc[k])
    return doc


def create_fleet_app(
    store: Store,
    *,
    registry: Callable[[], VerifiedRegistry | None] = lambda: None,
    poller: Poller | None = None,
    webhooks: WebhookSender | None = None,
    enroll: Callable[[Registration], Enrollment | PairEnrollment] | None = None,
    access: Access,
    nodes: NodeAddresses = NodeAddresses(),  # noqa: B008 - frozen, immutable
    clock: Callable[[], float] = time.time,
    signer: EarSigner | None = None,
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
        return rollout(store.list_nodes(), registry(), store.release_marks(), now=now_dt())

    def get(node_id: str) -> NodeRow:
        n = store.get_node(node_id)
        if n is None:
            raise HTTPException(404, f"no node {node_id!r}")
        return n

    @app.get("/v1/nodes")
    def list_nodes(
        verdict: str | None = Query(None, max_length=32), ear: bool = Query(False)
    ) -> dict[str, Any]:
        """Every registered node with its current verdict (``?ear=true``: and its latest
        signed EAR)."""
        nodes = store.list_nodes(ear=ear)
        return {"nodes": [node_json(n, ear=ear) for n in nodes if verdict in (None, n.verdict)]}

    @app.post("/v1/nodes", status_code=201, response_model=None)
    async def register(req: RegisterRequest) -> dict[str, Any] | JSONResponse:
        """Register a node -- or, with ``host_url``, a host and its guest as one node: enroll
        (EK certificate chain to the configured roots and credential activation, or trust on
        first use where the service allows it; each layer of a pair) and start appraising.
        422 names the failed check (and the layer) or the rule a node id or URL breaks; 502:
        the node did not answer as an attest node."""
        if enroll is None:
            raise HTTPException(503, "this service has no enroller configured")
        if req.host_url is None and (req.guest_id or req.host_activation_url):
            raise HTTPException(422, "guest_id and host_activation_url need host_url")
        reg = Registration(
            req.url, req.host_url, req.guest_id, req.activation_url, req.host_activation_url
        )
        loop = asyncio.get_running_loop()
        try:
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
        await loop.run_in_executor(
            None,
            lambda: store.add_node(
                node_id, req.url, enrollment, now=clock(), host_url=req.host_url
            ),
        )
        return {**node_json(get(node_id)), "enrollment": enrollment.to_json()}

    @app.get("/v1/nodes/{node_id}")
    def node(node_id: str) -> dict[str, Any]:
        """The node, with its latest appraisal result."""
        n = get(node_id)
        latest = store.results(node_id, 1)
        return {**node_json(n), "latest": latest[0] if latest else None}

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
        """Every change of the node's verdict, newest first."""
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
        return prometheus(store.list_nodes(), report(), poller, webhooks)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/", response_class=HTMLResponse)
    def overview() -> str:
        return render_overview(store.list_nodes(), report(), now=clock())

    @app.get("/nodes/{node_id}", response_class=HTMLResponse)
    def node_page(node_id: str) -> HTMLResponse:
        n = store.get_node(node_id)
        if n is None:
            return HTMLResponse(_page("Not found", f"<p>No node {_e(node_id)}.</p>"), 404)
        return HTMLResponse(
            render_node(n, store.results(node_id, 20), store.changes(node_id, 50), now=clock())
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
) -> str:
    counts = dict.fromkeys(SEVERITY, 0)
    for n in nodes:
        counts[n.verdict] = counts.get(n.verdict, 0) + 1
    out = [
        "# HELP attest_fleet_nodes registered nodes by current verdict",
        "# TYPE attest_fleet_nodes gauge",
    ]
    out += [f'attest_fleet_nodes{{verdict="{_label(k)}"}} {v}' for k, v in sorted(counts.items())]
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
    if poller is not None:
        m = poller.metrics
        out += [
            "# HELP attest_fleet_appraisals_total appraisals completed by this worker",
            "# TYPE attest_fleet_appraisals_total counter",
            f"attest_fleet_appraisals_total {m.appraisals}",
            "# TYPE attest_fleet_poll_failures_total counter",
            f"attest_fleet_poll_failures_total {m.failures}",
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
    return "\n".join(out) + "\n"


# --- HTML ------------------------------------------------------------------------------------


def _e(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 24px}header h1{margin:0;font-size:18px}
main{padding:16px 24px}section{background:#fff;border:1px solid #dde1e7;border-radius:6px;
margin-bottom:16px;padding:12px 16px}h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef0f3;vertical-align:top}th{font-weight:600;color:#555}
.v{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}
.affirming{background:#d7f5df;color:#11612c}.warning{background:#fff1c7;color:#7a5500}
.contraindicated{background:#ffd9d6;color:#8f1610}.unreachable{background:#e3dcff;color:#3c2a8f}
.none,.unenrolled{background:#e6e8eb;color:#444}
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{padding:8px 14px;border-radius:6px;
min-width:110px}.tile b{display:block;font-size:22px}
.bar{background:#eef0f3;border-radius:4px;height:10px;width:200px;display:inline-block}
.bar i{display:block;height:10px;border-radius:4px;background:#2f7d4a}
.overdue{color:#8f1610;font-weight:600}.muted{color:#777}code{font-size:12px}
.layers{margin-top:3px;font-size:12px;color:#555;white-space:nowrap}
"""


def _page(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>attest fleet — {_e(title)}</h1></header><main>{body}</main>"
        "</body></html>"
    )


def _badge(verdict: str) -> str:
    cls = verdict if verdict in SEVERITY else "none"
    return f'<span class="v {cls}">{_e(verdict)}</span>'


def _releases_html(releases: list[ReleaseRollout]) -> str:
    if not releases:
        return "<p class=muted>No trusted registry configured: rollout is not tracked.</p>"
    rows = []
    for r in releases:
        pct = 100 * r.share
        clock = {
            "none": "—",
            "disclosed": "disclosed",
            "awaiting_fleet": "waiting for the whole fleet",
        }.get(r.embargo, "")
        if r.embargo in ("quiet_period", "overdue"):
            due = r.disclosure_due.strftime("%Y-%m-%d %H:%M UTC") if r.disclosure_due else "?"
            src = " (observed by this service)" if r.fleet_complete_source == "observed" else ""
            cls = "overdue" if r.overdue else ""
            word = "OVERDUE — disclosure was due" if r.overdue else "quiet period; disclosure due"
            clock = f'<span class="{cls}">{word} {_e(due)}</span>{_e(src)}'
        revoked = " <span class=overdue>revoked</span>" if r.revoked else ""
        rows.append(
            f"<tr><td><b>{_e(r.version)}</b>{revoked}</td><td>{r.running} / {r.total}</td>"
            f'<td><span class=bar><i style="width:{pct:.1f}%"></i></span> {pct:.1f}%</td>'
            f"<td>{clock}</td><td class=muted>{_e(r.note)}</td></tr>"
        )
    return (
        "<table><tr><th>Release</th><th>Nodes</th><th>Rollout</th><th>Embargo clock</th>"
        f"<th></th></tr>{''.join(rows)}</table>"
    )


def _layers(n: NodeRow) -> list[tuple[str, dict[str, Any]]]:
    lay = n.layers or {}
    return [(name, lay[name]) for name in ("host", "guest") if isinstance(lay.get(name), dict)]


def _layer_badges(n: NodeRow) -> str:
    """A pair's row: each layer's verdict under the pair's."""
    if not n.pair:
        return ""
    parts = [f"<div>{name} {_badge(str(lay.get('verdict')))}</div>" for name, lay in _layers(n)]
    return f"<div class=layers>{''.join(parts) or 'layers: not appraised yet'}</div>"


def _layers_html(n: NodeRow) -> str:
    if not n.pair:
        return ""
    lay = n.layers or {}
    rows = (
        "".join(
            f"<tr><td><b>{_e(name)}</b></td><td>{_e(d.get('node_id'))}</td>"
            f"<td><code>{_e(d.get('url'))}</code></td><td>{_badge(str(d.get('verdict')))}</td>"
            f"<td>{_e(d.get('explanation'))}</td><td>{_e(d.get('release') or '—')}</td></tr>"
            for name, d in _layers(n)
        )
        or "<tr><td colspan=6 class=muted>Not appraised yet.</td></tr>"
    )
    v = lay.get("vouch")
    vouch: dict[str, Any] = v if isinstance(v, dict) else {}
    failed = lay.get("failed_layer")
    return (
        "<section><h2>Host and guest</h2><table><tr><th>Layer</th><th>Node</th><th>URL</th>"
        f"<th>Verdict</th><th>Explanation</th><th>Release</th></tr>{rows}</table>"
        f"<p>Failed layer: <b>{_e(failed or '—')}</b>. Host vouching: "
        f"{_e(vouch.get('explanation') or '—')}</p></section>"
    )


def render_overview(nodes: list[NodeRow], releases: list[ReleaseRollout], *, now: float) -> str:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.verdict] = counts.get(n.verdict, 0) + 1
    tiles = "".join(
        f'<div class="tile {k}"><b>{counts[k]}</b>{_e(k)}</div>'
        for k in sorted(counts, key=lambda k: SEVERITY.get(k, 9))
    )
    ordered = sorted(nodes, key=lambda n: (SEVERITY.get(n.verdict, 9), n.node_id))
    rows = "".join(
        f'<tr><td><a href="/nodes/{_e(quote(n.node_id, safe=""))}">{_e(n.node_id)}</a>'
        f"{' <span class=muted>host + guest</span>' if n.pair else ''}</td>"
        f"<td>{_badge(n.verdict)}{_layer_badges(n)}</td><td>{_e(n.explanation[:300])}</td>"
        f"<td>{_e(n.release or '—')}</td><td>{_e(_ago(n.last_appraised, now))}</td></tr>"
        for n in ordered[:PAGE_ROWS]
    )
    more = (
        (
            f"<p class=muted>{len(nodes) - PAGE_ROWS} more nodes (all affirming or less severe "
            "first shown); see /v1/nodes.</p>"
        )
        if len(nodes) > PAGE_ROWS
        else ""
    )
    body = (
        f"<section><h2>Fleet: {len(nodes)} nodes</h2><div class=tiles>{tiles}</div></section>"
        f"<section><h2>Releases: rollout and embargo clocks</h2>{_releases_html(releases)}"
        "</section><section><h2>Nodes (most severe first)</h2><table><tr><th>Node</th>"
        "<th>Verdict</th><th>Explanation</th><th>Release</th><th>Last appraised</th></tr>"
        f"{rows}</table>{more}</section>"
    )
    return _page("overview", body, refresh=10)


def render_node(
    n: NodeRow, results: list[dict[str, Any]], changes: list[dict[str, Any]], *, now: float
) -> str:
    latest = results[0].get("result") if results else None
    findings = ""
    if isinstance(latest, dict):
        # One node's result, or a pair's (attest.appraisal.pair.PairResult.to_json: both layers').
        parts = [("", latest)]
        if isinstance(latest.get("layers"), dict):
            parts = [(f"{k}: ", v) for k, v in latest["layers"].items() if isinstance(v, dict)]
        findings = "".join(
            f"<tr><td>{_e(prefix)}{_e(f.get('claim'))}</td><td>{_badge(str(f.get('tier')))}</td>"
            f"<td>{_e(f.get('check'))}</td><td>{_e(f.get('explanation'))}</td></tr>"
            for prefix, doc in parts
            for f in (doc.get("findings") or [])
            if isinstance(f, dict)
        )
        findings = (
            (
                "<table><tr><th>Claim</th><th>Tier</th><th>Check</th><th>Finding</th></tr>"
                f"{findings}</table>"
            )
            if findings
            else "<p class=muted>No findings.</p>"
        )
    hist = (
        "".join(
            f"<tr><td>{_e(iso(c['at']))}</td><td>{_badge(c['from'])} → {_badge(c['to'])}</td>"
            f"<td>{_e(c['explanation'])}</td></tr>"
            for c in changes
        )
        or "<tr><td colspan=3 class=muted>No changes yet.</td></tr>"
    )
    recent = "".join(
        f"<tr><td>{_e(iso(r.get('at')))}</td><td>{_badge(str(r.get('verdict')))}</td>"
        f"<td>{_e(r.get('worker_id'))}</td><td>{_e(r.get('error') or '')}</td></tr>"
        for r in results
    )
    body = (
        f"<section><h2>{_e(n.node_id)} {_badge(n.verdict)}</h2><table>"
        f"<tr><th>Explanation</th><td>{_e(n.explanation)}</td></tr>"
        f"<tr><th>First divergence</th><td>{_e(n.first_divergence or '—')}</td></tr>"
        f"<tr><th>Release attested</th><td>{_e(n.release or '—')}</td></tr>"
        f"<tr><th>URL</th><td><code>{_e(n.url)}</code>"
        f"{' (guest; host <code>' + _e(n.host_url) + '</code>)' if n.pair else ''}</td></tr>"
        f"<tr><th>Last appraised</th><td>{_e(_ago(n.last_appraised, now))} "
        f"({n.appraisals} appraisals)</td></tr>"
        f"<tr><th>Last error</th><td>{_e(n.last_error or '—')} "
        f"{'(' + str(n.failures) + ' consecutive failures)' if n.failures else ''}</td></tr>"
        "</table></section>"
        f"{_layers_html(n)}"
        "<section><h2>Findings of the latest appraisal</h2>"
        f"{findings or '<p class=muted>None.</p>'}</section>"
        f"<section><h2>Verdict history</h2><table>{hist}</table></section>"
        "<section><h2>Recent appraisals</h2><table><tr><th>At</th><th>Verdict</th><th>Worker</th>"
        f'<th>Error</th></tr>{recent}</table></section><p><a href="/">← fleet</a></p>'
    )
    return _page(n.node_id, body, refresh=10)
