"""``POST /v1/registry``: a signed registry snapshot pushed to the node without an image runs the
upgrade gate's trust refresh (threshold, sequence / freeze, expiry, root rotation), is recorded
(audit entry ``registry.<reason>``, ``registry-decision`` runtime event naming it) and, when
accepted, persisted. Authenticated channels only; bounded in size and in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.gate import World, tree_state
from tests.support.hostile import assert_refused_cleanly
from tests.support.hostile_json import TOKENS
from tests.support.manifest import build_world, make_signers, sign_doc
from tests.support.upgrade import NOW, releases_signers, signed, snapshot

from attest.errors import EvidenceFormatError
from attest.manifest import edit
from attest.node.upgrade.wire import (
    MAX_REGISTRY_PUSH,
    REGISTRY_MEDIA_TYPE,
    parse_registry_push,
    registry_push_body,
)
from attest.runtime import check_records
from attest.storage.trusted_state import load_state


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


def client(w: World, channel: str, *, timeout: float = 30.0) -> httpx.AsyncClient:
    from attest.node.api.app import create_app
    from attest.node.api.middleware import ChannelApp
    from attest.node.api.upgrades import add_upgrade_routes
    from attest.node.config import ApiSettings, Settings

    app = create_app(
        Settings(api=ApiSettings()),
        node=w.local,
        clock=lambda: NOW,
        extra_routes=lambda app, ctx: add_upgrade_routes(
            app, ctx, lambda: w.gate, upload_dir=w.tmp / "uploads", registry_timeout=timeout
        ),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ChannelApp(app, channel)),  # type: ignore[arg-type]
        base_url="http://node",
    )


async def push(
    w: World, body: bytes | AsyncIterator[bytes], *, channel: str = "mtls", timeout: float = 30.0
) -> httpx.Response:
    async with client(w, channel, timeout=timeout) as c:
        return await c.post(
            "/v1/registry", content=body, headers={"content-type": REGISTRY_MEDIA_TYPE}
        )


def decisions(w: World) -> list[dict[str, Any]]:
    events = check_records(w.local.runtime_log(), pcr=w.local.runtime.pcr)
    return [dict(e.content) for e in events if e.kind == "registry-decision"]


def trusted_sequence(w: World) -> int:
    state = load_state(w.node.trust_dir)
    assert state is not None
    return state.floor_sequence


def assert_recorded(w: World, *, accepted: bool, reason: str, previous: int) -> dict[str, Any]:
    """The last decision is in both logs: the audit entry, then the runtime event naming it."""
    last = decisions(w)[-1]
    entry = w.local.audit_log()[-1]
    assert entry["service"] == f"registry.{reason}"
    assert entry["result"] == ("success" if accepted else "denied")
    assert last["accepted"] is accepted and last["reason"] == reason
    assert last["previous_sequence"] == previous and last["audit_seq"] == entry["seq"]
    return last


async def refused(w: World, body: bytes, status: int, code: str) -> httpx.Response:
    """Refused with ``code``, the trust state untouched, the refusal recorded."""
    before, seq = tree_state(w.node.trust_dir), trusted_sequence(w)
    r = await push(w, body)
    assert r.status_code == status, r.text
    assert r.json()["check"] == code and set(r.json()) == {"error", "check", "detail"}
    assert r.json()["error"] == "RegistryRefused"
    assert tree_state(w.node.trust_dir) == before
    assert_recorded(w, accepted=False, reason=code, previous=seq)
    return r


# --- accepted --------------------------------------------------------------------------------


async def test_push_moves_the_node_to_the_new_sequence_and_records_it(w: World) -> None:
    r = await push(w, registry_push_body(w.snap(10)))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["accepted"], doc["reason"]) == (True, "registry-updated")
    assert (doc["previous_sequence"], doc["sequence"], doc["root_version"]) == (0, 10, 1)
    assert (w.node.trust_dir / "registry.json").read_bytes() == w.snap(10)
    last = assert_recorded(w, accepted=True, reason="registry-updated", previous=0)
    assert last["sequence"] == 10 and "#0 -> #10" in last["detail"]

    r = await push(w, registry_push_body(w.snap(11)))
    assert r.json()["reason"] == "registry-updated" and r.json()["previous_sequence"] == 10
    assert trusted_sequence(w) == 11


async def test_pushing_the_trusted_snapshot_again_is_current_and_changes_nothing(
    w: World,
) -> None:
    assert (await push(w, registry_push_body(w.snap(10)))).status_code == 200
    before = tree_state(w.node.trust_dir)
    r = await push(w, registry_push_body(w.snap(10)))
    assert r.status_code == 200 and r.json()["reason"] == "registry-current"
    assert tree_state(w.node.trust_dir) == before
    assert_recorded(w, accepted=True, reason="registry-current", previous=10)


async def test_the_upgrade_gate_then_trusts_the_pushed_snapshot(w: World) -> None:
    """The same trust state: an image offered with an older snapshot than the pushed one is
    refused as a snapshot rollback by the upgrade gate."""
    from tests.support.gate import upload_body

    assert (await push(w, registry_push_body(w.snap(12)))).status_code == 200
    async with client(w, "operator") as c:
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(10), w.v1.path.read_bytes()))
    assert r.status_code == 409 and r.json()["check"] == "snapshot-rollback"


async def test_push_with_a_root_rotation_accepts_the_new_release_keys(w: World) -> None:
    mw = build_world()
    (w.node.trust_dir / "root.json").write_bytes(mw.root_bytes())
    assert (await push(w, registry_push_body(mw.registry_bytes(mw.snapshot(5))))).is_success
    new_rel = make_signers(2)
    root2 = edit.new_root(
        version=2,
        expires=NOW + timedelta(days=3650),
        role_keys={
            "root": [k.key for k in mw.root_signers],
            "releases": [k.key for k in new_rel],
            "platform": [k.key for k in mw.platform_signers],
        },
        thresholds={"root": 2, "releases": 2, "platform": 1},
    )
    root2_bytes = sign_doc(root2.to_json(), mw.root_signers)
    snap6 = sign_doc(mw.snapshot(6).to_json(), new_rel)
    # without the new root the new release keys sign nothing the node trusts
    await refused(w, registry_push_body(snap6), 409, "snapshot-unsigned")
    r = await push(w, registry_push_body(snap6, (root2_bytes,)))
    assert r.status_code == 200, r.text
    assert r.json()["root_version"] == 2 and "root rotated v1 -> v2" in r.json()["message"]
    assert (w.node.trust_dir / "root.json").read_bytes() == root2_bytes
    assert trusted_sequence(w) == 6


# --- refused by the trust refresh --------------------------------------------------------------


async def test_refuses_a_stale_sequence(w: World) -> None:
    assert (await push(w, registry_push_body(w.snap(10)))).status_code == 200
    r = await refused(w, registry_push_body(w.snap(9)), 409, "snapshot-rollback")
    assert "9 is lower than the trusted 10" in r.json()["detail"]


async def test_refuses_a_forked_snapshot_with_the_trusted_sequence(w: World) -> None:
    assert (await push(w, registry_push_body(w.snap(10)))).status_code == 200
    forked = signed(snapshot(10, [w.v1.release]))
    await refused(w, registry_push_body(forked), 409, "snapshot-freeze")


async def test_refuses_signatures_below_the_threshold(w: World) -> None:
    one = signed(snapshot(10, [w.v1.release]), releases_signers()[:1])
    r = await refused(w, registry_push_body(one), 409, "snapshot-under-threshold")
    assert "threshold" in r.json()["detail"]


async def test_refuses_a_snapshot_signed_by_keys_the_root_does_not_authorise(w: World) -> None:
    wrong = signed(snapshot(10, [w.v1.release]), make_signers(2))
    await refused(w, registry_push_body(wrong), 409, "snapshot-unsigned")


async def test_refuses_an_expired_snapshot(w: World) -> None:
    old = signed(snapshot(10, [w.v1.release], expires=NOW - timedelta(seconds=1)))
    r = await refused(w, registry_push_body(old), 409, "snapshot-expired")
    assert "expired" in r.json()["detail"]


async def test_refuses_a_snapshot_that_does_not_parse(w: World) -> None:
    await refused(w, registry_push_body(b'{"signed": 1}'), 409, "snapshot-malformed")


# --- refused before the trust refresh: body, size, time ------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"\0\0\0", (99).to_bytes(8, "big") + b"short", (0).to_bytes(8, "big")],
    ids=["empty", "short-length", "short-document", "zero-length"],
)
async def test_refuses_a_malformed_body_with_400(w: World, body: bytes) -> None:
    await refused(w, body, 400, "snapshot-malformed")


async def test_refuses_a_declared_oversize_body_with_413(w: World) -> None:
    r = await refused(w, b"\0" * (MAX_REGISTRY_PUSH + 1), 413, "upload-too-large")
    assert str(MAX_REGISTRY_PUSH) in r.json()["detail"]


async def test_refuses_a_streamed_oversize_body_with_413(w: World) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(MAX_REGISTRY_PUSH // (1 << 20) + 2):
            yield b"\0" * (1 << 20)

    before = len(decisions(w))
    r = await push(w, chunks())
    assert r.status_code == 413 and r.json()["check"] == "upload-too-large"
    assert len(decisions(w)) == before + 1
    assert_recorded(w, accepted=False, reason="upload-too-large", previous=0)


async def test_refuses_a_body_that_trickles_past_the_time_limit_with_408(w: World) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        body = registry_push_body(w.snap(10))
        for i in range(0, len(body), 64):
            await asyncio.sleep(0.05)
            yield body[i : i + 64]

    r = await push(w, trickle(), timeout=0.3)
    assert r.status_code == 408 and r.json()["check"] == "upload-timeout"
    assert "0.3 s" in r.json()["detail"]
    assert not (w.node.trust_dir / "registry.json").exists()
    assert_recorded(w, accepted=False, reason="upload-timeout", previous=0)


# --- authentication ----------------------------------------------------------------------------


async def test_refuses_an_unauthenticated_caller_and_records_nothing(w: World) -> None:
    audit_before, decisions_before = len(w.local.audit_log()), len(decisions(w))
    r = await push(w, registry_push_body(w.snap(10)), channel="public")
    assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    assert not (w.node.trust_dir / "registry.json").exists()
    assert len(w.local.audit_log()) == audit_before and len(decisions(w)) == decisions_before


def test_an_unauthenticated_tcp_client_is_refused_by_a_real_server(w: World) -> None:
    """Through a real uvicorn server on 127.0.0.1, the public listener's channel."""
    from tests.conftest import uvicorn_server
    from tests.support.gate import gate_app

    with uvicorn_server(gate_app(w, "public")) as url:
        r = httpx.post(f"{url}/v1/registry", content=registry_push_body(w.snap(10)), timeout=30)
    assert r.status_code == 403, r.text
    assert not (w.node.trust_dir / "registry.json").exists()


