"""`attest manifest ...` end to end, in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest import cose
from attest.cli import main
from attest.manifest.corim_parse import parse_corim

COMMIT = "ab" * 20


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["manifest", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, kind in [
        ("r1", "ed25519"),
        ("r2", "ecdsa-p256"),
        ("l1", "ed25519"),
        ("l2", "ecdsa-p256"),
        ("p1", "ed25519"),
    ]:
        assert run(capsys, "keygen", "--type", kind, "--out", name)[0] == 0
    rc, out, _ = run(
        capsys,
        "init",
        "--out",
        "root.json",
        "--registry-out",
        "reg.json",
        "--root-key",
        "r1.pub.json",
        "--root-key",
        "r2.pub.json",
        "--root-threshold",
        "2",
        "--releases-key",
        "l1.pub.json",
        "--releases-key",
        "l2.pem",
        "--releases-threshold",
        "2",
        "--platform-key",
        "p1.pub.json",
        "--now",
        "2025-01-01T00:00:00Z",
        "--expires",
        "2030-01-01T00:00:00Z",
    )
    assert rc == 0, out
    for k in ("r1", "r2"):
        assert run(capsys, "sign", "root.json", "--key", f"{k}.pem")[0] == 0
    (tmp_path / "img").write_bytes(os.urandom(4096 * 9))
    return tmp_path


def test_keygen_init_bless_sign_verify_show(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(
        capsys,
        "bless",
        "img",
        "--version",
        "1.0.0",
        "--commit",
        COMMIT,
        "--registry",
        "reg.json",
        "--now",
        "2025-01-02T00:00:00Z",
    )
    assert rc == 0, err
    rc, _, err = run(
        capsys,
        "verify",
        "--root",
        "root.json",
        "--registry",
        "reg.json",
        "--now",
        "2025-01-03T00:00:00Z",
    )
    assert rc == 1 and err.count("\n") == 1 and "threshold" in err and "0 valid" in err
    for k in ("l1", "l2"):
        assert run(capsys, "sign", "reg.json", "--key", f"{k}.pem")[0] == 0
    rc, out, err = run(
        capsys,
        "verify",
        "--root",
        "root.json",
        "--registry",
        "reg.json",
        "--now",
        "2025-01-03T00:00:00Z",
        "--json",
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert (
        doc["ok"] and doc["registry"]["sequence"] == 1 and doc["registry"]["releases"] == ["1.0.0"]
    )
    rc, out, _ = run(
        capsys, "show", "reg.json", "--root", "root.json", "--now", "2025-01-03T00:00:00Z"
    )
    assert rc == 0 and "1.0.0" in out and "verified" in out and COMMIT in out
    sha = __import__("hashlib").sha256((setup / "img").read_bytes()).hexdigest()
    assert sha in out
    rc, out, _ = run(
        capsys,
        "evaluate",
        "--root",
        "root.json",
        "--registry",
        "reg.json",
        "--artifact-sha256",
        sha,
        "--now",
        "2025-01-03T00:00:00Z",
    )
    assert rc == 0 and out.startswith("blessed")
    # Expired at a later --now: one clear line, exit 1.
    rc, _, err = run(
        capsys,
        "verify",
        "--root",
        "root.json",
        "--registry",
        "reg.json",
        "--now",
        "2031-01-01T00:00:00Z",
    )
    assert rc == 1 and "expired" in err and err.count("\n") == 1


def test_cli_state_refuses_rollback_and_embargo_workflow(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = ["--registry", "reg.json", "--now", "2025-01-02T00:00:00Z"]
    assert run(capsys, "bless", "img", "--version", "1.0.0", "--embargo", *reg)[0] == 0
    for k in ("l1", "l2"):
        run(capsys, "sign", "reg.json", "--key", f"{k}.pem")
    first = (setup / "reg.json").read_bytes()
    verify = [
        "verify",
        "--root",
        "root.json",
        "--registry",
        "reg.json",
        "--state",
        "st",
        "--now",
        "2025-01-03T00:00:00Z",
    ]
    assert run(capsys, *verify)[0] == 0
    # Editing a signed registry starts draft #2.
    rc, out, _ = run(capsys, "fleet-complete", "1.0.0", "--at", "2025-01-01T00:00:00Z", *reg)
    assert rc == 0 and "#2" in out
    for k in ("l1", "l2"):
        run(capsys, "sign", "reg.json", "--key", f"{k}.pem")
    assert run(capsys, *verify)[0] == 0
    rc, out, _ = run(capsys, "show", "reg.json", "--now", "2025-01-20T00:00:00Z")
    assert "OVERDUE" in out and "2025-01-11T00:00:00Z" in out and "UNVERIFIED" in out
    (setup / "reg.json").write_bytes(first)
    rc, _, err = run(capsys, *verify)
    assert rc == 1 and "rollback" in err and "lower" in err


def test_cli_revoke_and_allow_rollback(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ["--registry", "reg.json", "--now", "2025-01-02T00:00:00Z"]
    (setup / "img2").write_bytes(os.urandom(4096 * 2))
    assert run(capsys, "bless", "img", "--version", "1.0.0", "--commit", COMMIT, *reg)[0] == 0
    assert run(capsys, "bless", "img2", "--version", "1.1.0", "--commit", COMMIT, *reg)[0] == 0
    assert run(capsys, "revoke", "1.1.0", "--reason", "CVE-1", *reg)[0] == 0
    assert run(capsys, "allow-rollback", "1.1.0", "1.0.0", "--reason", "CVE-1", *reg)[0] == 0
    rc, _, err = run(capsys, "revoke", "9.9", "--reason", "x", *reg)
    assert rc == 3 and "no release 9.9" in err
    rc, out, _ = run(capsys, "show", "reg.json")
    assert "REVOKED" in out and "1.1.0 -> 1.0.0" in out


def test_cli_bless_refuses_partial_block_image_and_wrong_expected_hash(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (setup / "odd").write_bytes(b"x" * 5000)
    rc, _, err = run(
        capsys, "bless", "odd", "--version", "1", "--commit", COMMIT, "--registry", "reg.json"
    )
    assert rc == 3 and "multiple" in err
    rc, _, err = run(
        capsys,
        "bless",
        "img",
        "--version",
        "1",
        "--commit",
        COMMIT,
        "--registry",
        "reg.json",
        "--salt",
        "00",
        "--expect-root-hash",
        "00" * 32,
    )
    assert rc == 3 and "differs" in err


def test_cli_root_rotation(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "keygen", "--out", "r3")
    rc, _, err = run(
        capsys,
        "init",
        "--out",
        "root2.json",
        "--previous",
        "root.json",
        "--root-key",
        "r2.pub.json",
        "--root-key",
        "r3.pub.json",
        "--root-threshold",
        "2",
        "--expires",
        "2030-01-01T00:00:00Z",
    )
    assert rc == 0, err
    for k in ("r2", "r3"):
        run(capsys, "sign", "root2.json", "--key", f"{k}.pem")
    rc, _, err = run(
        capsys,
        "verify",
        "--root",
        "root2.json",
        "--trusted-root",
        "root.json",
        "--now",
        "2025-02-01T00:00:00Z",
    )
    assert rc == 1 and "threshold" in err  # only 1 of 2 old root keys signed
    run(capsys, "sign", "root2.json", "--key", "r1.pem")
    rc, out, err = run(
        capsys,
        "verify",
        "--root",
        "root2.json",
        "--trusted-root",
        "root.json",
        "--now",
        "2025-02-01T00:00:00Z",
    )
    assert rc == 0 and "root v2" in out, err


def test_cli_refuses_non_canonical_file(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads((setup / "root.json").read_bytes())
    (setup / "root.json").write_text(json.dumps(doc, indent=2))
    rc, _, err = run(capsys, "verify", "--root", "root.json", "--now", "2025-02-01T00:00:00Z")
    assert rc == 3 and "canonical" in err and err.count("\n") == 1


def test_keygen_makes_a_private_key_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "keygen", "--out", str(tmp_path / "keys" / "rel-1"))
    assert rc == 0 and out.endswith(f"{tmp_path}/keys/rel-1.pub.json\n")
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / "rel-1.pem").stat().st_mode & 0o777 == 0o600


def test_a_write_into_a_missing_directory_names_the_file_not_a_temporary_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", "--out", str(tmp_path / "k"))
    missing = tmp_path / "no" / "root.json"
    key = str(tmp_path / "k.pub.json")
    roles = ["--root-key", key, "--releases-key", key, "--platform-key", key]
    rc, _, err = run(capsys, "init", "--out", str(missing), *roles)
    assert rc == 6
    why = f"its directory {missing.parent} does not exist"
    assert err == f"attest: cannot access {missing}: {why}\n"


def _vendor_corim(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A firmware vendor's signed CoRIM: PCRs 0-7 of one platform (sha-256), and PCR 8."""
    registers = {i: [[1, bytes([i]) * 32]] for i in range(9)}
    comid = {
        1: {0: "acme-fw-2.1"},
        4: {0: [[{0: {1: "ACME", 2: "RoadRunner"}}, [{1: {14: registers}}]]]},
    }
    corim = cbor2.CBORTag(501, {0: "acme-fw", 1: [cbor2.CBORTag(506, cbor2.dumps(comid))]})
    meta = cbor2.dumps({0: {0: "ACME firmware signing"}})
    protected = cose.encode_protected({1: -7, 3: "application/rim+cbor", 8: meta})
    return cose.sign1(cbor2.dumps(corim), key, protected=protected)


