"""``POST /v1/upgrades``: offer an image to the upgrade gate over the authenticated API.

Wire with ``add_upgrade_routes(app, ctx, gate_factory)`` (see docs/upgrade.md). The body is
streamed -- never buffered -- to a temporary file (mode 0640) in ``upload_dir`` (the spool
directory), with the size limit enforced while it arrives; then the gate reads that file once
to verify it: an in-process ``attest.node.upgrade.stager.UpgradeGate`` (development), or
``attest.node.broker.client.BrokerGate``, which has ``attestd-tpm``'s gate open the spooled file
(production; docs/daemon-hardening.md). Only the mutual-TLS and operator channels may call it.

Body (``Content-Type: application/vnd.attest.upgrade``), all lengths 8-byte big-endian::

    snapshot_length || snapshot (canonical registry JSON)
    tree_length     || hash tree (``veritysetup format`` output; length 0: none)
    image bytes     (to the end of the body)

Query: ``version`` (optional; the release the image claims to be, for precise refusals).
Answers: 200 ``{accepted, reason, version, sequence, slot, ...}``; 403 unauthenticated;
409 ``{"error": "UpgradeRefused", "check": <reason code>, "detail": ...}`` for every refusal;
413 over the limit (``check: upload-too-large``); 400 a malformed body.

With an in-process gate (development mode) the same channels also have
``GET /v1/upgrades`` (the gate's status: slot pointer and NV counter) and
``POST /v1/upgrades/confirm`` (commit the booted staged slot, after the operator saw it attest;
409 ``check: nothing-to-confirm`` when the node did not boot a staged slot). The broker keeps
both on its operator socket (``attest upgrade status|confirm``): answered 501 here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from attest.errors import EvidenceFormatError, StorageError, UpgradeRefused
from attest.gate import UPLOAD_TOO_LARGE
from attest.node.api.app import NodeContext, require_trusted_channel
from attest.node.api.errors import error_body
from attest.node.api.middleware import CHANNEL_KEY
from attest.node.api.registry import DEFAULT_READ_TIMEOUT, RegistryGate, add_registry_route
from attest.node.api.schemas import error_responses
from attest.node.upgrade.stager import MAX_HASH_TREE, Offer, UpgradeGate
from attest.node.upgrade.wire import MAX_SNAPSHOT, UPGRADE_MEDIA_TYPE

logger = logging.getLogger(__name__)


class _Decision(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class Gate(RegistryGate, Protocol):
    """What the routes need of a gate: ``UpgradeGate`` or ``BrokerGate`` (``POST
    /v1/registry`` runs its trust refresh: ``attest.node.api.registry``)."""

    def stage(self, offer: Offer, *, now: datetime) -> _Decision: ...

    def refuse_upload(self, reason: str, message: str, *, actor: str) -> UpgradeRefused: ...


MEDIA_TYPE = UPGRADE_MEDIA_TYPE
DEFAULT_MAX_UPLOAD = 8 << 30
_LEN = 8


class _Body:
    """Pull exact byte counts from the request stream."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.total = 0
        self.done = False

    async def _more(self) -> bool:
        if self.done:
            return False
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self.done = True
            return False
        self.total += len(chunk)
        self._buf += chunk
        return True

    async def exactly(self, n: int, what: str) -> bytes:
        while len(self._buf) < n:
            if not await self._more():
                raise EvidenceFormatError(f"upgrade body ends inside the {what}")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._buf:
            out = bytes(self._buf)
            self._buf.clear()
            yield out
        while await self._more():
            out = bytes(self._buf)
            self._buf.clear()
            yield out


