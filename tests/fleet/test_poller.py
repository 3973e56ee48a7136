"""The poller against simulated nodes on loopback and against the real attestd app: verdicts,
explanations, unreachable nodes, backoff, signed webhooks on verdict changes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.fleet.conftest import Registry, SimServer, sim_server
from tests.support.poller import (
    OVMF_LOG,
    SIM_OVMF_PLATFORM,
    SIM_PLATFORM,
    settings,
    until,
    verdicts,
)

from attest.appraisal.rules import VerifierRules
from attest.enroll import Enrollment
from attest.errors import WebhookSignatureError
from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.store import SqliteStore
from attest.verifier.fleet.webhooks import (
    IDEMPOTENCY_HEADER,
    WebhookSender,
    WebhookSettings,
    verdict_event,
    verify_signature,
)

SECRET = b"0123456789abcdef-webhook-secret"


class Receiver:
    """A webhook receiver that checks every signature; fails the first delivery on purpose."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad = 0
        self.calls = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
        body = await reader.readexactly(
            int(headers.get("content-length", headers.get("Content-Length", 0)))
        )
        self.calls += 1
        status = 200
        if self.calls == 1:
            status = 503  # the sender must retry
        else:
            try:
                event = verify_signature(SECRET, headers, body, now=time.time())
                assert headers[IDEMPOTENCY_HEADER] == event["id"]
                self.events.append(event)
            except WebhookSignatureError:
                self.bad += 1
                status = 401
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()


async def test_fleet_verdicts_unreachable_and_signed_webhooks(
    tmp_path: Path, registry: Registry
) -> None:
    sim = SimFleet(4, record_times=True)
    with sim_server(sim) as srv:
        for i in range(4):
            srv.call(sim.set_image, i, registry.root_hash("1.0.0"))
        store = SqliteStore(str(tmp_path / "fleet.db"))
        for i in range(4):
            store.add_node(f"sim-{i}", srv.url(i), sim.enrollment(i), now=time.time())
        receiver = Receiver()
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        hook_port = server.sockets[0].getsockname()[1]
        sender = WebhookSender(
            f"http://127.0.0.1:{hook_port}/hook",
            SECRET,
            store=store,
            worker_id="t",
            settings=WebhookSettings(backoff=0.05),
        )
        poller = Poller(
            store,
            settings=settings(),
            appraise=default_appraiser(),
            registry=registry.state,
            on_change=sender.notify,
            outbox=verdict_event,
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(poller.run(stop)), asyncio.create_task(sender.run(stop))]
        try:
            await until(lambda: set(verdicts(store).values()) == {"affirming"})
            node = store.get_node("sim-0")
            assert node is not None and node.release == "1.0.0"

            srv.call(sim.tamper, 1)  # the runtime PCR no longer matches its log
            sim.nodes[2].down = True  # stops answering
            await until(
                lambda: (
                    verdicts(store)["sim-1"] == "contraindicated"
                    and verdicts(store)["sim-2"] == "unreachable"
                )
            )
            bad = store.get_node("sim-1")
            assert bad is not None and "runtime log" in bad.explanation
            down = store.get_node("sim-2")
            assert down is not None and down.failures >= 2 and down.release == "1.0.0"

            # Not forgotten: still polled (with backoff), and back when it answers again.
            sim.nodes[2].down = False
            await until(lambda: verdicts(store)["sim-2"] == "affirming")
            await until(lambda: len(receiver.events) >= 4 + 3)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            poller.close()
            server.close()
        assert receiver.bad == 0 and sender.metrics.failed_attempts >= 1
        changes = {(e["node_id"], e["from"], e["to"]) for e in receiver.events}
        assert ("sim-1", "affirming", "contraindicated") in changes
        assert ("sim-2", "affirming", "unreachable") in changes
        assert ("sim-2", "unreachable", "affirming") in changes
        # Each change in the history was told exactly once (its event stored with it).
        told = [(e["node_id"], e["to"]) for e in receiver.events]
        assert sorted(told) == sorted((c["node_id"], c["to"]) for c in store.changes()), told
        # Backoff: while down, sim-2 was tried far less often than the healthy nodes.
        history = [c["to"] for c in store.changes("sim-2")][::-1]
        assert history == ["affirming", "unreachable", "affirming"]
        store.close()


def test_webhook_signature_rejects_tampering() -> None:
    from attest.verifier.fleet.webhooks import sign

    body = json.dumps({"to": "affirming"}).encode()
    ts = int(time.time())
    headers = {"X-Attest-Timestamp": str(ts), "X-Attest-Signature": sign(SECRET, ts, body)}
    assert verify_signature(SECRET, headers, body, now=ts)["to"] == "affirming"
    with pytest.raises(WebhookSignatureError):
        verify_signature(SECRET, headers, body.replace(b"affirming", b"warning"), now=ts)
    with pytest.raises(WebhookSignatureError):
        verify_signature(SECRET, headers, body, now=ts + 3600)  # a replay, an hour later


