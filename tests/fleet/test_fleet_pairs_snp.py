"""A fleet pair whose guest is an SEV-SNP guest: the poller builds the ``guest-snp`` layer with the
same appraisal as ``attest verify --host`` (``attest.appraisal.snp.guest_snp_layer``): one
affirming verdict over host, guest-snp and guest-vtpm, stored, served and signed; a guest whose
SNP report answers an earlier challenge is contraindicated, naming guest-snp."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient
from tests.fleet.conftest import Registry, sim_server
from tests.support.poller import settings, until, verdicts
from tests.support.snp_fleet import StaleGuest, snp_fleet

from attest.appraisal.ear import jwk_public_key, verify_ear
from attest.testing.fleet_sim import SimFleet
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.enrollment import Enroller, EnrollPolicy
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.store import SqliteStore
from attest.verifier.fleet.trust import RegistryState


async def test_confidential_guest_pair_has_three_layers_and_names_a_replayed_snp_half(
    tmp_path: Path, registry: Registry
) -> None:
    cvm = snp_fleet(registry.world, tmp_path / "snp")
    guest, verified = cvm.guest, cvm.verified
    sim = SimFleet(2)
    sim.nodes[1].snp = guest
    signer = load_or_create_key(tmp_path / "ear.pem")
    with sim_server(sim) as srv:
        for i in range(2):
            srv.call(sim.set_image, i, verified.snapshot.releases["1.0.0"].verity.root_hash)
        srv.call(sim.vouch, 0, "g1", sim.nodes[1].ek_sha256)
        store = SqliteStore(str(tmp_path / "fleet.db"))
        app = create_fleet_app(
            store, enroll=Enroller(EnrollPolicy(tofu=True)), signer=signer, access=Access("w" * 16)
        )
        client = TestClient(app, headers={"Authorization": "Bearer " + "w" * 16})
        r = client.post(
            "/v1/nodes",
            json={
                "url": srv.origin(1),
                "host_url": srv.origin(0),
                "guest_id": "g1",
                "node_id": "cvm-1",
            },
        )
        assert r.status_code == 201, r.text
        poller = Poller(
            store,
            settings=settings(),
            appraise=default_appraiser(),
            registry=lambda: RegistryState(verified, configured=True),
            signer=signer,
            snp=cvm.collateral,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(lambda: verdicts(store) == {"cvm-1": "affirming"})
            node = client.get("/v1/nodes/cvm-1").json()
            layers = node["layers"]
            assert layers["failed_layer"] is None
            assert {layers[k]["verdict"] for k in ("host", "guest-snp", "guest-vtpm")} == {
                "affirming"
            }
            assert "guest" not in layers
            key = jwk_public_key(client.get("/v1/verifier-key").json()["keys"][0])
            claims = verify_ear(client.get("/v1/nodes/cvm-1/ear").text, key)
            assert set(claims["submods"]) == {"host", "guest-snp", "guest-vtpm"}
            assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}

            # The guest answers with the SNP report of an earlier challenge.
            ak = sim.nodes[1].tpm.ak_public().tpm2b()
            sim.nodes[1].snp = StaleGuest(guest, ak)
            await until(lambda: verdicts(store) == {"cvm-1": "contraindicated"})
            bad = client.get("/v1/nodes/cvm-1").json()
            assert bad["layers"]["failed_layer"] == "guest-snp"
            assert bad["explanation"].startswith("guest-snp layer (sim-1): ")
            assert "stale or replayed" in bad["explanation"]
            assert bad["layers"]["guest-vtpm"]["verdict"] == "affirming"
            page = client.get("/nodes/cvm-1").text
            assert "guest-snp" in page
        finally:
            stop.set()
            await task
            poller.close()
    store.close()
