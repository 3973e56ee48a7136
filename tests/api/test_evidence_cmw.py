"""``POST /v1/evidence`` as a RATS CMW record (RFC 9999) by content negotiation: the same
document, wrapped; the plain document stays the answer for every other ``Accept``."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from attest import cmw
from attest.evidence import unb64, verify_evidence
from attest.model import PcrSelection
from attest.tpmstruct import parse_public

SEL = {"sha256": [0, 1, 2, 3, 4, 5, 6, 7]}


async def _evidence(client: httpx.AsyncClient, accept: str | None) -> tuple[bytes, httpx.Response]:
    nonce = os.urandom(32)
    headers = {} if accept is None else {"accept": accept}
    r = await client.post("/v1/evidence", json={"nonce": nonce.hex(), "pcrs": SEL}, headers=headers)
    assert r.status_code == 200, r.text
    return nonce, r


@pytest.mark.parametrize(
    "accept,wrap",
    [
        ("application/cmw+json", cmw.CMW_JSON),
        ("application/cmw+cbor", cmw.CMW_CBOR),
        ("application/json;q=0.5, application/cmw+cbor", cmw.CMW_CBOR),
    ],
)
async def test_cmw_record_wraps_evidence_that_verifies(
    client: httpx.AsyncClient, accept: str, wrap: str
) -> None:
    ident = (await client.get("/v1/identity")).json()
    ak = parse_public(unb64(ident["ak"]["public"], "ak"))
    nonce, r = await _evidence(client, accept)
    assert r.headers["content-type"] == wrap
    record = cmw.decode(r.content)
    assert isinstance(record, cmw.Record)
    assert record.type == cmw.EVIDENCE_MEDIA_TYPE and record.ind == cmw.IND_EVIDENCE
    if wrap == cmw.CMW_JSON:
        raw = json.loads(r.content)
        assert raw[0] == cmw.EVIDENCE_MEDIA_TYPE and raw[2] == 4 and "=" not in raw[1]
    doc = json.loads(record.value)
    ve = verify_evidence(doc, nonce=nonce, ak=ak, selection=PcrSelection.parse("sha256:0-7"))
    assert ve.evidence.node_id == "node-under-test"
    saved = cmw.read_saved_evidence(r.content)
    assert saved.layers == {"node": record.value} and not saved.is_pair


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/html", "application/json, application/cmw+json"],
)
async def test_other_accept_headers_get_the_plain_document(
    client: httpx.AsyncClient, accept: str | None
) -> None:
    _, r = await _evidence(client, accept)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["version"] == 1


async def test_openapi_names_the_cmw_forms(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    content = spec["paths"]["/v1/evidence"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", cmw.CMW_JSON, cmw.CMW_CBOR}
    assert content["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EvidenceResponse"
    }
