"""``attest ear verify``: JWT and CWT EARs from files, stdin or the command line, keys as PEM,
JWK or JWK set; exit codes by the worst submodule status; refusals as the CLI's error codes."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.unit import ear_vectors as v

from attest.appraisal.ear import ear_claims, public_jwk, sign_cwt, sign_ear
from attest.cli import main

NOW = datetime(2025, 6, 1, tzinfo=UTC)
AT = "2025-06-01T00:10:00Z"
NONCE = bytes(range(16))


def _claims(*statuses: str) -> dict[str, object]:
    return ear_claims(
        {
            f"n{i}": {"ear.status": s, "ear.trustworthiness-vector": {"hardware": 2}}
            for i, s in enumerate(statuses)
        },
        now=NOW,
        nonce=NONCE,
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def pem(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    p = tmp_path / "ear.pub.pem"
    p.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return p


def _run(*argv: str | Path) -> int:
    return main(["ear", "verify", *map(str, argv)])


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (("affirming",), 0),
        (("affirming", "warning"), 10),
        (("warning", "contraindicated"), 11),
        (("affirming", "none"), 12),
    ],
)
def test_exit_code_is_the_worst_submodule(
    fmt: str,
    statuses: tuple[str, ...],
    code: int,
    tmp_path: Path,
    key: ec.EllipticCurvePrivateKey,
    pem: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    claims = _claims(*statuses)
    token = tmp_path / f"ear.{fmt}"
    token.write_bytes(
        sign_ear(claims, key).encode() + b"\n" if fmt == "jwt" else sign_cwt(claims, key)
    )
    assert _run(token, "--key", pem, "--nonce", NONCE.hex(), "--now", AT) == code
    out = capsys.readouterr().out
    assert f"EAR verified ({fmt.upper()}, ES256)" in out
    for i, s in enumerate(statuses):
        assert f"submod n{i}: {s}" in out
    assert _run(token, "--key", pem, "--now", AT, "--json") == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == fmt and doc["submods"] == {f"n{i}": s for i, s in enumerate(statuses)}
    assert doc["claims"]["eat_nonce"] == base64.urlsafe_b64encode(NONCE).rstrip(b"=").decode()


def test_jwks_picks_the_key_by_kid(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(other), public_jwk(key)]}))
    kid = public_jwk(key)["kid"]
    for token in (
        sign_ear(_claims("affirming"), key, kid=kid),
        sign_cwt(_claims("affirming"), key, kid=kid),
    ):
        path = tmp_path / "t"
        path.write_bytes(token if isinstance(token, bytes) else token.encode())
        assert _run(path, "--key", jwks, "--now", AT, "--json") == 0
        assert json.loads(capsys.readouterr().out)["kid"] == kid
    # Without a kid every key of the set is tried.
    assert _run(sign_ear(_claims("affirming"), key), "--key", jwks, "--now", AT) == 0
    # A set without the signer's key: the signature check fails.
    jwks.write_text(json.dumps({"keys": [public_jwk(other)]}))
    assert _run(sign_ear(_claims("affirming"), key), "--key", jwks, "--now", AT) == 1
    assert "signature check failed" in capsys.readouterr().err


def test_refusals(
    tmp_path: Path,
    key: ec.EllipticCurvePrivateKey,
    pem: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jwt = sign_ear(_claims("affirming"), key)
    assert _run(jwt, "--key", pem, "--now", "2025-06-01T02:00:00Z") == 1
    assert "ear-time check failed" in capsys.readouterr().err
    assert _run(jwt, "--key", pem, "--now", AT, "--nonce", "00" * 16) == 1
    assert "nonce check failed" in capsys.readouterr().err
    h, p, s = jwt.split(".")
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert _run(f"{none_alg}.{p}.{s}", "--key", pem, "--now", AT) == 1
    assert "signature check failed" in capsys.readouterr().err
    bad = tmp_path / "bad.cwt"
    bad.write_bytes(b"\xd2\x84\x40")
    assert _run(bad, "--key", pem) == 3
    assert "malformed input" in capsys.readouterr().err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    assert _run(jwt, "--key", junk) == 2
    assert _run(jwt, "--key", pem, "--nonce", "zz") == 2
    assert _run(jwt, "--key", pem, "--now", "2025-06-01") == 2
    assert _run(tmp_path / "missing", "--key", pem) == 6
    # From standard input.
    monkeypatch.setattr(
        "sys.stdin", io.TextIOWrapper(io.BytesIO(sign_cwt(_claims("warning"), key)))
    )
    assert _run("-", "--key", pem, "--now", AT) == 10


def test_other_verifiers_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkey = tmp_path / "pkey.json"
    pkey.write_text(json.dumps(v.VERAISON_PKEY))
    assert (
        _run(
            v.RUST_EAR_JWT,
            "--key",
            pkey,
            "--nonce",
            "dd61f28e77463932",
            "--now",
            "2024-01-10T17:40:00Z",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "submod PARSEC_TPM: affirming" in out and "policy: policy:PARSEC_TPM" in out
    header = json.loads(base64.urlsafe_b64decode(v.TRUSTEE_JWT.split(".")[0] + "=="))
    jwk = tmp_path / "trustee.jwk"
    jwk.write_text(json.dumps(header["jwk"]))
    assert _run(v.TRUSTEE_JWT, "--key", jwk, "--now", "2025-07-09T11:06:00Z") == 0
    out = capsys.readouterr().out
    assert "submod cpu0: affirming" in out and "another verifier's dialect" in out
    assert _run(v.TRUSTEE_JWT, "--key", jwk) == 1  # expired since July 2025
    assert "expired" in capsys.readouterr().err


def test_a_jwk_nested_past_the_parsers_limit_is_a_key_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads' RecursionError was exit 70 (here and in manifest import-corim --key)."""
    deep = tmp_path / "deep.jwk"
    deep.write_text('{"a":' * 6000 + "1" + "}" * 6000)
    assert _run(v.TRUSTEE_JWT, "--key", deep) == 2
    err = capsys.readouterr().err
    assert err == f"attest: configuration error: --key: {deep}: not JSON (a JWK or a JWK set)\n"


def test_a_token_that_is_neither_a_file_nor_a_jwt_says_both(
    pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TOKEN is a file or the JWT itself: when it is neither, the error names both (it said
    only "No such file or directory"); still an I/O error, exit 6."""
    assert _run("garbage", "--key", pem) == 6
    assert capsys.readouterr().err == (
        "attest: cannot access garbage: no such file, and not a JWT (three base64url parts "
        "and dots)\n"
    )
