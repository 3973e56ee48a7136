"""attestd in an SEV-SNP guest (``[snp] enabled``): each challenge's evidence carries an ``snp``
member whose report, asked for through the node port (attestd-tpm's ``snp_report``; here a
LocalNode with the fake guest), binds the nonce and the AK; without an interface, or for a nonce
REPORT_DATA cannot carry, the answer is a clear error, never a document without the report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import _running
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest.evidence import parse_evidence, snp_of, unb64, verify_evidence
from attest.model import PcrSelection
from attest.node.api.app import create_app
from attest.node.broker.host import HostFacts
from attest.node.config import Settings, SnpSettings, TpmSettings
from attest.node.snp_guest import FakeSnpGuest
from attest.node.tpm.fake import FakeTpm
from attest.snp.certtable import chain_of, parse_cert_table
from attest.snp.report import Product, parse_report
from attest.snp.reportdata import verify_report_data
from attest.snp.verify import SnpVerifier
from attest.testing.snp import fake_guest_dir
from attest.tpmstruct import parse_public

SEL = {"sha256": [0, 1, 2, 3, 4, 5, 6, 7]}


def _node(tmp_path: Path, snp: FakeSnpGuest | None) -> Any:
    from attest.node.broker.local import LocalNode

    (tmp_path / "state").mkdir(exist_ok=True)
    return LocalNode.open(FakeTpm(), tmp_path / "state", pcr=13, host=HostFacts(snp=snp))


def _app(tmp_path: Path, node: Any) -> Any:
    settings = Settings(
        node_id="snp-guest",
        tpm=TpmSettings(state_dir=str(tmp_path / "state")),
        snp=SnpSettings(enabled=True),
    ).validate()
    return create_app(settings, node=node)


@pytest.fixture()
def guest_node(tmp_path: Path) -> Iterator[Any]:
    guest = FakeSnpGuest.from_dir(fake_guest_dir(fake(Product.MILAN), tmp_path / "snp"))
    n = _node(tmp_path, guest)
    yield n
    n.close()


async def test_evidence_carries_a_report_binding_nonce_and_ak(
    guest_node: Any, tmp_path: Path
) -> None:
    amd = fake(Product.MILAN)
    async with _running(_app(tmp_path, guest_node), "public") as client:
        ident = (await client.get("/v1/identity")).json()
        nonce = os.urandom(32)
        r = await client.post("/v1/evidence", json={"nonce": nonce.hex(), "pcrs": SEL})
    assert r.status_code == 200, r.text
    doc = r.json()
    ak_public = unb64(ident["ak"]["public"], "ak")
    verify_evidence(
        doc, nonce=nonce, ak=parse_public(ak_public), selection=PcrSelection.parse("sha256:0-7")
    )
    member = snp_of(doc)
    assert member is not None and member.certs is not None and member.tls_spki is None
    signer = parse_report(member.report).signer
    leaf, chain = chain_of(parse_cert_table(member.certs), signer)
    vr = SnpVerifier(pins=amd.pins).verify(
        member.report, leaf=leaf, intermediates=chain, now=FAKE_NOW
    )
    data = vr.report.report_data
    assert verify_report_data(data, nonce=nonce, tls_spki=None, vtpm_ak=ak_public) == 1
    assert parse_evidence(doc).tls_binding == b""


async def test_without_an_interface_the_answer_is_503_not_a_bare_document(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path, None)
    try:
        async with _running(_app(tmp_path, node), "public") as client:
            r = await client.post("/v1/evidence", json={"nonce": "ab" * 32, "pcrs": SEL})
    finally:
        node.close()
    assert r.status_code == 503
    assert r.json()["error"] == "SnpGuestError"
    assert "no --snp-guest interface" in r.json()["detail"]


async def test_a_nonce_report_data_cannot_carry_is_a_400(guest_node: Any, tmp_path: Path) -> None:
    async with _running(_app(tmp_path, guest_node), "public") as client:
        r: httpx.Response = await client.post("/v1/evidence", json={"nonce": "ab" * 8, "pcrs": SEL})
    assert r.status_code == 400
    assert "16..64 bytes" in r.json()["detail"]
