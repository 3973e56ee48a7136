"""``POST /v1/registry``: push a signed registry snapshot to the node without an image.

Wired by ``attest.node.api.upgrades.add_upgrade_routes`` (the same gate, the same lock: a push
and an upgrade never refresh the trust state at the same time). Only the mutual-TLS and
operator channels may call it (``require_trusted_channel``, as ``POST /v1/upgrades``).

Body (``Content-Type: application/vnd.attest.registry``; ``attest.node.upgrade.wire``), lengths
8-byte big-endian::

    snapshot_length || snapshot (canonical registry JSON)
    [root_length || root] ...    (newer roots, oldest first, for a key rotation; at most 8)

The whole body is bounded (``max_body``, checked on the declared length and while it arrives)
and must arrive within ``read_timeout`` seconds. The gate then runs the trust refresh of
``POST /v1/upgrades`` (``UpgradeGate.refresh_registry``: root rotation, threshold, sequence /
freeze, expiry), records the decision -- an audit entry ``registry.<reason>`` and a
``registry-decision`` runtime event -- and on acceptance persists the trusted state.

Answers: 200 ``{accepted, reason, message, previous_sequence, sequence, root_version}``
(``registry-updated`` or ``registry-current``); 403 unauthenticated; 409
``{"error": "RegistryRefused", "check": <reason code>, "detail": ...}`` for a refusal of the
trust refresh; 400 a malformed body (``snapshot-malformed``), 408 too slow
(``upload-timeout``), 413 too large (``upload-too-large``) -- each recorded as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from attest.errors import EvidenceFormatError, RegistryRefused
from attest.gate import SNAPSHOT_MALFORMED, UPLOAD_TIMEOUT, UPLOAD_TOO_LARGE
from attest.node.api.app import NodeContext, require_trusted_channel
from attest.node.api.errors import error_body
from attest.node.api.middleware import CHANNEL_KEY
from attest.node.api.schemas import error_responses
from attest.node.upgrade.wire import MAX_REGISTRY_PUSH, REGISTRY_PATH, parse_registry_push

PATH = REGISTRY_PATH
DEFAULT_MAX_BODY = MAX_REGISTRY_PUSH
DEFAULT_READ_TIMEOUT = 30.0


class _Refresh(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class RegistryGate(Protocol):
    """What the route needs of a gate: ``UpgradeGate`` or ``BrokerGate``."""

    def refresh_registry(
        self, snapshot: bytes, *, roots: tuple[bytes, ...], actor: str, now: datetime
    ) -> _Refresh: ...

    def refuse_registry(self, reason: str, message: str, *, actor: str) -> RegistryRefused: ...


class _TooLarge(Exception):
    pass


async def _read(request: Request, limit: int) -> bytes:
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise _TooLarge
    return bytes(out)


def add_registry_route(
    app: FastAPI,
    ctx: NodeContext,
    gate_factory: Callable[[], RegistryGate],
    *,
    lock: asyncio.Lock,
    max_body: int = DEFAULT_MAX_BODY,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
) -> dict[str, int]:
    """Add ``POST /v1/registry``; returns the streamed path with its size limit."""

    async def refused(reason: str, message: str, actor: str, status: int) -> JSONResponse:
        loop = asyncio.get_running_loop()
        gate: RegistryGate = gate_factory()
        exc = await loop.run_in_executor(
            None, lambda: gate.refuse_registry(reason, message, actor=actor)
        )
        return JSONResponse(error_body(exc), status_code=status)

    @app.post(
        PATH,
        dependencies=[Depends(require_trusted_channel)],
        responses=error_responses(400, 403, 408, 409),
    )
    async def push_registry(request: Request) -> JSONResponse:
        """Push a signed registry snapshot (and newer roots): the upgrade gate's trust
        refresh, recorded in the audit and runtime logs, persisted when accepted.

        Body ``application/vnd.attest.registry``: ``snapshot_length || snapshot ||
        [root_length || root] ...`` (8-byte big-endian lengths). 200: ``{accepted, reason,
        message, previous_sequence, sequence, root_version}``; refusals are the Error shape with
        ``check`` the reason code (409 trust refresh, 400 framing, 408 too slow, 413 too
        large)."""
        actor = f"api-{request.scope.get(CHANNEL_KEY, 'public')}"
        too_large = f"registry push over the limit of {max_body} bytes"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return await refused(UPLOAD_TOO_LARGE, too_large, actor, 413)
        try:
            body = await asyncio.wait_for(_read(request, max_body), read_timeout)
        except _TooLarge:
            return await refused(UPLOAD_TOO_LARGE, too_large, actor, 413)
        except TimeoutError:
            msg = f"registry push not received within {read_timeout:g} s"
            return await refused(UPLOAD_TIMEOUT, msg, actor, 408)
        try:
            snapshot, roots = parse_registry_push(body)
        except EvidenceFormatError as exc:
            return await refused(SNAPSHOT_MALFORMED, str(exc), actor, 400)
        gate: RegistryGate = gate_factory()
        loop = asyncio.get_running_loop()
        now = ctx.clock()
        async with lock:
            decision = await loop.run_in_executor(
                None,
                lambda: gate.refresh_registry(snapshot, roots=roots, actor=actor, now=now),
            )
        return JSONResponse(decision.to_json())

    return {PATH: max_body}
