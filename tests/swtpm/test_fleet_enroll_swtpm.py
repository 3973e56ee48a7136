"""Fleet enrollment against the real daemons on swtpm (EK certificates from swtpm_setup's CA):
``attest fleet add`` and ``POST /v1/nodes`` verify the EK certificate chain to ``--ek-roots``
and run credential activation -- the code path of ``attest verify``'s first contact -- and
refuse with the failed check's name otherwise; without ``--ek-roots`` the vendor EK CA store
bundled with attest is the roots (swtpm's CA is not in it: refused), and ``--tofu`` without
``--ek-roots`` enrolls without checking the EK certificate."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from tests.swtpm.conftest import Node, NodeFactory

from attest.cli.fleet import main
from attest.node.tpm.swtpm import SwtpmProcess, manufacture
from attest.verifier.contact import load_ek_cas
from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.enrollment import Enroller, EnrollPolicy
from attest.verifier.fleet.store import SqliteStore


def other_root(path: Path) -> Path:
    """A self-signed CA that issued none of the swtpm's EK certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the TPM vendor")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def ca_dir(node: Node, tmp_path: Path) -> Path:
    d = tmp_path / "ek-cas"
    d.mkdir(exist_ok=True)
    shutil.copy(node.state.root_ca, d / "root.pem")
    shutil.copy(node.state.intermediate_ca, d / "intermediate.pem")
    return d


def test_fleet_add_verifies_the_ek_chain_and_activates(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path}/fleet.db"
    code = main(
        [
            "add",
            node.url,
            "--db",
            db,
            "--ek-roots",
            str(ca_dir(node, tmp_path)),
            "--operator-socket",
            str(node.api_sock),
            "--json",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    e = json.loads(out.out)["enrollment"]
    assert e["activated"] is True and "swtpm-localca" in e["ek_certificate"]
    assert e["ek_sha256"] is not None
    assert json.loads(out.out)["enrollment_strength"] == "ek-chain+activated"
    store = SqliteStore(f"{tmp_path}/fleet.db")
    row = store.get_node("swtpm-node")
    assert row is not None and row.enrolled and row.verdict == "none"
    assert row.enrollment == "ek-chain+activated"
    store.close()

    # Issue 14 item 6: --tofu over the activated, EK-checked enrollment is refused ...
    assert main(["add", node.url, "--db", db, "--tofu"]) != 0
    err = capsys.readouterr().err
    assert "'swtpm-node' is already enrolled" in err and "--re-enroll" in err, err
    store = SqliteStore(f"{tmp_path}/fleet.db")
    row = store.get_node("swtpm-node")
    assert row is not None and row.enrollment == "ek-chain+activated"
    store.close()
    # ... and an explicit re-enrollment is recorded, "weaker" said.
    assert main(["add", node.url, "--db", db, "--tofu", "--re-enroll"]) == 0
    assert "(WEAKER)" in capsys.readouterr().out
    store = SqliteStore(f"{tmp_path}/fleet.db")
    change = store.changes("swtpm-node")[0]
    assert change["detail"]["weaker"] is True
    assert change["detail"]["previous_enrollment"] == "ek-chain+activated"
    assert change["detail"]["new_enrollment"] == "tofu"
    store.close()

    # Roots that did not issue the EK certificate: refused, naming the check.
    code = main(
        [
            "add",
            node.url,
            "--db",
            db,
            "--id",
            "again",
            "--ek-roots",
            str(other_root(tmp_path / "other.pem")),
            "--operator-socket",
            str(node.api_sock),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "certificate" in err, err
    # Fail closed. No --ek-roots: the bundled vendor store, which needs a channel for
    # activation; with one, swtpm's EK (a private test CA) has no chain to a bundled root.
    assert main(["add", node.url, "--db", db, "--id", "x"]) == 2
    assert "credential activation" in capsys.readouterr().err
    assert (
        main(["add", node.url, "--db", db, "--id", "x", "--operator-socket", str(node.api_sock)])
        != 0
    )
    err = capsys.readouterr().err
    assert "no chain from issuer" in err and "EK roots: bundled vendor EK CA store (" in err, err
    assert (
        main(["add", node.url, "--db", db, "--id", "x", "--ek-roots", str(ca_dir(node, tmp_path))])
        == 2
    )
    assert "credential activation" in capsys.readouterr().err
    # --tofu is said in the output.
    assert main(["add", node.url, "--db", db, "--id", "tofu", "--tofu"]) == 0
    assert "NOT checked" in capsys.readouterr().out


def test_register_over_rest_refuses_with_the_check_name(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    a = node_factory("a")
    # Another TPM (its own EK and AK; node_factory's nodes share one manufactured state).
    other = manufacture(tmp_path / "other-tpm")
    sw = SwtpmProcess(other.state_dir).start()
    try:
        b = node_factory("b", tpm=(sw, other))
        _register_checks(a, b, tmp_path)
    finally:
        sw.stop()


def _register_checks(a: Node, b: Node, tmp_path: Path) -> None:
    roots, inter = load_ek_cas([a.state.root_ca, a.state.intermediate_ca])
    store = SqliteStore(str(tmp_path / "fleet.db"))

    def app(policy: EnrollPolicy) -> TestClient:
        app = create_fleet_app(store, enroll=Enroller(policy), access=Access("w" * 16))
        return TestClient(app, headers={"Authorization": "Bearer " + "w" * 16})

    good = EnrollPolicy(tuple(roots), tuple(inter), operator_socket=str(a.api_sock))
    r = app(good).post("/v1/nodes", json={"url": a.url, "node_id": "a"})
    assert r.status_code == 201, r.text
    assert r.json()["enrollment"]["activated"] is True
    assert r.json()["enrollment_strength"] == "ek-chain+activated"
    # The enrolled id again, or another TPM given it: 409, before anything is contacted.
    for body in ({"url": a.url, "node_id": "a"}, {"url": b.url, "node_id": "a"}):
        r = app(good).post("/v1/nodes", json=body)
        assert r.status_code == 409 and r.json()["check"] == "node-id-taken", r.text

    # Credential activation answered by another TPM (b's) for a's AK: the secret does not come
    # back, so a's AK is not proven to live beside the certified EK.
    swapped = EnrollPolicy(tuple(roots), tuple(inter), operator_socket=str(b.api_sock))
    r = app(swapped).post("/v1/nodes", json={"url": a.url, "node_id": "a2"})
    assert r.status_code == 422 and "(credential-activation)" in r.json()["detail"], r.text

    other, _ = load_ek_cas([other_root(tmp_path / "other.pem")])
    r = app(EnrollPolicy(tuple(other), (), operator_socket=str(a.api_sock))).post(
        "/v1/nodes", json={"url": a.url, "node_id": "a3"}
    )
    assert r.status_code == 422 and "(certificate)" in r.json()["detail"], r.text

    r = app(EnrollPolicy()).post("/v1/nodes", json={"url": a.url, "node_id": "a4"})
    assert r.status_code == 422 and "(ek-roots)" in r.json()["detail"], r.text
    r = app(EnrollPolicy(tuple(roots), tuple(inter))).post(
        "/v1/nodes", json={"url": a.url, "node_id": "a5"}
    )
    assert r.status_code == 422 and "(credential-activation)" in r.json()["detail"], r.text
    assert {n.node_id for n in store.list_nodes()} == {"a"}
    store.close()
