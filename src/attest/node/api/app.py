"""The attestd HTTP API: ``create_app(settings, *, node=...)``.

The app holds no TPM handle: it talks to a ``NodePort`` (the privileged broker in production,
an in-process ``LocalNode`` over a fake TPM in tests -- injected here, no test-only branches).
It reads no host file for evidence either: the firmware event log, the kernel command line and
the dm-verity report come from the node port (``attestd-tpm`` reads them; docs/daemon-hardening.md).
The firmware log and the command line do not change while the node runs: they are fetched
once (the log in chunks) and kept; the verity report is refreshed every few seconds.

``[snp] only`` (an SEV-SNP guest without a TPM; ``attest.node.api.snp``): the evidence is the
SEV-SNP report alone, readiness is the node port answering, no runtime log is watched, and the
TPM's endpoints answer 409 ``NoTpmError``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest import __version__, cmw
from attest.errors import (
    AttestError,
    BrokerUnavailable,
    EvidenceFormatError,
    NoTpmError,
    TpmError,
    TransportError,
)
from attest.evidence import (
    b64,
    challenge_members,
    encode_members,
    firmware_log_member,
    join_encoded,
    quote_members,
    runtime_log_member,
    snp_only_members,
    unb64,
)
from attest.merkle import challenge_leaf
from attest.model import HashAlg, PcrSelection
from attest.node.api import schemas
from attest.node.api.batcher import QuoteBatcher
from attest.node.api.errors import (
    attest_error_handler,
    http_error_handler,
    internal_error_handler,
    printable,
    validation_error_handler,
)
from attest.node.api.metrics import METRICS_MEDIA_TYPE, node_registry, state_fs
from attest.node.api.middleware import CHANNEL_KEY, TRUSTED_CHANNELS, RateLimit
from attest.node.api.snp import NO_TPM, add_tpmless_refusals, snp_report_member, tpmless_identity
from attest.node.config import Settings
from attest.node.port import FIRMWARE_LOG_CHUNK, NodeIdentity, NodePort
from attest.node.tpm.port import RawQuote
from attest.serving.body import BodyLimit
from attest.verity.devices import VerityReport

logger = logging.getLogger(__name__)

PROBE_SELECTION = PcrSelection.parse("sha256:0")
# What makes the node not ready: the TPM failed, or its broker (attestd-tpm) is unreachable, or
# the broker has no TPM (--no-tpm) while attestd expects one (not [snp] only).
UNAVAILABLE = (TpmError, BrokerUnavailable, NoTpmError)

MAX_PROBE_DELAY = 1.0  # seconds between probes while not ready (backoff from 0.2 s)


@dataclass
class Metrics:
    started: float = field(default_factory=time.time)
    challenges: int = 0
    tpm_failures: int = 0
    activations: int = 0


@dataclass
class NodeContext:
    """Everything the routes share. One per app."""

    settings: Settings
    node: NodePort
    batcher: QuoteBatcher
    tls_binding: bytes
    image: Callable[[], tuple[str | None, str | None]]
    status: Callable[[NodeContext], dict[str, Any]]
    clock: Callable[[], datetime]
    identity: NodeIdentity | None = None
    node_id: str = ""
    ready: bool = False
    last_tpm_error: str = ""
    broker_up: bool = True  # False while attestd-tpm cannot be reached
    # The daemon's start events (on_fresh_log) were recorded; False when the broker was not
    # there at start-up: they are recorded once it answers.
    start_recorded: bool = True
    metrics: Metrics = field(default_factory=Metrics)
    probe: asyncio.Task[None] | None = None
    # Re-records the API's own runtime events (config, TLS key, ...) when the runtime log
    # started afresh: after a TPM reset the broker rotates the log.
    on_fresh_log: Callable[[], None] | None = None
    log_mark: tuple[int, str] | None = None  # (recnum, content digest) of the last record seen
    watcher: asyncio.Task[None] | None = None
    shared: tuple[RawQuote, bytes] | None = None
    # From the node port (load_host_facts, refresh_verity); host_loaded once they were.
    firmware_log: bytes | None = None
    cmdline: str | None = None
    host_loaded: bool = False
    verity_report: VerityReport | None = None
    tls_spki: bytes = b""  # the TLS key (SPKI DER) whose sha256 is tls_binding; b"": no TLS
    # [snp] only: no TPM behind the node port; evidence is the SEV-SNP report alone, readiness
    # is the broker answering (``probe``), and no runtime log is watched.
    snp_only: bool = False

    def get_identity(self) -> NodeIdentity:
        if self.identity is None:
            ident = self.node.identity()
            self.identity = ident
            self.node_id = self.settings.node_id or "ak-" + ident.ak.name.hex()[4:28]
        return self.identity

    def probe_node(self) -> None:
        """Ask the node port something cheap (and the identity, once): a PCR, or under
        ``[snp] only`` the kernel command line (there are no PCRs). Raises what it raised."""
        if self.snp_only:
            self.node.kernel_cmdline()
            return
        self.node.read_pcrs(PROBE_SELECTION)
        self.get_identity()

    def tpm_failed(self, exc: TpmError | BrokerUnavailable | NoTpmError) -> None:
        """The TPM failed or its broker is unreachable: readiness off until a probe passes."""
        broker = isinstance(exc, BrokerUnavailable)
        if broker:
            self.broker_up = False
        else:
            self.metrics.tpm_failures += 1
        self.last_tpm_error = str(exc)
        if self.ready:
            what = "attestd-tpm unreachable" if broker else "TPM unavailable"
            logger.warning("%s, readiness off: %s", what, exc)
        self.ready = False
        if self.probe is None or self.probe.done():
            self.probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Probe the TPM (through the broker) until it answers again; then turn readiness
        back on and record the start events if they could not be recorded before."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while not self.ready:
            await asyncio.sleep(delay)
            try:
                await loop.run_in_executor(None, self.probe_node)
                self.broker_up = True
            except UNAVAILABLE as exc:
                self.broker_up = not isinstance(exc, BrokerUnavailable)
                self.last_tpm_error = str(exc)
                delay = min(delay * 2, MAX_PROBE_DELAY)
                continue
            self.ready = True
            self.last_tpm_error = ""
            logger.warning("TPM back, readiness on")
            if not self.snp_only:
                await loop.run_in_executor(None, self.check_log)

    async def heartbeat(self, interval: float) -> None:
        """While ready, ask the TPM (through the broker) for a PCR every ``interval`` seconds,
        so that a lost broker or TPM turns readiness off without waiting for a request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if not self.ready:
                continue
            try:
                await loop.run_in_executor(None, self.probe_node)
            except UNAVAILABLE as exc:
                self.tpm_failed(exc)

    def load_host_facts(self) -> None:
        """Fetch the firmware log and the kernel command line from the node port (once: they
        do not change while the node runs). ``BrokerUnavailable`` / ``TpmError`` propagate
        (not loaded: asked again later); another error (a broker without these operations,
        a log over ``logs.max_firmware_log_bytes``) is logged and the evidence goes without."""
        try:
            self.firmware_log = read_firmware_log(
                self.node, limit=self.settings.logs.max_firmware_log_bytes
            )
            self.cmdline = self.node.kernel_cmdline()
        except UNAVAILABLE:
            raise
        except AttestError as exc:
            logger.error("firmware log / kernel command line not served: %s", exc)
        self.host_loaded = True

    def refresh_verity(self) -> VerityReport | None:
        """The node's latest dm-verity report (kept for evidence); the last one kept when the
        node cannot be asked."""
        try:
            self.verity_report = self.node.verity_report()
        except AttestError as exc:
            logger.info("dm-verity report not refreshed: %s", exc)
        return self.verity_report

    def refresh_host(self) -> None:
        self.refresh_verity()
        if not self.host_loaded:
            try:
                self.load_host_facts()
            except UNAVAILABLE as exc:
                logger.info("firmware log not fetched yet: %s", exc)

    def check_log(self) -> None:
        """If the runtime log no longer holds the last record we saw (a TPM reset made the
        broker start a fresh log), record our events again. Reads the log from that record
        on only, so that it can run every few seconds."""
        mark = self.log_mark
        try:
            records = self.node.runtime_log(mark[0] if mark is not None else 0)
        except AttestError as exc:
            logger.info("runtime log not readable: %s", exc)
            return
        fresh = mark is not None and (not records or _mark(records[0]) != mark)
        if fresh or (not self.start_recorded and self.on_fresh_log is not None):
            if fresh:
                logger.warning("runtime log restarted (TPM reset): recording start events again")
            else:
                logger.warning("attestd-tpm answers: recording the start events")
            try:
                if self.on_fresh_log is not None:
                    self.on_fresh_log()
                records = self.node.runtime_log(0)
            except AttestError as exc:
                logger.warning("start events not recorded yet: %s", exc)
                return
            self.start_recorded = True
        self.log_mark = _mark(records[-1]) if records else None

    async def watch_log(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if self.ready:
                if not self.snp_only:
                    await loop.run_in_executor(None, self.check_log)
                await loop.run_in_executor(None, self.refresh_host)


def read_firmware_log(node: NodePort, *, limit: int) -> bytes | None:
    """The node's whole firmware event log, read in chunks of ``FIRMWARE_LOG_CHUNK`` bytes;
    None when it has none. ``TransportError`` when the answers do not add up (the size
    changed between chunks, a chunk from elsewhere, no progress) or the log is over
    ``limit`` bytes."""
    parts: list[bytes] = []
    offset, total = 0, None
    while total is None or offset < total:
        chunk = node.firmware_log(offset, FIRMWARE_LOG_CHUNK)
        if chunk is None:
            if total is not None:
                raise TransportError("the firmware log disappeared while it was read")
            return None
        if total is None:
            total = chunk.total
            if total > limit:
                raise TransportError(f"firmware event log of {total} bytes is over {limit}")
        if chunk.total != total or chunk.offset != offset:
            raise TransportError("the firmware log changed while it was read")
        if not chunk.data and offset < total:
            raise TransportError("attestd-tpm sent an empty chunk of the firmware log")
        parts.append(chunk.data)
        offset += len(chunk.data)
    return b"".join(parts)


def _mark(record: Any) -> tuple[int, str]:
    digest = next(iter(record.digests.values()), b"")
    return record.recnum, digest.hex()


def _read_image(settings: Settings) -> Callable[[], tuple[str | None, str | None]]:
    def read() -> tuple[str | None, str | None]:
        out: list[str | None] = []
        for path in (settings.image.version_file, settings.image.slot_file):
            try:
                with open(path, encoding="utf-8") as fh:
                    out.append(fh.read(256).strip() or None)
            except OSError:
                out.append(None)
        return out[0], out[1]

    return read


def basic_status(ctx: NodeContext) -> dict[str, Any]:
    """Self-appraisal without a registry: TPM and runtime log health."""
    # Imported when asked, not at start: importing attest.appraisal.selfcheck runs the whole
    # appraisal package (~0.3 s of a node's start under TCG), which /readyz and evidence need not.
    from attest.appraisal.selfcheck import SelfVerdict

    reasons = [] if ctx.ready else [f"TPM unavailable: {ctx.last_tpm_error}"]
    return {"verdict": SelfVerdict.OK if ctx.ready else SelfVerdict.DEGRADED, "reasons": reasons}


def create_app(
    settings: Settings,
    *,
    node: NodePort,
    tls_binding: bytes = b"",
    tls_spki: bytes = b"",
    image: Callable[[], tuple[str | None, str | None]] | None = None,
    status: Callable[[NodeContext], dict[str, Any]] = basic_status,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_fresh_log: Callable[[], None] | None = None,
    log_check_interval: float = 2.0,
    heartbeat_interval: float = 1.0,
    start_recorded: bool = True,
    extra_routes: Callable[[FastAPI, NodeContext], dict[str, int]] | None = None,
) -> Any:
    """Build the ASGI app: FastAPI routes wrapped in the size and rate limits."""
    ctx = NodeContext(
        settings=settings,
        node=node,
        batcher=QuoteBatcher(
            node.quote,
            batching=settings.api.batching,
            max_batch=settings.api.max_batch,
            max_waiting=settings.api.max_waiting,
        ),
        tls_binding=tls_binding,
        tls_spki=tls_spki,
        image=image or _read_image(settings),
        status=status,
        clock=clock,
        on_fresh_log=on_fresh_log,
        start_recorded=start_recorded,
        snp_only=settings.snp.only,
        node_id=settings.node_id if settings.snp.only else "",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, ctx.probe_node)
            ctx.ready = True
            if not ctx.snp_only:
                await loop.run_in_executor(None, ctx.check_log)
            await loop.run_in_executor(None, ctx.load_host_facts)
            await loop.run_in_executor(None, ctx.refresh_verity)
        except UNAVAILABLE as exc:
            ctx.tpm_failed(exc)
        ctx.watcher = loop.create_task(ctx.watch_log(log_check_interval))
        beat = loop.create_task(ctx.heartbeat(heartbeat_interval))
        yield
        await ctx.batcher.close()
        for task in (ctx.probe, ctx.watcher, beat):
            if task is not None:
                task.cancel()

    app = FastAPI(
        title="attestd",
        version=__version__,
        description="Node attestation API (RFC 9684-style challenge-response evidence).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.add_exception_handler(AttestError, attest_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    _routes(app, ctx)
    # Further route groups (the upgrade upload) are composed in by the shell; they name the
    # paths whose bodies they stream themselves, with those paths' size limits.
    streaming = extra_routes(app, ctx) if extra_routes is not None else {}
    limited = RateLimit(app, rate=settings.api.rate_per_second, burst=settings.api.rate_burst)
    outer = BodyLimit(limited, settings.api.max_request_bytes, streaming=streaming)
    outer.fastapi = app  # type: ignore[attr-defined]  # for tests and the daemon
    outer.ctx = ctx  # type: ignore[attr-defined]
    return outer


def require_trusted_channel(request: Request) -> None:
    channel = request.scope.get(CHANNEL_KEY, "public")
    if channel not in TRUSTED_CHANNELS:
        raise HTTPException(
            status_code=403,
            detail="this endpoint needs an authenticated client: mutual TLS or the operator socket",
        )


def _parse_selection(pcrs: dict[str, list[int]]) -> PcrSelection:
    try:
        sel = PcrSelection.of({HashAlg.from_name(b): idx for b, idx in pcrs.items()})
    except ValueError as exc:
        raise EvidenceFormatError(f"pcrs: {exc}") from None
    if sel.count() == 0 or any(not idx for _, idx in sel.banks):
        raise EvidenceFormatError("pcrs: select at least one PCR in each bank")
    return sel


errors = schemas.error_responses


def _routes(app: FastAPI, ctx: NodeContext) -> None:
    _challenge_routes(app, ctx)
    _status_routes(app, ctx)
    if ctx.snp_only:  # the gate needs a TPM: 409 on the trusted channels
        add_tpmless_refusals(app, [Depends(require_trusted_channel)])


def _challenge_routes(app: FastAPI, ctx: NodeContext) -> None:
    """What a verifier asks: evidence (a batched quote and the logs), the identity, and the
    node half of credential activation."""
    _evidence_route(app, ctx)
    _identity_routes(app, ctx)


def _evidence_route(app: FastAPI, ctx: NodeContext) -> None:
    @app.post(
        "/v1/evidence",
        response_model=None,
        responses={200: schemas.evidence_ok(), **errors(400, 409, 422, 503)},
    )
    async def evidence(req: schemas.EvidenceRequest, request: Request) -> Response:
        """A fresh quote over the requested PCRs answering this nonce (shared with the
        challenges that waited for the same quote: see ``batch``), plus the logs asked for.
        ``Accept: application/cmw+json`` or ``application/cmw+cbor``: the same document
        wrapped as a RATS CMW record (RFC 9999; docs/cmw.md)."""
        nonce = bytes.fromhex(req.nonce)
        if ctx.snp_only:  # no TPM: the report alone; pcrs and logs are not answered
            return await _snp_only_evidence(ctx, nonce, request)
        selection = _parse_selection({str(k): v for k, v in req.pcrs.items()})
        ctx.metrics.challenges += 1
        leaf = challenge_leaf(nonce, ctx.tls_binding)
        loop = asyncio.get_running_loop()
        try:
            ident = ctx.identity
            if ident is None:
                ident = await loop.run_in_executor(None, ctx.get_identity)
            inactive = [alg.bank_name for alg, _ in selection.banks if alg not in ident.banks]
            if inactive and ident.banks:
                raise EvidenceFormatError(
                    f"PCR bank(s) {', '.join(inactive)} not active on this TPM; active: "
                    f"{', '.join(b.bank_name for b in ident.banks)}"
                )
            result = await ctx.batcher.submit(selection, leaf)
            if not ctx.host_loaded:
                await loop.run_in_executor(None, ctx.load_host_facts)
        except UNAVAILABLE as exc:
            ctx.tpm_failed(exc)
            raise
        fw = req.logs.get("firmware")
        rt = req.logs.get("runtime")
        firmware_log = runtime_log = None
        if fw is not None and ctx.firmware_log is not None:
            firmware_log = firmware_log_member(ctx.firmware_log, fw.start)
        if rt is not None:
            records = await loop.run_in_executor(None, ctx.node.runtime_log, rt.start)
            runtime_log = runtime_log_member(
                ctx.settings.tpm.runtime_pcr, rt.start, [r.to_json() for r in records]
            )
        members = challenge_members(
            batch_size=result.size,
            batch_index=result.index,
            proof=result.proof,
            tls_binding=ctx.tls_binding,
            firmware_log=firmware_log,
            runtime_log=runtime_log,
        )
        if ctx.settings.snp.enabled:
            ak = ident.ak.tpm2b()
            members["snp"] = await loop.run_in_executor(None, _snp_member, ctx, nonce, ak)
        head = encode_members(members)
        # The parts every challenge answered by this quote shares are encoded once per quote
        # (this is the hot endpoint: a batch can answer thousands of challenges).
        common = _shared_part(ctx, ident, result.quote)
        document = join_encoded(head, common)
        return _evidence_response(document, request)


def _evidence_response(document: bytes, request: Request) -> Response:
    """The document as JSON, or wrapped as the CMW the ``Accept:`` header asks for."""
    wrap = cmw.negotiate(request.headers.get("accept"))
    if wrap is None:
        return Response(document, media_type="application/json")
    return Response(cmw.encode(cmw.evidence_record(document), wrap), media_type=wrap)


async def _snp_only_evidence(ctx: NodeContext, nonce: bytes, request: Request) -> Response:
    """``[snp] only``: the whole document is the SEV-SNP report (REPORT_DATA: the nonce and
    the TLS key, no AK) and what the node says about itself (``snp_only_members``)."""
    ctx.metrics.challenges += 1
    loop = asyncio.get_running_loop()
    try:
        if not ctx.host_loaded:
            await loop.run_in_executor(None, ctx.load_host_facts)
        snp = await loop.run_in_executor(None, _snp_member, ctx, nonce, None)
    except UNAVAILABLE as exc:
        ctx.tpm_failed(exc)
        raise
    version, slot = ctx.image()
    members = snp_only_members(
        node_id=ctx.node_id,
        snp=snp,
        cmdline=ctx.cmdline,
        image_version=version,
        image_slot=slot,
        time=ctx.clock(),
    )
    return _evidence_response(encode_members(members), request)


def _identity_routes(app: FastAPI, ctx: NodeContext) -> None:
    @app.get("/v1/identity", responses=errors(503))
    async def identity() -> dict[str, Any]:
        """EK certificate(s), EK and AK public areas and names, node id, PCR banks. Under
        ``[snp] only`` (no TPM): the node id and TLS binding, ``snp_only: true``, no keys."""
        if ctx.snp_only:
            return tpmless_identity(ctx.node_id, ctx.tls_binding)
        loop = asyncio.get_running_loop()
        try:
            ident = await loop.run_in_executor(None, ctx.get_identity)
        except UNAVAILABLE as exc:
            ctx.tpm_failed(exc)
            raise
        return {
            "node_id": ctx.node_id,
            "ak": {"public": b64(ident.ak.tpm2b()), "name": ident.ak.name.hex()},
            "ek": None
            if ident.ek is None
            else {"public": b64(ident.ek.tpm2b()), "name": ident.ek.name.hex()},
            "ek_certificates": {
                f"0x{i:08x}": b64(der) for i, der in sorted(ident.ek_certificates.items())
            },
            "banks": [b.bank_name for b in ident.banks],
            "snp_only": False,
            "runtime_pcr": ctx.settings.tpm.runtime_pcr,
            "tls_binding": ctx.tls_binding.hex() or None,
            "version": __version__,
        }

    @app.post(
        "/v1/enroll/activate",
        response_model=schemas.ActivateResponse,
        dependencies=[Depends(require_trusted_channel)],
        responses=errors(400, 403, 409, 422, 503),
    )
    async def activate(req: schemas.ActivateRequest) -> dict[str, str]:
        """The node half of TPM2 credential activation (TPM2_ActivateCredential with the AK
        and the EK). Needs an authenticated client. ``[snp] only``: 409, no TPM."""
        if ctx.snp_only:
            raise NoTpmError(f"{NO_TPM}: credential activation needs one")
        id_object = unb64(req.id_object, "id_object", limit=1024)
        secret = unb64(req.encrypted_secret, "encrypted_secret", limit=1024)
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(None, ctx.node.activate_credential, id_object, secret)
        except BrokerUnavailable as exc:
            ctx.tpm_failed(exc)
            raise
        except TpmError as exc:
            if exc.rc == 0 or (exc.rc & 0xFFFF0000) == 0x000A0000:
                ctx.tpm_failed(exc)
            raise
        ctx.metrics.activations += 1
        return {"secret": b64(out)}


def _status_routes(app: FastAPI, ctx: NodeContext) -> None:
    """What the node provider reads: the self-appraisal, the audit log, metrics, liveness and
    readiness."""

    @app.get("/v1/status", responses=errors())
    async def status() -> dict[str, Any]:
        """Self-appraisal: a plain verdict with reasons, for the node provider."""
        loop = asyncio.get_running_loop()
        doc = await loop.run_in_executor(None, ctx.status, ctx)
        fs = await loop.run_in_executor(None, state_fs, ctx)
        version, slot = ctx.image()
        return {
            **doc,
            "node_id": ctx.node_id,
            "tpm_ready": ctx.ready,
            "state_fs": fs.to_json() if fs is not None else None,
            "image": {"version": version, "slot": slot},
            "version": __version__,
            "time": ctx.clock().isoformat(),
        }

    @app.get("/v1/audit", responses=errors(409, 422, 503))
    async def audit(start: int = Query(0, ge=0, le=1 << 40)) -> dict[str, Any]:
        """The operator-access audit log from an index (pseudonymised entries). ``[snp]
        only``: 409, no audit log (it is anchored in the runtime PCR)."""
        if ctx.snp_only:
            raise NoTpmError(f"{NO_TPM}: the audit log is anchored in the runtime PCR")
        loop = asyncio.get_running_loop()
        try:
            entries = await loop.run_in_executor(None, ctx.node.audit_log, start)
        except UNAVAILABLE as exc:
            ctx.tpm_failed(exc)
            raise
        return {"start": start, "entries": [dict(e) for e in entries]}

    registry = node_registry(ctx, lambda: ctx.status(ctx))

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_MEDIA_TYPE: {}}}, **errors(plain=True)},
    )
    async def metrics() -> Response:
        """Prometheus text exposition (the names: docs/api.md)."""
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, generate_latest, registry)
        return Response(body, media_type=METRICS_MEDIA_TYPE)

    @app.get("/healthz", responses=errors())
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz", responses=errors(503))
    async def readyz() -> JSONResponse:
        """The TPM answers through attestd-tpm: evidence can be served. Not ready: 503, an
        error (``check: tpm``) that also says ``ready: false`` and the ``reason``."""
        if ctx.ready:
            return JSONResponse({"ready": True})
        reason = printable(ctx.last_tpm_error or "starting")
        return JSONResponse(
            {
                "error": "NotReady",
                "check": "tpm",
                "detail": reason,
                "ready": False,
                "reason": reason,
            },
            status_code=503,
        )


def _snp_member(ctx: NodeContext, nonce: bytes, ak: bytes | None) -> dict[str, Any]:
    """This challenge's ``snp`` member (``attest.node.api.snp``); ``ak`` None: no TPM."""
    return snp_report_member(ctx.node, nonce=nonce, tls_spki=ctx.tls_spki, ak=ak)


def _shared_part(ctx: NodeContext, ident: NodeIdentity, quote: RawQuote) -> bytes:
    """The JSON object of the evidence fields shared by every challenge one quote answers
    (the firmware/runtime logs and ``batch`` are per challenge). Cached for the last quote."""
    cached = ctx.shared
    if cached is not None and cached[0] is quote:
        return cached[1]
    version, slot = ctx.image()
    encoded = encode_members(
        quote_members(
            node_id=ctx.node_id,
            attest=quote.attest,
            signature=quote.signature,
            pcrs=quote.pcrs,
            ak=ident.ak,
            verity=None if ctx.verity_report is None else ctx.verity_report.to_json(),
            cmdline=ctx.cmdline,
            image_version=version,
            image_slot=slot,
            time=ctx.clock(),
        )
    )
    ctx.shared = (quote, encoded)
    return encoded
