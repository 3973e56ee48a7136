"""attestd in an SEV-SNP guest without a TPM (``[snp] only``; attestd-tpm ``--no-tpm``): the
evidence is the report alone (``attest.evidence.snp_only_members``), whose REPORT_DATA binds the
nonce and the TLS key and no AK; the identity names no key; every TPM endpoint answers 409
``NoTpmError``; readiness is the broker answering. The node port is attestd-tpm's own
``TpmlessNode`` with the fake SEV-SNP guest, in-process and served by a real ``BrokerServer``
over its socket (production's shape)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.api.conftest import _running
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest import cmw
from attest.errors import ConfigError, SnpCheckError
from attest.evidence import UnverifiedSnpOnly, parse_snp_only
from attest.node.api.app import create_app
from attest.node.broker.client import BrokerClient
from attest.node.broker.host import HostFacts
from attest.node.broker.local import LocalNode
from attest.node.broker.server import BrokerServer
from attest.node.broker.tpmless import TpmlessNode
from attest.node.config import Settings, SnpSettings, TpmSettings, load_settings
from attest.node.snp_guest import FakeSnpGuest
from attest.node.tpm.fake import FakeTpm
from attest.snp.certtable import chain_of, parse_cert_table
from attest.snp.report import Product, parse_report
from attest.snp.reportdata import verify_report_data
from attest.snp.verify import SnpVerifier

SEL = {"sha256": [0, 1, 2, 3, 4, 5, 6, 7]}
NODE_ID = "snp-only-guest"
DOCUMENT_MEMBERS = {"version", "node_id", "snp", "boot", "image", "time"}


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        node_id=NODE_ID,
        tpm=TpmSettings(state_dir=str(tmp_path / "state")),
        snp=SnpSettings(only=True),
    ).validate()


@pytest.fixture(params=["in-process", "broker"])
def tpmless(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """attestd-tpm --no-tpm --snp-guest fake:DIR: its node in-process, or over its socket."""
    from attest.testing.snp import fake_guest_dir

    guest = FakeSnpGuest.from_dir(fake_guest_dir(fake(Product.MILAN), tmp_path / "snp"))
    (tmp_path / "state").mkdir()
    node = TpmlessNode(HostFacts(snp=guest), tmp_path / "state")
    if request.param == "in-process":
        yield node
        node.close()
        return
    api, op = tmp_path / "api.sock", tmp_path / "op.sock"
    server = BrokerServer(node, api, operator_socket_path=op).start()
    client = BrokerClient(api, timeout=10)
    yield client
    client.close()
    server.shutdown()
    node.close()


def _spki() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verified(doc: Any, nonce: bytes, tls_spki: bytes | None) -> UnverifiedSnpOnly:
    """The document read as the verifier reads it; its report verified against the fake AMD
    and its REPORT_DATA against this nonce, this TLS key and no AK."""
    got = parse_snp_only(doc)
    assert got.node_id == NODE_ID and got.snp.tls_spki == tls_spki and got.snp.certs is not None
    signer = parse_report(got.snp.report).signer
    leaf, chain = chain_of(parse_cert_table(got.snp.certs), signer)
    vr = SnpVerifier(pins=fake(Product.MILAN).pins).verify(
        got.snp.report, leaf=leaf, intermediates=chain, now=FAKE_NOW
    )
    data = vr.report.report_data
    assert verify_report_data(data, nonce=nonce, tls_spki=tls_spki, vtpm_ak=None) == 1
    return got


@pytest.mark.parametrize("tls", [False, True])
async def test_evidence_is_the_report_binding_nonce_and_tls_key(
    tpmless: Any, tmp_path: Path, tls: bool
) -> None:
    spki = _spki() if tls else b""
    app = create_app(_settings(tmp_path), node=tpmless, tls_spki=spki, tls_binding=b"\x01" * 32)
    async with _running(app, "public") as client:
        nonce = os.urandom(32)
        r = await client.post("/v1/evidence", json={"nonce": nonce.hex(), "pcrs": SEL})
        other = await client.post("/v1/evidence", json={"nonce": os.urandom(16).hex()})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == DOCUMENT_MEMBERS  # no quote, pcrs, batch or ak: there is no TPM
    assert doc["version"] == 1 and doc["node_id"] == NODE_ID
    got = _verified(doc, nonce, spki or None)
    # bound to this nonce, and to no AK: another challenge's report does not answer it
    data = parse_report(got.snp.report).report_data
    with pytest.raises(SnpCheckError):
        verify_report_data(data, nonce=nonce, tls_spki=spki or None, vtpm_ak=b"\x00\x01")
    assert other.status_code == 200
    with pytest.raises(SnpCheckError):
        verify_report_data(
            parse_report(parse_snp_only(other.json()).snp.report).report_data,
            nonce=nonce,
            tls_spki=spki or None,
            vtpm_ak=None,
        )


async def test_pcrs_and_logs_are_not_answered(tpmless: Any, tmp_path: Path) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        nonce = os.urandom(32)
        body = {"nonce": nonce.hex(), "pcrs": {"sha384": [23]}, "logs": {"runtime": {}}}
        r = await client.post("/v1/evidence", json=body)
    assert r.status_code == 200, r.text
    assert set(r.json()) == DOCUMENT_MEMBERS
    _verified(r.json(), nonce, None)


@pytest.mark.parametrize("accept", ["application/cmw+json", "application/cmw+cbor"])
async def test_cmw_record_wraps_the_snp_only_document(
    tpmless: Any, tmp_path: Path, accept: str
) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        nonce = os.urandom(32)
        r = await client.post(
            "/v1/evidence", json={"nonce": nonce.hex()}, headers={"accept": accept}
        )
    assert r.status_code == 200 and r.headers["content-type"] == accept
    record = cmw.decode(r.content)
    assert isinstance(record, cmw.Record) and record.type == cmw.EVIDENCE_MEDIA_TYPE
    _verified(json.loads(record.value), nonce, None)


@pytest.mark.parametrize("size", [8, 15])
async def test_a_nonce_report_data_cannot_carry_is_a_400(
    tpmless: Any, tmp_path: Path, size: int
) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        r = await client.post("/v1/evidence", json={"nonce": "ab" * size})
    assert r.status_code == 400
    assert "16..64 bytes" in r.json()["detail"]


async def test_identity_names_the_node_and_no_key(tpmless: Any, tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), node=tpmless, tls_binding=b"\x02" * 32)
    async with _running(app, "public") as client:
        r = await client.get("/v1/identity")
    assert r.status_code == 200
    body = r.json()
    assert body.pop("version")
    assert body == {
        "node_id": NODE_ID,
        "ak": None,
        "ek": None,
        "ek_certificates": {},
        "banks": [],
        "snp_only": True,
        "runtime_pcr": None,
        "tls_binding": "02" * 32,
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "match"),
    [
        ("POST", "/v1/enroll/activate", {"id_object": "AA==", "encrypted_secret": "AA=="}, "cred"),
        ("GET", "/v1/audit", None, "audit log"),
        ("POST", "/v1/upgrades", None, "relaunching"),
        ("GET", "/v1/upgrades", None, "relaunching"),
        ("POST", "/v1/upgrades/confirm", None, "relaunching"),
        ("POST", "/v1/registry", None, "relaunching"),
    ],
)
async def test_tpm_endpoints_answer_409_no_tpm(
    tpmless: Any, tmp_path: Path, method: str, path: str, body: Any, match: str
) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "operator") as client:
        r = await client.request(method, path, json=body)
    assert r.status_code == 409, r.text
    err = r.json()
    assert err["error"] == "NoTpmError" and "has no TPM" in err["detail"]
    assert match in err["detail"]


async def test_mutating_endpoints_still_need_an_authenticated_client(
    tpmless: Any, tmp_path: Path
) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        for path in ("/v1/upgrades", "/v1/registry", "/v1/upgrades/confirm"):
            assert (await client.post(path)).status_code == 403


async def test_ready_status_and_metrics_without_a_tpm(tpmless: Any, tmp_path: Path) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        ready = await client.get("/readyz")
        status = await client.get("/v1/status")
        metrics = await client.get("/metrics")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert status.status_code == 200 and status.json()["verdict"] == "ok"
    assert status.json()["node_id"] == NODE_ID
    assert metrics.status_code == 200 and b"attest_broker_up 1.0" in metrics.content


async def test_not_ready_while_the_broker_is_away_and_says_why(tmp_path: Path) -> None:
    away = BrokerClient(tmp_path / "absent.sock", timeout=1)
    async with _running(create_app(_settings(tmp_path), node=away), "public") as client:
        ready = await client.get("/readyz")
        r = await client.post("/v1/evidence", json={"nonce": os.urandom(32).hex()})
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert "attestd-tpm" in ready.json()["reason"]
    assert r.status_code == 503 and r.json()["error"] == "BrokerUnavailable"


async def test_without_an_snp_interface_the_answer_is_503(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    node = TpmlessNode(HostFacts(), tmp_path / "state")
    async with _running(create_app(_settings(tmp_path), node=node), "public") as client:
        r = await client.post("/v1/evidence", json={"nonce": os.urandom(32).hex()})
    assert r.status_code == 503 and r.json()["error"] == "SnpGuestError"


async def test_a_tpm_attestd_on_a_tpmless_broker_is_not_ready_and_says_why(
    tpmless: Any, tmp_path: Path
) -> None:
    settings = Settings(node_id=NODE_ID, tpm=TpmSettings(state_dir=str(tmp_path / "state")))
    async with _running(create_app(settings, node=tpmless), "public") as client:
        ready = await client.get("/readyz")
        r = await client.post("/v1/evidence", json={"nonce": os.urandom(32).hex(), "pcrs": SEL})
        ident = await client.get("/v1/identity")
    assert ready.status_code == 503 and "no TPM" in ready.json()["reason"]
    assert r.status_code == 409 and r.json()["error"] == "NoTpmError"
    assert ident.status_code == 409


async def test_an_snp_only_attestd_on_a_tpm_broker_answers_without_the_ak(
    tmp_path: Path,
) -> None:
    """[snp] only is attestd's choice: a broker with a TPM still gives the report alone."""
    from attest.testing.snp import fake_guest_dir

    guest = FakeSnpGuest.from_dir(fake_guest_dir(fake(Product.MILAN), tmp_path / "snp"))
    (tmp_path / "state").mkdir()
    node = LocalNode.open(FakeTpm(), tmp_path / "state", pcr=13, host=HostFacts(snp=guest))
    try:
        async with _running(create_app(_settings(tmp_path), node=node), "public") as client:
            nonce = os.urandom(32)
            r = await client.post("/v1/evidence", json={"nonce": nonce.hex()})
    finally:
        node.close()
    assert r.status_code == 200 and set(r.json()) == DOCUMENT_MEMBERS
    _verified(r.json(), nonce, None)


