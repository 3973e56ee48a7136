"""Host + guest pairs in the fleet (issue 9): registered over REST as one node, appraised as
``attest verify --host`` does (``attest.appraisal.pair``): one challenge, the guest accepted only
when the
host vouched for its vTPM in the fresh host quote; each layer's verdict and explanation stored,
served, signed (one EAR, submodules host and guest) and sent in webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.fleet.conftest import Registry, sim_server
from tests.support.poller import fresh_then_replayed, settings, until, verdicts

from attest.appraisal.ear import jwk_public_key, verify_ear
from attest.appraisal.pair import guest_nonce, host_nonce
from attest.evidence import pair_evidence_digest
from attest.testing.fleet_sim import SimFleet
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.enrollment import Enroller, EnrollPolicy
from attest.verifier.fleet.pairs import fresh_vouchings
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.store import Outcome, SqliteStore


def recording(appraise: Any, calls: list[tuple[bytes, Any]]) -> Any:
    """The poller's appraiser, noting the nonce and document of every appraisal in order."""

    def wrapped(doc: Any, **kw: Any) -> Any:
        calls.append((kw["nonce"], doc))
        return appraise(doc, **kw)

    return wrapped


async def test_pairs_are_appraised_as_one_node_and_name_the_failed_layer(
    tmp_path: Path, registry: Registry
) -> None:
    # 0 hosts g1 (1) and vouches for its vTPM; 2 hosts g2 (3) but vouched for another vTPM
    # (a substitute: the guest runs on an EK the host never vouched for).
    sim = SimFleet(4)
    signer = load_or_create_key(tmp_path / "ear.pem")
    with sim_server(sim) as srv:
        for i in range(4):
            srv.call(sim.set_image, i, registry.root_hash("1.0.0" if i % 2 else "1.1.0"))
        srv.call(sim.vouch, 0, "g1", sim.nodes[1].ek_sha256)
        srv.call(sim.vouch, 2, "g2", hashlib.sha256(b"another vTPM").digest())
        store = SqliteStore(str(tmp_path / "fleet.db"))
        app = create_fleet_app(
            store,
            enroll=Enroller(EnrollPolicy(tofu=True)),
            signer=signer,
            access=Access("w" * 16),
        )
        client = TestClient(app, headers={"Authorization": "Bearer " + "w" * 16})
        origin = {i: srv.origin(i) for i in range(4)}  # POST /v1/nodes takes origin URLs
        for name, host, guest, gid in (("pair-1", 0, 1, "g1"), ("pair-2", 2, 3, "g2")):
            r = client.post(
                "/v1/nodes",
                json={
                    "url": origin[guest],
                    "host_url": origin[host],
                    "guest_id": gid,
                    "node_id": name,
                },
            )
            assert r.status_code == 201, r.text
            doc = r.json()
            assert doc["kind"] == "pair" and doc["host_url"] == origin[host]
            assert (
                doc["enrollment"]["pair"]["guest"]["ek_sha256"] == sim.nodes[guest].ek_sha256.hex()
            )
        # A guest_id without a host is refused; so is a pair whose host does not answer.
        assert (
            client.post("/v1/nodes", json={"url": origin[1], "guest_id": "g1"}).status_code == 422
        )
        r = client.post("/v1/nodes", json={"url": origin[1], "host_url": "http://127.0.0.1:9/"})
        assert r.status_code == 502 and "host layer" in r.json()["detail"]

        events: list[Outcome] = []
        calls: list[tuple[bytes, Any]] = []  # (nonce, evidence document) of every appraisal
        poller = Poller(
            store,
            settings=settings(),
            appraise=recording(default_appraiser(), calls),
            registry=registry.state,
            signer=signer,
            on_change=events.append,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(
                lambda: verdicts(store) == {"pair-1": "affirming", "pair-2": "contraindicated"}
            )
            node = client.get("/v1/nodes/pair-2").json()
            # Only the guest is contraindicated, and the explanation names the guest layer.
            assert node["layers"]["failed_layer"] == "guest"
            assert node["layers"]["host"]["verdict"] == "affirming"
            assert node["layers"]["guest"]["verdict"] == "contraindicated"
            assert node["explanation"].startswith(
                "guest layer (sim-3): guest vTPM not vouched for by the host"
            )
            assert "never vouched for" in node["layers"]["guest"]["explanation"]
            assert node["release"] == "1.0.0"  # the guest's image
            assert node["layers"]["host"]["release"] == "1.1.0"
            ok = client.get("/v1/nodes/pair-1").json()
            assert ok["layers"]["failed_layer"] is None
            assert ok["layers"]["vouch"]["value"] == 2
            assert {ok["layers"][k]["verdict"] for k in ("host", "guest")} == {"affirming"}

            # One EAR for the pair: submodules host and guest, eat_nonce the pair challenge.
            key = jwk_public_key(client.get("/v1/verifier-key").json()["keys"][0])
            claims = verify_ear(client.get("/v1/nodes/pair-2/ear").text, key)
            assert set(claims["submods"]) == {"host", "guest"}
            assert claims["submods"]["host"]["ear.status"] == "affirming"
            assert claims["submods"]["guest"]["ear.status"] == "contraindicated"
            assert claims["submods"]["guest"]["attest.node.port-id"] == "sim-3"
            # Each layer names the registry it was appraised against.
            for layer in ("host", "guest"):
                reg = claims["submods"][layer]["attest.collateral"]["registry"]
                assert len(reg["sha256"]) == 64 and isinstance(reg["sequence"], int)
                assert claims["submods"][layer]["ear.appraisal-policy-id"].endswith(
                    f";registry={reg['sequence']}@sha256:{reg['sha256']}"
                )
            challenge = base64.urlsafe_b64decode(claims["eat_nonce"] + "==")
            assert len(challenge) == 32
            # The guest was challenged first; the host's nonce commits to the challenge and to
            # the guest's evidence as the poller received it (attest.appraisal.pair.host_nonce).
            nonces = [n for n, _ in calls]
            at_guest = nonces.index(guest_nonce(challenge))
            guest_doc = calls[at_guest][1]
            at_host = nonces.index(host_nonce(challenge, pair_evidence_digest(guest_doc)))
            assert at_guest < at_host
            assert host_nonce(challenge, None) not in nonces

            # The host of pair-1 goes out of policy: the pair fails at the host layer.
            srv.call(sim.tamper, 0)
            await until(lambda: verdicts(store)["pair-1"] == "contraindicated")
            bad = client.get("/v1/nodes/pair-1").json()
            assert bad["layers"]["failed_layer"] == "host"
            assert bad["explanation"].startswith("host layer (sim-0): ")
            # ... and a host whose runtime log does not verify vouches for nothing.
            assert "did not verify for this challenge" in bad["layers"]["guest"]["explanation"]
            # A layer that does not answer: the pair is unreachable, naming the layer.
            sim.nodes[3].down = True
            await until(lambda: verdicts(store)["pair-2"] == "unreachable")
            gone = client.get("/v1/nodes/pair-2").json()
            assert gone["explanation"].startswith("the node does not answer")
            assert "guest layer" in gone["explanation"]
        finally:
            stop.set()
            await task
            poller.close()

    changes = {(o.node_id, o.previous_verdict, o.verdict): o for o in events}
    hostfail = changes[("pair-1", "affirming", "contraindicated")]
    assert hostfail.layers is not None and hostfail.layers["failed_layer"] == "host"
    assert hostfail.ear is not None  # the webhook carries the signed result
    from attest.verifier.fleet.webhooks import verdict_event

    event = json.loads(verdict_event(changes[("pair-2", "none", "contraindicated")]).body)
    assert event["failed_layer"] == "guest" and event["ear"]
    assert event["layers"]["guest"]["verdict"] == "contraindicated"
    assert event["layers"]["host"]["verdict"] == "affirming"
    assert "vouched" in event["layers"]["guest"]["explanation"]

    page = client.get("/").text
    assert "host + guest" in page and 'class="v contraindicated"' in page
    detail = client.get("/nodes/pair-2").text
    assert "Host and guest" in detail and "never vouched for" in detail
    history = client.get("/v1/nodes/pair-1/history").json()["changes"]
    assert [c["to"] for c in history] == ["contraindicated", "affirming"]
    store.close()


def test_vouchings_count_only_from_a_quote_verified_now(tmp_path: Path) -> None:
    """An incremental appraisal whose host quote fails returns the memory it was given: its
    runtime log (and vtpm events) were verified against an earlier quote, so they vouch for
    nothing now."""
    sim = SimFleet(1)
    sim.vouch(0, "g1", hashlib.sha256(b"ek").digest())
    first, replayed = fresh_then_replayed(sim)
    assert [v.guest_id for v in fresh_vouchings(first) or ()] == ["g1"]
    assert fresh_vouchings(replayed) is None


def test_store_keeps_both_clocks_and_the_layers(tmp_path: Path) -> None:
    from attest.tpmstruct import ClockInfo
    from attest.verifier.fleet.enrolled import PairEnrollment

    sim = SimFleet(2)
    store = SqliteStore(str(tmp_path / "fleet.db"))
    pe = PairEnrollment(sim.enrollment(0), sim.enrollment(1, ek=True), "g1")
    store.add_node("p", "http://g/", pe, now=1.0, host_url="http://h/")
    (leased,) = store.lease("w", now=2.0, limit=5, ttl=30)
    assert leased.host_url == "http://h/" and leased.enrollment_doc is not None
    g, h = ClockInfo(10, 1, 0, True), ClockInfo(20, 2, 1, True)
    layers = {
        "failed_layer": None,
        "host": {"verdict": "affirming"},
        "guest": {"verdict": "affirming"},
    }
    o = Outcome(
        "p",
        leased.token,
        2.0,
        "affirming",
        "ok",
        None,
        None,
        g,
        {},
        "",
        0,
        12.0,
        1,
        leased.verdict,
        "h.p.s",
        layers,
        h,
    )
    assert store.complete("w", [o])
    (again,) = store.lease("w", now=13.0, limit=5, ttl=30)
    assert again.clock == g and again.host_clock == h
    row = store.get_node("p")
    assert row is not None and row.pair and row.layers == layers and row.ear == "h.p.s"
    # A result without layers (the pair did not answer) keeps the stored ones.
    store.complete("w", [replace(o, token=again.token, layers=None, ear=None, seq=2)])
    row = store.get_node("p")
    assert row is not None and row.layers == layers and row.ear == "h.p.s"
    store.close()
