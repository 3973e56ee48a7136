"""A fleet pair whose guest is an SEV-SNP guest **without a vTPM** (``guest_vtpm: false``,
``attest fleet add --no-guest-vtpm``): only the host is enrolled; every poll challenges the
guest for its report alone and appraises it as ``attest verify --host --no-guest-vtpm`` does --
the layers are ``host`` and ``guest-snp``, the host vouching for the guest by the SEV-SNP chip
its own runtime log names (``snp-host``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.fleet.conftest import Registry, sim_server
from tests.support.poller import fresh_then_replayed, settings, until, verdicts
from tests.support.snp_fleet import SnpFleet, StaleGuest, snp_fleet

from attest.appraisal.ear import jwk_public_key, verify_ear
from attest.runtime import KIND_SNP_HOST
from attest.testing.fleet_sim import SimFleet
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.enrolled import PairEnrollment, enrollment_from_json
from attest.verifier.fleet.enrollment import Enroller, EnrollPolicy
from attest.verifier.fleet.pairs import fresh_chips
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.store import Outcome, SqliteStore, Store, open_store
from attest.verifier.fleet.webhooks import verdict_event

TOKEN = "w" * 16
OTHER_CHIP = b"\x42" * 64


def _client(store: Store, **kw: Any) -> TestClient:
    app = create_fleet_app(
        store, enroll=Enroller(EnrollPolicy(tofu=True)), access=Access(TOKEN), **kw
    )
    return TestClient(app, headers={"Authorization": "Bearer " + TOKEN})


def _register(client: TestClient, guest: str, host: str, node_id: str) -> dict[str, Any]:
    r = client.post(
        "/v1/nodes",
        json={"url": guest, "host_url": host, "node_id": node_id, "guest_vtpm": False},
    )
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.fixture()
def cvm(tmp_path: Path, registry: Registry) -> SnpFleet:
    return snp_fleet(registry.world, tmp_path / "snp")


async def test_a_guest_without_a_vtpm_is_its_snp_report_vouched_for_by_the_host_chip(
    tmp_path: Path, cvm: SnpFleet
) -> None:
    # 0 hosts 1 and recorded the chip 1's reports name; 2 hosts 3 but recorded another chip
    # (3's reports name the first: it does not run on 2).
    sim = SimFleet(4)
    for guest in (1, 3):
        sim.snp_only(guest, cvm.guest)
    signer = load_or_create_key(tmp_path / "ear.pem")
    appraised: list[Any] = []
    events: list[Outcome] = []

    def appraise(doc: Any, **kw: Any) -> Any:
        appraised.append(doc)
        return default_appraiser()(doc, **kw)

    with sim_server(sim) as srv:
        for host in (0, 2):
            srv.call(sim.set_image, host, cvm.root_hash("1.0.0"))
        srv.call(sim.record_chip, 0, cvm.amd.chip_id)
        srv.call(sim.record_chip, 2, OTHER_CHIP)
        store = SqliteStore(str(tmp_path / "fleet.db"))
        client = _client(store, signer=signer)
        reg = _register(client, srv.origin(1), srv.origin(0), "cvm-1")
        _register(client, srv.origin(3), srv.origin(2), "cvm-2")
        # Only the host was enrolled; the guest's id is the one its identity claims.
        pair = reg["enrollment"]["pair"]
        assert pair["guest"] is None and pair["guest_id"] == "sim-1"
        assert pair["host"]["node_id"] == "sim-0"
        assert reg["kind"] == "pair" and reg["enrollment_strength"] == "tofu"
        poller = Poller(
            store,
            settings=settings(),
            appraise=appraise,
            registry=cvm.state,
            signer=signer,
            snp=cvm.collateral,
            on_change=events.append,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(
                lambda: verdicts(store) == {"cvm-1": "affirming", "cvm-2": "contraindicated"}
            )
            # The guests were challenged, never appraised as TPM nodes: every document the
            # appraiser saw was a host's quote.
            assert appraised and all("quote" in d for d in appraised)
            node = client.get("/v1/nodes/cvm-1").json()
            layers = node["layers"]
            assert set(layers) == {"failed_layer", "vouch", "host", "guest-snp"}
            assert layers["failed_layer"] is None
            assert layers["host"]["verdict"] == layers["guest-snp"]["verdict"] == "affirming"
            assert layers["guest-snp"]["node_id"] == "sim-1"
            assert layers["vouch"]["check"] == "host-vouch"
            assert "recorded as its own" in layers["vouch"]["explanation"]
            assert node["latest"]["result"]["layers"].keys() == {"host", "guest-snp"}
            key = jwk_public_key(client.get("/v1/verifier-key").json()["keys"][0])
            claims = verify_ear(client.get("/v1/nodes/cvm-1/ear").text, key)
            assert set(claims["submods"]) == {"host", "guest-snp"}
            assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
            assert claims["submods"]["guest-snp"]["attest.node.port-id"] == "sim-1"

            # The host that recorded another chip cannot vouch for the guest.
            bad = client.get("/v1/nodes/cvm-2").json()
            assert bad["layers"]["failed_layer"] == "guest-snp"
            assert bad["layers"]["host"]["verdict"] == "affirming"
            assert bad["explanation"].startswith("guest-snp layer (sim-3): ")
            assert "guest not vouched for by the host" in bad["explanation"]
            assert f"not on sim-2's ({OTHER_CHIP.hex()[:16]}" in bad["explanation"]
            assert "guest-snp" in client.get("/nodes/cvm-2").text

            # The guest answers with the SEV-SNP report of an earlier challenge.
            srv.call(sim.snp_only, 1, StaleGuest(cvm.guest, None))
            await until(lambda: verdicts(store)["cvm-1"] == "contraindicated")
            stale = client.get("/v1/nodes/cvm-1").json()
            assert stale["layers"]["failed_layer"] == "guest-snp"
            assert stale["explanation"].startswith("guest-snp layer (sim-1): ")
            assert "stale or replayed" in stale["explanation"]
            history = client.get("/v1/nodes/cvm-1/history").json()["changes"]
            assert [c["to"] for c in history] == ["contraindicated", "affirming"]
        finally:
            stop.set()
            await task
            poller.close()
    store.close()
    # The webhook of a verdict change names the pair's two layers.
    change = next(o for o in events if o.node_id == "cvm-2")
    event = json.loads(verdict_event(change).body)
    assert event["failed_layer"] == "guest-snp" and event["ear"]
    assert set(event["layers"]) == {"host", "guest-snp"}
    assert event["layers"]["guest-snp"]["verdict"] == "contraindicated"


async def test_a_guest_without_a_vtpm_that_does_not_answer_is_the_pair_not_answering(
    tmp_path: Path, cvm: SnpFleet
) -> None:
    sim = SimFleet(2)
    sim.snp_only(1, cvm.guest)
    with sim_server(sim) as srv:
        srv.call(sim.set_image, 0, cvm.root_hash("1.0.0"))
        srv.call(sim.record_chip, 0, cvm.amd.chip_id)
        store = SqliteStore(str(tmp_path / "fleet.db"))
        client = _client(store)
        guest = srv.origin(1)
        _register(client, guest, srv.origin(0), "cvm-1")
        sim.nodes[1].down = True
        poller = Poller(
            store,
            settings=settings(),
            appraise=default_appraiser(),
            registry=cvm.state,
            snp=cvm.collateral,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(lambda: verdicts(store) == {"cvm-1": "unreachable"})
            node = client.get("/v1/nodes/cvm-1").json()
            assert node["last_error"].startswith(f"guest-snp layer ({guest}): ")
            assert sim.nodes[0].requests == 0  # the host is not asked without the guest's
        finally:
            stop.set()
            await task
            poller.close()
    store.close()


def test_the_host_chip_counts_only_from_a_quote_verified_now() -> None:
    """As ``fresh_vouchings``: a runtime log verified against an earlier quote names no chip
    now."""
    sim = SimFleet(1)
    sim.record_chip(0, b"\x07" * 64)
    first, replayed = fresh_then_replayed(sim)
    assert fresh_chips(first) == (b"\x07" * 64,)
    assert fresh_chips(replayed) is None


def test_only_the_host_records_its_chip_in_the_simulator() -> None:
    sim = SimFleet(1)
    with pytest.raises(ValueError, match="recorded by the host itself"):
        sim.measure(0, KIND_SNP_HOST, {"chip_id": "07" * 64})
    sim.record_chip(0, b"\x07" * 64)
    assert [r.to_json()["content"] for r in sim.nodes[0].records][-1] == {"chip_id": "07" * 64}


# --- registration and enrollment ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/fleet.db")
    else:
        s = open_store(request.getfixturevalue("pg_dsn"))
    yield s
    s.close()


def test_an_enrollment_without_a_guest_vtpm_round_trips_through_the_store(
    any_store: Store,
) -> None:
    sim = SimFleet(2)
    pe = PairEnrollment(sim.enrollment(0), None, "g1")
    assert pe.node_id == "g1" and pe.strength.value == "tofu"
    assert pe.ak_names == sim.nodes[0].tpm.ak_public().name.hex() + "/-"
    assert PairEnrollment.from_json(json.loads(json.dumps(pe.to_json()))) == pe
    any_store.add_node("cvm-1", "http://g:1", pe, now=1.0, host_url="http://h:1")
    (leased,) = any_store.lease("w", now=2.0, limit=5, ttl=30)
    assert leased.enrollment_doc is not None
    doc = json.loads(leased.enrollment_doc)
    assert doc["pair"]["guest"] is None
    assert enrollment_from_json(doc) == pe
    row = any_store.get_node("cvm-1")
    assert row is not None and row.pair and row.enrolled and row.enrollment == "tofu"
    # A re-enrollment as a pair with a vTPM guest names both AKs in the history.
    full = PairEnrollment(sim.enrollment(0), sim.enrollment(1, ek=True), "g1")
    change = any_store.add_node(
        "cvm-1", "http://g:1", full, now=3.0, host_url="http://h:1", re_enroll=True, by="test"
    )
    assert change is not None
    assert change["detail"]["previous_ak"] == pe.ak_names
    assert change["detail"]["new_ak"] == full.ak_names


def test_guest_vtpm_is_for_pairs_only(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "fleet.db"))
    client = _client(store)
    r = client.post("/v1/nodes", json={"url": "http://127.0.0.1:9", "guest_vtpm": False})
    assert r.status_code == 422, r.text
    assert "guest_vtpm: false are for a pair" in r.json()["detail"]
    r = client.post(
        "/v1/nodes",
        json={
            "url": "http://127.0.0.1:9",
            "host_url": "http://127.0.0.1:8",
            "activation_url": "https://127.0.0.1:7",
            "guest_vtpm": False,
        },
    )
    assert r.status_code == 422, r.text
    assert "activation_url" in r.json()["detail"]
    assert store.list_nodes() == []
    store.close()


def test_a_guest_without_a_vtpm_that_does_not_answer_is_refused_naming_its_layer(
    tmp_path: Path,
) -> None:
    sim = SimFleet(2)
    with sim_server(sim) as srv:
        host, guest = srv.origin(0), srv.origin(1)
        sim.nodes[1].down = True
        store = SqliteStore(str(tmp_path / "fleet.db"))
        client = _client(store)
        r = client.post("/v1/nodes", json={"url": guest, "host_url": host, "guest_vtpm": False})
        assert r.status_code == 502, r.text
        assert r.json()["detail"].startswith("guest layer: ")
        # With the guest's id given there is nothing to ask the guest at registration.
        r = client.post(
            "/v1/nodes",
            json={"url": guest, "host_url": host, "guest_id": "g1", "guest_vtpm": False},
        )
        assert r.status_code == 201, r.text
        assert r.json()["node_id"] == "g1"
        store.close()


def test_fleet_add_no_guest_vtpm_enrolls_the_host_only(
    tmp_path: Path, cvm: SnpFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.cli.fleet import main

    sim = SimFleet(2)
    db = f"sqlite:///{tmp_path}/f.db"
    with sim_server(sim) as srv:
        srv.call(sim.snp_only, 1, cvm.guest)
        host, guest = srv.origin(0), srv.origin(1)
        assert main(["add", guest, "--no-guest-vtpm", "--tofu", "--db", db]) == 2
        assert "--no-guest-vtpm are for a pair" in capsys.readouterr().err
        argv = ["add", guest, "--host", host, "--no-guest-vtpm", "--tofu", "--db", db]
        assert main([*argv, "--activation-url", "https://127.0.0.1:1"]) == 2
        assert "has none" in capsys.readouterr().err
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "sim-1: enrolled as a host + guest pair (enrollment: tofu)" in out
        assert "guest sim-1: no vTPM, nothing enrolled" in out
        assert "host sim-0: AK" in out
        assert main(["show", "sim-1", "--db", db, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["kind"] == "pair" and shown["host_url"] == host
    store = SqliteStore(str(tmp_path / "f.db"))
    (leased,) = store.lease("w", now=1e12, limit=5, ttl=30)
    assert json.loads(leased.enrollment_doc or "{}")["pair"]["guest"] is None
    store.close()