async def test_poller_appraises_the_real_node_api(tmp_path: Path) -> None:
    """The fleet against attestd itself (create_app + LocalNode + FakeTpm under uvicorn)."""
    import uvicorn

    from attest.node.api.app import create_app
    from attest.node.api.middleware import ChannelApp
    from attest.node.broker.local import LocalNode
    from attest.node.config import Settings, TpmSettings
    from attest.node.tpm.fake import FakeTpm
    from attest.verifier.client import NodeClient
    from attest.verifier.contact import enroll

    state = tmp_path / "node"
    state.mkdir()
    node = LocalNode.open(FakeTpm(), state, pcr=13)
    app = create_app(
        Settings(node_id="real-1", tpm=TpmSettings(state_dir=str(state))).validate(), node=node
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(ChannelApp(app, "public"), host="127.0.0.1", port=port, log_level="error")
    )
    serving = asyncio.create_task(server.serve())
    await until(lambda: server.started)
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()

    def do_enroll() -> Enrollment:
        from datetime import UTC, datetime

        with NodeClient(url) as c:
            return Enrollment.from_json(enroll(c, now=datetime.now(UTC)).to_json())

    e = await loop.run_in_executor(None, do_enroll)
    store = SqliteStore(str(tmp_path / "fleet.db"))
    store.add_node("real-1", url, e, now=time.time())
    poller = Poller(store, settings=settings(), appraise=default_appraiser())
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        await until(
            lambda: (store.get_node("real-1") or object()).__getattribute__("appraisals") >= 2
        )
    finally:
        stop.set()
        await task
        poller.close()
        server.should_exit = True
        await serving
        node.close()
    row = store.get_node("real-1")
    assert row is not None and row.verdict in ("affirming", "warning"), row.explanation
    assert row.failures == 0
    store.close()


def test_sim_server_fixture_answers(tmp_path: Path) -> None:
    with sim_server(SimFleet(1)) as srv:
        assert isinstance(srv, SimServer) and srv.port > 0