# --- the body's framing ------------------------------------------------------------------------


def test_push_body_round_trips_and_bounds_its_documents() -> None:
    snap, roots = b'{"a": 1}', (b"r1", b"r2")
    assert parse_registry_push(registry_push_body(snap, roots)) == (snap, roots)
    too_many = registry_push_body(snap, tuple(b"r" for _ in range(9)))
    with pytest.raises(EvidenceFormatError, match="more than 8 roots"):
        parse_registry_push(too_many)


@pytest.mark.parametrize("token", sorted(TOKENS))
async def test_non_standard_json_in_a_pushed_snapshot_is_refused_cleanly(
    w: World, token: str
) -> None:
    """The JSON extensions of tests/support/hostile_json.py inside the framed snapshot (and
    as the whole, unframed body): a 4xx in the error shape that echoes none of them."""
    doc = '{"signed": {"sequence": ' + TOKENS[token] + '}, "signatures": []}'
    for body in (registry_push_body(doc.encode()), doc.encode()):
        r = await push(w, body)
        assert_refused_cleanly(r)
        assert r.json()["check"] == "snapshot-malformed"
    assert not (w.node.trust_dir / "registry.json").exists()


async def test_a_node_without_a_trust_root_refuses_with_409_not_a_server_error(w: World) -> None:
    (w.node.trust_dir / "root.json").unlink()
    r = await push(w, registry_push_body(w.snap(10)))
    assert r.status_code == 409 and r.json()["check"] == "no-trust-root", r.text
    assert "install root.json first" in r.json()["detail"]
    assert_recorded(w, accepted=False, reason="no-trust-root", previous=0)
