"""The fleet's signed attestation results: an EAR (ES256 JWT, ``attest.appraisal.ear``) per
appraisal,
signed with the service's own key (created 0600 on first start), served with its public key as
a JWK set; relying parties verify it offline with ``attest.appraisal.ear.verify_ear``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from hashlib import sha256
from pathlib import Path

import cbor2
import pytest
from fastapi.testclient import TestClient
from tests.fleet.conftest import Registry, sim_server
from tests.support.poller import settings, until, verdicts

from attest.appraisal.ear import jwk_public_key, public_jwk, verify_cwt, verify_ear, verify_token
from attest.errors import ConfigError, EvidenceFormatError, SignatureError
from attest.testing.fleet_sim import SimFleet
from attest.testing.pg import free_port
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import EAR_CWT_MEDIA_TYPE, EAR_MEDIA_TYPE, create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.poller import Poller
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.store import SqliteStore


def _flip(token: str, part: int) -> str:
    """The token with one claim changed (a part re-encoded), signature kept."""
    parts = token.split(".")
    raw = base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4))
    doc = json.loads(raw)
    if part == 1:
        for sm in doc["submods"].values():
            sm["ear.status"] = "affirming"
    parts[part] = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return ".".join(parts)


def test_key_is_created_0600_once_and_never_group_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ear.pem"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).kid == first.kid  # loaded, not replaced
    assert "PRIVATE KEY" not in caplog.text and "PRIVATE KEY" not in repr(first)
    assert "d" not in first.jwk and first.jwk["kid"] == public_jwk(jwk_public_key(first.jwk))["kid"]
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_or_create_key(path)


def test_jwk_refuses_private_and_foreign_keys(tmp_path: Path) -> None:
    jwk = load_or_create_key(tmp_path / "k.pem").jwk
    for bad in (
        {**jwk, "crv": "P-384"},
        {**jwk, "kty": "RSA"},
        {**jwk, "d": jwk["x"]},
        {**jwk, "alg": "HS256"},
        {**jwk, "y": jwk["x"]},
    ):
        with pytest.raises(EvidenceFormatError):
            jwk_public_key(bad)


async def test_every_appraisal_is_a_signed_ear_a_relying_party_verifies(
    tmp_path: Path, registry: Registry
) -> None:
    signer = load_or_create_key(tmp_path / "ear.pem")
    sim = SimFleet(3)
    with sim_server(sim) as srv:
        for i in range(3):
            srv.call(sim.set_image, i, registry.root_hash("1.0.0"))
        store = SqliteStore(str(tmp_path / "fleet.db"))
        for i in range(3):
            store.add_node(f"n{i}", srv.url(i), sim.enrollment(i), now=time.time())
        store.add_node(
            "gone", f"http://127.0.0.1:{free_port()}/", sim.enrollment(0), now=time.time()
        )
        poller = Poller(
            store,
            settings=settings(),
            appraise=default_appraiser(),
            registry=registry.state,
            signer=signer,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await until(
                lambda: (
                    verdicts(store)
                    == {
                        "n0": "affirming",
                        "n1": "affirming",
                        "n2": "affirming",
                        "gone": "unreachable",
                    }
                )
            )
            srv.call(sim.tamper, 1)
            await until(lambda: verdicts(store)["n1"] == "contraindicated")
        finally:
            stop.set()
            await task
            poller.close()

    client = TestClient(create_fleet_app(store, signer=signer, access=Access("w" * 16)))
    jwks = client.get("/v1/verifier-key")
    assert jwks.status_code == 200 and jwks.headers["content-type"] == "application/jwk-set+json"
    (jwk,) = jwks.json()["keys"]
    key = jwk_public_key(jwk)  # all a relying party needs, offline

    got = client.get("/v1/nodes/n0/ear")
    assert got.status_code == 200 and got.headers["content-type"].startswith(EAR_MEDIA_TYPE)
    claims = verify_ear(got.text, key)
    sm = claims["submods"]["n0"]
    assert sm["ear.status"] == "affirming" and sm["attest.node.port-id"] == "sim-0"
    assert sm["ear.trustworthiness-vector"]["instance-identity"] == 2
    # The exact blessed registry it was appraised against, by sequence and digest.
    reg = {
        "sequence": registry.verified.snapshot.sequence,
        "sha256": sha256(registry.verified.raw).hexdigest(),
    }
    assert sm["attest.collateral"]["registry"] == reg
    assert sm["ear.appraisal-policy-id"].endswith(
        f";registry={reg['sequence']}@sha256:{reg['sha256']}"
    )
    assert len(base64.urlsafe_b64decode(claims["eat_nonce"] + "==")) == 32  # the challenge
    header = json.loads(base64.urlsafe_b64decode(got.text.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "kid": jwk["kid"], "typ": "JWT"}
    assert client.get("/v1/nodes/n0").json()["ear"] == got.text  # in the node's JSON too

    bad = verify_ear(client.get("/v1/nodes/n1/ear").text, key)["submods"]["n1"]
    assert bad["ear.status"] == "contraindicated"
    assert "runtime log" in bad["attest.explanation"]["first_divergence"]
    gone = verify_ear(client.get("/v1/nodes/gone/ear").text, key)["submods"]["gone"]
    assert (
        gone["ear.status"] == "none"
        and "does not answer" in gone["attest.explanation"]["first_divergence"]
    )

    # Every verdict change in the history carries the EAR that made it.
    history = client.get("/v1/nodes/n1/history").json()["changes"]
    assert [c["to"] for c in history] == ["contraindicated", "affirming"]
    assert [verify_ear(c["ear"], key)["submods"]["n1"]["ear.status"] for c in history] == [
        "contraindicated",
        "affirming",
    ]

    # Tampering: a changed claim, a changed header, a foreign key, alg none.
    token = client.get("/v1/nodes/n1/ear").text
    with pytest.raises(SignatureError):
        verify_ear(_flip(token, 1), key)
    with pytest.raises(SignatureError):
        verify_ear(_flip(token, 0), key)
    with pytest.raises(SignatureError):
        verify_ear(token, jwk_public_key(load_or_create_key(tmp_path / "other.pem").jwk))
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    with pytest.raises(SignatureError):
        verify_ear(".".join([none_header, *token.split(".")[1:]]), key)

    listed = client.get("/v1/nodes").json()["nodes"]
    assert all("ear" not in n for n in listed)  # the list stays small unless asked

    # The same result as a CWT (draft-ietf-rats-ear's CBOR serialisation): the claims as signed.
    cwt = client.get("/v1/nodes/n1/ear", params={"format": "cwt"})
    assert cwt.status_code == 200 and cwt.headers["content-type"] == EAR_CWT_MEDIA_TYPE
    assert verify_cwt(cwt.content, key) == verify_ear(token, key)
    protected = cbor2.loads(cbor2.loads(cwt.content).value[0])
    assert protected == {1: -7, 4: jwk["kid"].encode()}
    assert verify_token(cwt.content, key, nonce=None)[0] == "cwt"
    assert client.get("/v1/nodes/n1/ear", params={"format": "xml"}).status_code == 422
    # Another key cannot re-sign what it did not sign; a service without a key signs nothing.
    other = load_or_create_key(tmp_path / "other.pem")
    rotated = TestClient(create_fleet_app(store, signer=other, access=Access("w" * 16)))
    assert rotated.get("/v1/nodes/n1/ear", params={"format": "cwt"}).status_code == 409
    assert rotated.get("/v1/nodes/n1/ear").text == token  # the JWT is served as stored
    unsigned = TestClient(create_fleet_app(store, signer=None, access=Access("w" * 16)))
    assert unsigned.get("/v1/nodes/n1/ear", params={"format": "cwt"}).status_code == 404
    with_ear = client.get("/v1/nodes", params={"ear": "true"}).json()["nodes"]
    assert {n["node_id"]: bool(n["ear"]) for n in with_ear} == {
        "gone": True,
        "n0": True,
        "n1": True,
        "n2": True,
    }
    assert client.get("/v1/nodes/nope/ear").status_code == 404
    unsigned = TestClient(create_fleet_app(store, access=Access("w" * 16)))
    assert unsigned.get("/v1/verifier-key").status_code == 404
    store.close()


def test_cli_ls_and_show_print_the_ear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attest.cli.fleet import main
    from attest.verifier.fleet.store import Outcome

    db = f"sqlite:///{tmp_path}/fleet.db"
    store = SqliteStore(str(tmp_path / "fleet.db"))
    store.add_node("n0", "http://127.0.0.1:1/", SimFleet(1).enrollment(0), now=100.0)
    (leased,) = store.lease("w", now=101.0, limit=1, ttl=30)
    store.complete(
        "w",
        [
            Outcome(
                "n0",
                leased.token,
                101.0,
                "affirming",
                "fine",
                None,
                None,
                None,
                {},
                "",
                0,
                111.0,
                1,
                leased.verdict,
                "h.p.s",
            )
        ],
    )
    store.close()
    assert main(["ls", "--json", "--db", db]) == 0
    (node,) = json.loads(capsys.readouterr().out)
    assert node["ear"] == "h.p.s" and node["verdict"] == "affirming"
    assert node["stale"] and node["state"] == "stale" and node["age"] > 1e9
    assert main(["show", "n0", "--json", "--db", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ear"] == "h.p.s" and doc["history"][0]["ear"] == "h.p.s"
    assert main(["show", "n0", "--db", db]) == 0
    # Appraised in 1970: its verdict is kept but never shown as current.
    assert "STALE (last affirming)" in capsys.readouterr().out
    assert main(["show", "nope", "--db", db]) == 2


async def test_ear_collateral_follows_a_replaced_registry(
    tmp_path: Path, registry: Registry
) -> None:
    """The poller hashes the registry and its platform reference for the EAR once per registry,
    not per node; a new snapshot (a new object) is named from the next appraisal on, and a
    return to the old one names the old one again."""
    from tests.support.manifest import NOW
    from tests.support.poller import SIM_PLATFORM, SIM_PLATFORMS

    from attest.appraisal.ear import collateral
    from attest.manifest import verify_snapshot
    from attest.manifest.model import Embargo
    from attest.verifier.fleet.trust import RegistryState

    world = registry.world
    newer = world.snapshot(
        7,
        releases=[
            release
            for release in registry.verified.snapshot.releases.values()
            if release.embargo != Embargo()
        ],
        platforms=SIM_PLATFORMS,
    )
    other = verify_snapshot(world.root, world.registry_bytes(newer), now=NOW)
    assert other.raw != registry.verified.raw
    signer = load_or_create_key(tmp_path / "ear.pem")
    key = jwk_public_key(signer.jwk)
    now: list[RegistryState] = [registry.state()]
    sim = SimFleet(2)
    with sim_server(sim) as srv:
        for i in range(2):
            srv.call(sim.set_image, i, registry.root_hash("1.0.0"))
        store = SqliteStore(str(tmp_path / "fleet.db"))
        for i in range(2):
            store.add_node(f"n{i}", srv.url(i), sim.enrollment(i), now=time.time())

        def named() -> set[str]:
            out = set()
            for i in range(2):
                ear = store.get_node(f"n{i}").ear
                if ear:
                    out.add(
                        verify_ear(ear, key)["submods"][f"n{i}"]["attest.collateral"]["registry"][
                            "sha256"
                        ]
                    )
            return out

        poller = Poller(
            store,
            settings=settings(),
            appraise=default_appraiser(),
            registry=lambda: now[0],
            signer=signer,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        digests = [sha256(r.raw).hexdigest() for r in (registry.verified, other)]
        try:
            for reg, digest in (
                (registry.verified, digests[0]),
                (other, digests[1]),
                (registry.verified, digests[0]),
            ):
                now[0] = RegistryState(reg, configured=True)
                await until(lambda d=digest: named() == {d})
        finally:
            stop.set()
            await task
            poller.close()
    # and what it named is what collateral() computes, platform reference included
    want = collateral(registry.verified, SIM_PLATFORM)
    ear = store.get_node("n0").ear
    assert ear is not None
    assert verify_ear(ear, key)["submods"]["n0"]["attest.collateral"] == want
    assert "platform-reference" in want