def add_upgrade_routes(
    app: FastAPI,
    ctx: NodeContext,
    gate_factory: Callable[[], Gate],
    *,
    upload_dir: str | os.PathLike[str],
    max_upload: int = DEFAULT_MAX_UPLOAD,
    registry_timeout: float = DEFAULT_READ_TIMEOUT,
) -> dict[str, int]:
    """Add ``POST /v1/upgrades`` (and ``POST /v1/registry``, the same gate's trust refresh
    without an image). ``gate_factory`` opens the gate (slots, node, trust dir) for one
    request; uploads are spooled in ``upload_dir`` and deleted afterwards. Returns the
    streamed paths with their size limits (``create_app``'s ``extra_routes`` contract)."""
    lock = asyncio.Lock()  # one upgrade (or registry push) at a time
    remove_stale_uploads(upload_dir)
    streamed = add_registry_route(app, ctx, gate_factory, lock=lock, read_timeout=registry_timeout)

    @app.post(
        "/v1/upgrades",
        dependencies=[Depends(require_trusted_channel)],
        responses=error_responses(400, 403, 409, 422, 507),
    )
    async def upgrade(
        request: Request, version: str | None = Query(None, max_length=128)
    ) -> JSONResponse:
        """Offer an image (streamed) with the registry snapshot that blesses it."""
        actor = f"api-{request.scope.get(CHANNEL_KEY, 'public')}"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            return await _too_large(gate_factory, max_upload, actor)
        body = _Body(request.stream())
        snap_len = int.from_bytes(await body.exactly(_LEN, "snapshot length"), "big")
        if snap_len > MAX_SNAPSHOT:
            raise EvidenceFormatError(f"snapshot of {snap_len} bytes, limit {MAX_SNAPSHOT}")
        snapshot = await body.exactly(snap_len, "snapshot")
        tree_len = int.from_bytes(await body.exactly(_LEN, "hash-tree length"), "big")
        if tree_len > MAX_HASH_TREE:
            raise EvidenceFormatError(f"hash tree of {tree_len} bytes, limit {MAX_HASH_TREE}")
        tree = await body.exactly(tree_len, "hash tree") if tree_len else None
        try:
            Path(upload_dir).mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=UPLOAD_SUFFIX, dir=upload_dir)
        except OSError as exc:
            raise _spool_error(upload_dir, "cannot create the upload file", exc) from None
        path = Path(name).absolute()
        try:
            os.fchmod(fd, 0o640)  # the broker reads it through the spool directory's group
            with os.fdopen(fd, "wb") as out:
                async for chunk in body.chunks():
                    if body.total > max_upload:
                        return await _too_large(gate_factory, max_upload, actor)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise _spool_error(upload_dir, "cannot write the upload", exc) from None
            offer = Offer(path, snapshot, hash_tree=tree, version=version, actor=actor)
            loop = asyncio.get_running_loop()
            async with lock:
                decision = await loop.run_in_executor(
                    None, _stage, gate_factory, offer, ctx.clock()
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return JSONResponse(decision)

    @app.get(
        "/v1/upgrades",
        dependencies=[Depends(require_trusted_channel)],
        responses=error_responses(403, 501),
    )
    async def upgrade_status() -> JSONResponse:
        """The upgrade gate's status: slots, pointer, pending confirmation, NV counter."""
        gate = gate_factory()
        if not isinstance(gate, UpgradeGate):
            return _not_here("status")
        loop = asyncio.get_running_loop()
        return JSONResponse(await loop.run_in_executor(None, gate.status))

    @app.post(
        "/v1/upgrades/confirm",
        dependencies=[Depends(require_trusted_channel)],
        responses=error_responses(403, 409, 501),
    )
    async def upgrade_confirm(request: Request) -> JSONResponse:
        """Commit the staged slot the node booted (it becomes the active slot; the NV
        counter rises to its sequence)."""
        actor = f"api-{request.scope.get(CHANNEL_KEY, 'public')}"
        gate = gate_factory()
        if not isinstance(gate, UpgradeGate):
            return _not_here("confirm")
        loop = asyncio.get_running_loop()
        async with lock:
            try:
                await loop.run_in_executor(None, lambda: gate.confirm(actor=actor))
            except UpgradeRefused as exc:  # nothing-to-confirm: no staged slot was booted
                return JSONResponse(
                    {"error": "UpgradeRefused", "check": exc.reason, "detail": str(exc)},
                    status_code=409,
                )
            return JSONResponse(await loop.run_in_executor(None, gate.status))

    return {"/v1/upgrades": max_upload, **streamed}


def _not_here(what: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": "NotSupported",
            "check": None,
            "detail": f"upgrade {what} is on the broker's "
            "operator socket (attest upgrade " + what + ")",
        },
        status_code=501,
    )


UPLOAD_PREFIX, UPLOAD_SUFFIX = ".upload.", ".img"


def remove_stale_uploads(upload_dir: str | os.PathLike[str]) -> int:
    """Delete the spool files a previous attestd left (a power cut or a kill mid-upload
    skips the ``finally`` that removes them; each holds a whole image). Only this attestd
    writes the spool (its socket lock keeps a second one out), so at start every upload
    file is stale. Returns how many were removed (logged)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for f in Path(upload_dir).iterdir():
            if f.name.startswith(UPLOAD_PREFIX) and f.name.endswith(UPLOAD_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed += 1
    if removed:
        logger.warning("removed %d stale upload file(s) from %s", removed, upload_dir)
    return removed


def _spool_error(upload_dir: str | os.PathLike[str], what: str, exc: OSError) -> StorageError:
    """A spool that cannot take the upload (read-only, full, wrong owner): 507 naming the
    directory and the system's reason, logged for the operator; the upload is refused."""
    err = StorageError(f"{what} in {upload_dir}: {exc.strerror or type(exc).__name__}")
    logger.error("upgrade upload refused: %s", err)
    return err


def _stage(gate_factory: Callable[[], Gate], offer: Offer, now: Any) -> dict[str, Any]:
    gate = gate_factory()
    doc = gate.stage(offer, now=now).to_json()
    if isinstance(gate, UpgradeGate):  # the broker's answer names the slot itself
        doc["slot"] = gate.slots.load().pending
    return doc


async def _too_large(gate_factory: Callable[[], Gate], limit: int, actor: str) -> JSONResponse:
    loop = asyncio.get_running_loop()
    exc: UpgradeRefused = await loop.run_in_executor(
        None,
        lambda: gate_factory().refuse_upload(
            UPLOAD_TOO_LARGE, f"upload over the limit of {limit} bytes", actor=actor
        ),
    )
    return JSONResponse(error_body(exc), status_code=413)