@pytest.mark.parametrize(
    "body",
    [
        {"nonce": "zz" * 32},
        {"nonce": "ab" * 65},
        {"nonce": "ab" * 32, "pcrs": {"md5": [1]}},
        {"nonce": "ab" * 32, "extra": 1},
        [],
        "x",
    ],
)
async def test_hostile_evidence_requests_are_4xx(tpmless: Any, tmp_path: Path, body: Any) -> None:
    async with _running(create_app(_settings(tmp_path), node=tpmless), "public") as client:
        r: httpx.Response = await client.post("/v1/evidence", json=body)
    assert 400 <= r.status_code < 500, r.text


def test_snp_only_implies_enabled_and_needs_a_node_id(tmp_path: Path) -> None:
    env = {"ATTEST_SNP_ONLY": "true", "ATTEST_NODE_ID": "g1"}
    settings = load_settings(None, environ=env)
    assert settings.snp.only and settings.snp.enabled
    with pytest.raises(ConfigError, match="node_id: .*no AK to name it"):
        load_settings(None, environ={"ATTEST_SNP_ONLY": "1"})
    with pytest.raises(ConfigError, match="snp.only: .*run attestd-tpm --no-tpm"):
        load_settings(None, environ={**env, "ATTEST_TPM_TCTI": "swtpm:port=2321"})
    with pytest.raises(ConfigError, match="snp.only"):
        load_settings(None, environ={**env, "ATTEST_SNP_ONLY": "maybe"})


async def test_no_endpoint_answers_5xx_in_this_mode(
    tpmless: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.routing import APIRoute

    app = create_app(_settings(tmp_path), node=tpmless)
    routes = [(m, r.path) for r in app.fastapi.routes if isinstance(r, APIRoute) for m in r.methods]
    assert ("POST", "/v1/registry") in routes and ("POST", "/v1/evidence") in routes
    bodies: list[dict[str, Any]] = [
        {},
        {"json": {}},
        {"json": {"nonce": "00" * 32, "logs": {"firmware": {"start": 10**9}}}},
        {"content": b"\xff" * 64, "headers": {"content-type": "application/json"}},
        {"params": {"start": "-1"}},
    ]
    seen: set[int] = set()
    for channel in ("public", "operator"):
        async with _running(app, channel) as client:
            for method, path in routes:
                for kw in bodies:
                    r = await client.request(method, path, **kw)
                    assert r.status_code < 500, (method, path, kw, r.text)
                    seen.add(r.status_code)
    assert {200, 403, 409, 422} <= seen
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert not tracebacks, [rec.getMessage() for rec in tracebacks]