def test_corim_export_and_an_import_trusted_only_once_the_platform_role_signs(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = ["--now", "2025-01-03T00:00:00Z"]
    rc, _, err = run(
        capsys,
        "bless",
        "img",
        "--version",
        "1.0.0",
        "--commit",
        COMMIT,
        "--registry",
        "reg.json",
        *now,
    )
    assert rc == 0, err
    for k in ("l1", "l2"):
        assert run(capsys, "sign", "reg.json", "--key", f"{k}.pem")[0] == 0
    assert run(capsys, "keygen", "--type", "ecdsa-p256", "--out", "corim")[0] == 0
    export = ["export-corim", "--root", "root.json", "--snapshot", "reg.json", "--key", "corim.pem"]
    rc, out, err = run(capsys, *export, "--out", "reg.corim", *now, "--json")
    assert rc == 0, err
    assert json.loads(out)["releases"] == ["1.0.0"]
    assert parse_corim((setup / "reg.corim").read_bytes()).corim_id == "attest-registry-1"
    # A vendor's signed CoRIM, read with the vendor's key into an unsigned platform reference.
    vendor = ec.generate_private_key(ec.SECP256R1())
    (setup / "vendor.corim").write_bytes(_vendor_corim(vendor))
    pub = vendor.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (setup / "vendor.pub.pem").write_bytes(pub)
    imp = ["import-corim", "vendor.corim", "--platform-id", "acme-rr", "--out", "ref.json"]
    rc, out, err = run(capsys, *imp, "--key", "vendor.pub.pem", *now)
    assert rc == 0, err
    assert "signature verified" in out and "not trusted yet" in out
    assert "left out: register 8: not a platform firmware PCR (0-7)" in out
    rc, out, err = run(capsys, *imp, "--key", "vendor.pub.pem", *now, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["signature_checked"] and doc["signer"] == "ACME firmware signing"
    assert doc["trusted"] is False and doc["source"].startswith("acme-fw-2.1: vendor=ACME")
    ref = json.loads((setup / "ref.json").read_text())
    assert ref["pcrs"] == {"sha256": {str(i): (bytes([i]) * 32).hex() for i in range(8)}}
    # Signed by another key, or tampered: refused (exit 1, one line).
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (setup / "other.pem").write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rc, _, err = run(capsys, *imp, "--key", "other.pem", *now)
    assert rc == 1 and "signature" in err and err.count("\n") == 1
    # In a registry, the imported reference is not trusted until the platform role signs it:
    # the releases threshold alone does not make the registry verify.
    verify = ["verify", "--root", "root.json", "--registry", "reg.json", *now]
    assert run(capsys, "platform-set", "--registry", "reg.json", "--ref", "ref.json", *now)[0] == 0
    for k in ("l1", "l2"):
        assert run(capsys, "sign", "reg.json", "--key", f"{k}.pem")[0] == 0
    rc, _, err = run(capsys, *verify)
    assert rc == 1 and "platform reference acme-rr" in err and "threshold" in err, err
    # The next draft, the platform role's signature, then the releases threshold: trusted.
    assert run(capsys, "platform-set", "--registry", "reg.json", "--ref", "ref.json", *now)[0] == 0
    assert run(capsys, "sign", "reg.json", "--key", "p1.pem", "--platform", "acme-rr")[0] == 0
    for k in ("l1", "l2"):
        assert run(capsys, "sign", "reg.json", "--key", f"{k}.pem")[0] == 0
    rc, out, err = run(capsys, *verify)
    assert rc == 0, err
    # And the platform reference is exported with the registry's reference values.
    assert run(capsys, *export, "--out", "reg3.corim", *now)[0] == 0
    values = parse_corim((setup / "reg3.corim").read_bytes()).values
    (plat,) = [v for v in values if v.tag_id == "attest:platform:acme-rr"]
    assert plat.registers == {i: ((1, bytes([i]) * 32),) for i in range(8)}
    # From a verifier's trusted state, too.
    assert (
        run(
            capsys,
            "verify",
            "--state",
            "trust",
            "--root",
            "root.json",
            "--registry",
            "reg.json",
            *now,
        )[0]
        == 0
    )
    rc, out, err = run(
        capsys,
        "export-corim",
        "--trust-dir",
        "trust",
        "--key",
        "corim.pem",
        "--out",
        "t.corim",
        *now,
        "--json",
    )
    assert rc == 0 and json.loads(out)["platforms"] == ["acme-rr"], err