@pytest.mark.skipif(not OVMF_LOG.exists(), reason=f"{OVMF_LOG} is missing")
async def test_poller_fetches_logs_once_and_refetches_after_a_reset(
    tmp_path: Path, registry: Registry
) -> None:
    """The firmware log is served once per boot; after a TPM reset the node is challenged again
    for the whole logs at once (still affirming); an unlogged extension of the runtime PCR is
    found (the incremental check fails, the full one names it)."""
    fw = OVMF_LOG.read_bytes()
    fleet = SimFleet(3, firmware_log=fw, verity_root_hash=registry.root_hash("1.0.0"))
    srv = SimServer(fleet)
    store = SqliteStore(str(tmp_path / "fleet.db"))
    try:
        for i in range(3):
            store.add_node(f"sim-{i}", srv.url(i), fleet.enrollment(i), now=time.time())
        poller = Poller(
            store,
            settings=settings(interval=0.3, platform_id=SIM_OVMF_PLATFORM),
            appraise=default_appraiser(),
            registry=registry.state,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await until(lambda: all(n.requests >= 3 for n in fleet.nodes))
        assert fleet.log_bytes == 3 * len(fw)  # the whole log once per node, then nothing
        assert set(verdicts(store).values()) == {"affirming"}
        srv.call(fleet.reboot, 0)
        srv.call(fleet.measure, 1, "config", {"sha256": "aa" * 32})
        srv.call(fleet.tamper, 2)
        seen = fleet.nodes[0].requests
        await until(
            lambda: (
                fleet.nodes[0].requests >= seen + 4
                and verdicts(store)["sim-2"] == "contraindicated"
            )
        )
        assert poller.metrics.refetches >= 2  # the reset, and the failed incremental check
        assert fleet.log_bytes >= 4 * len(fw)  # node 0's new boot: its log fetched again
        got = verdicts(store)
        assert got["sim-0"] == "affirming" and got["sim-1"] == "affirming"
        (latest,) = store.results("sim-2", limit=1)
        assert "does not replay" in latest["explanation"]
        stop.set()
        await task
        poller.close()
    finally:
        store.close()
        srv.close()


@pytest.mark.parametrize(
    ("platform", "waive", "want", "why"),
    [
        (SIM_PLATFORM, False, "affirming", "firmware PCRs equal platform reference sim-no-"),
        (None, False, "warning", "platform not appraised: no platform named"),
        (None, True, "affirming", "platform not appraised: waived by the verifier's policy"),
        (SIM_OVMF_PLATFORM, True, "contraindicated", "differs from reference sim-ovmf-q35"),
    ],
    ids=["named", "none-named", "waived", "named-differs-despite-waiver"],
)
async def test_the_fleet_appraises_the_platform_it_names_or_says_it_waived_it(
    tmp_path: Path, registry: Registry, platform: str | None, waive: bool, want: str, why: str
) -> None:
    """With a registry, affirming needs the firmware PCRs to equal the signed reference of the
    platform the fleet names (--platform); naming none is a warning unless the rules waive it,
    and the result says so. A platform named is appraised, waiver or not."""
    rules = VerifierRules(waive_platform=waive)
    sim = SimFleet(1, verity_root_hash=registry.root_hash("1.0.0"))
    with sim_server(sim) as srv:
        store = SqliteStore(str(tmp_path / "fleet.db"))
        store.add_node("sim-0", srv.url(0), sim.enrollment(0), now=time.time())
        poller = Poller(
            store,
            settings=settings(platform_id=platform),
            appraise=default_appraiser(),
            registry=registry.state,
            rules=rules,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(lambda: bool(store.results("sim-0", limit=1)))
            (latest,) = store.results("sim-0", limit=1)
            assert verdicts(store)["sim-0"] == want, latest
            assert why in json.dumps(latest), latest
            assert rules.policy_id in json.dumps(latest), latest
        finally:
            stop.set()
            await task
            poller.close()
            store.close()


async def test_an_answer_put_off_for_the_read_budget_is_not_the_nodes_failure(
    tmp_path: Path,
) -> None:
    """With the pool's shared read budget held (here: none at all), a node whose answer is
    larger than its own small share is asked again shortly -- never counted as a failure,
    never marked unreachable, its verdict kept."""
    from attest.testing.hostile_peers import hostile

    sim = SimFleet(1)
    with hostile("large") as srv:  # a complete 2 MiB answer
        store = SqliteStore(str(tmp_path / "fleet.db"))
        store.add_node("big-0", srv.url, sim.enrollment(0), now=time.time())
        before = store.get_node("big-0")
        poller = Poller(store, settings=settings(), appraise=default_appraiser())
        poller.pool.max_buffered = 0  # no answer may grow past its own share
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(lambda: poller.metrics.deferred >= 3)
        finally:
            stop.set()
            await task
            poller.close()
    node = store.get_node("big-0")
    store.close()
    assert before is not None and node is not None
    assert node.failures == 0 and node.verdict == before.verdict != "unreachable"
    assert "held by other answers" in node.last_error and "asked again" in node.explanation
    assert poller.metrics.failures == 0 and poller.pool.over_budget >= 3


async def test_an_unchanged_continuity_is_parsed_once_and_a_new_one_is_stored(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored continuity is parsed once per stored text, not per appraisal (what a worker
    wrote itself is not parsed at all); when an appraisal verifies a newer audit entry, the
    new continuity is stored and used next; a restarted worker parses the stored one once."""
    import hashlib
    import sqlite3

    from attest.verifier.fleet import poller as poller_mod

    parsed: list[str] = []
    real = poller_mod.continuity_of

    def counting(text: str | None, layer: str | None = None) -> Any:
        parsed.append(text or "")
        return real(text, layer)

    monkeypatch.setattr(poller_mod, "continuity_of", counting)
    fleet = SimFleet(1, verity_root_hash=registry.root_hash("1.0.0"))
    fleet.measure(0, "audit", {"audit_seq": 1, "entry_hash": hashlib.sha256(b"1").hexdigest()})
    srv = SimServer(fleet)
    db = tmp_path / "fleet.db"
    store = SqliteStore(str(db))

    def stored() -> dict[str, Any]:
        with sqlite3.connect(db) as conn:
            (text,) = conn.execute("SELECT continuity FROM nodes").fetchone()
        return json.loads(text) if text else {}

    def worker() -> tuple[Poller, asyncio.Event, asyncio.Task[None]]:
        p = Poller(
            store,
            settings=settings(interval=0.2),
            appraise=default_appraiser(),
            registry=registry.state,
        )
        stop = asyncio.Event()
        return p, stop, asyncio.create_task(p.run(stop))

    try:
        store.add_node("sim-0", srv.url(0), fleet.enrollment(0), now=time.time())
        poller, stop, task = worker()
        await until(lambda: fleet.nodes[0].requests >= 5)
        assert stored()["audit_head"]["seq"] == 1
        assert parsed == []  # the worker's own text, held with what it parses to
        entry = hashlib.sha256(b"2").hexdigest()
        srv.call(fleet.measure, 0, "audit", {"audit_seq": 2, "entry_hash": entry})
        await until(lambda: (stored().get("audit_head") or {}).get("seq") == 2)
        seen = fleet.nodes[0].requests
        await until(lambda: fleet.nodes[0].requests >= seen + 3)
        assert stored()["audit_head"] == {"seq": 2, "entry_hash": entry}
        assert set(verdicts(store).values()) == {"affirming"}, store.list_nodes()
        assert parsed == []
        stop.set()
        await task
        poller.close()
        # A restarted worker: the stored text is parsed at its first appraisal, then held.
        again, stop, task = worker()
        seen = fleet.nodes[0].requests
        await until(lambda: fleet.nodes[0].requests >= seen + 4)
        stop.set()
        await task
        again.close()
        assert len(parsed) == 1 and json.loads(parsed[0])["audit_head"]["seq"] == 2
        assert set(verdicts(store).values()) == {"affirming"}
    finally:
        store.close()
        srv.close()
