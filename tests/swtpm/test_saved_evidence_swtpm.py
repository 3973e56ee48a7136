"""``attest verify URL --save-evidence FILE`` then ``attest verify URL --evidence FILE --nonce
HEX`` against the real daemons on swtpm: the saved evidence (a CMW record, RFC 9999) is
appraised offline through the same path as live verify; affirming for the nonce it answers,
contraindicated for another nonce or a changed byte of the quote (docs/cmw.md)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cli import verify_main
from tests.swtpm.conftest import Node, no_release_policy, verify

from attest import cmw
from attest.appraisal.ear import verify_ear

pytestmark = pytest.mark.slow


def offline(
    capsys: pytest.CaptureFixture[str],
    node: Node,
    state: Path,
    evidence: Path,
    *extra: str,
    nonce: str | None,
) -> tuple[int, dict[str, Any]]:
    args = [
        node.url,
        "--state",
        str(state),
        "--json",
        "--evidence",
        str(evidence),
        "--policy",
        no_release_policy(state.parent),
        *([] if nonce is None else ["--nonce", nonce]),
        *extra,
    ]
    capsys.readouterr()
    code = verify_main(args)
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def save_live(
    capsys: pytest.CaptureFixture[str], node: Node, state: Path, key: Path, saved: Path
) -> str:
    """A live, affirming ``attest verify --save-evidence``: the nonce its note names."""
    code, live = verify(capsys, node, state, key, "--save-evidence", str(saved))
    assert code == 0, (live["explanation"], live["notes"])
    (line,) = [n for n in live["notes"] if n.startswith("evidence saved to")]
    m = re.search(r"answers nonce ([0-9a-f]{64})", line)
    assert m is not None, line
    assert live["result"]["nonce"] == m.group(1)
    return m.group(1)


def test_saved_evidence_is_appraised_offline_as_live_verify_does(
    node: Node,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    saved = tmp_path / "node.cmw.json"
    nonce = save_live(capsys, node, state, ear_key[0], saved)
    record = cmw.decode(saved.read_bytes())
    assert isinstance(record, cmw.Record) and record.type == cmw.EVIDENCE_MEDIA_TYPE
    assert json.loads(saved.read_bytes())[2] == cmw.IND_EVIDENCE
    record_before = (state / next(p.name for p in state.glob("node-*.json"))).read_text()

    code, doc = offline(capsys, node, state, saved, "--ear-key", str(ear_key[0]), nonce=nonce)
    assert code == 0, (doc["explanation"], doc["notes"])
    assert doc["verdict"] == "affirming"
    assert doc["claims"]["instance-identity"] == 2
    assert any(n.startswith("offline appraisal of saved evidence (cmw+json") for n in doc["notes"])
    assert doc["result"]["nonce"] == nonce
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert claims["submods"]["swtpm-node"]["ear.status"] == "affirming"
    # stateless: the enrollment record is not touched
    assert next(state.glob("node-*.json")).read_text() == record_before

    # the same evidence in CBOR, and as the node's plain JSON answer
    as_cbor = tmp_path / "node.cmw.cbor"
    as_cbor.write_bytes(cmw.encode_cbor(record))
    plain = tmp_path / "node.json"
    plain.write_bytes(record.value)
    for path, form in ((as_cbor, "cmw+cbor"), (plain, "json")):
        code, doc = offline(capsys, node, state, path, nonce=nonce)
        assert code == 0, (form, doc["explanation"])
        assert any(f"saved evidence ({form} from" in n for n in doc["notes"])

    # another nonce: the evidence does not answer it
    code, doc = offline(capsys, node, state, saved, nonce="00" * 32)
    assert code == 11, doc
    assert doc["verdict"] == "contraindicated"
    assert "does not answer this challenge" in doc["explanation"], doc["explanation"]

    # one byte of the quote changed: the AK's signature does not verify
    evdoc = json.loads(record.value)
    attest = bytearray(base64.b64decode(evdoc["quote"]["attest"]))
    attest[-1] ^= 0x01
    evdoc["quote"]["attest"] = base64.b64encode(bytes(attest)).decode()
    tampered = tmp_path / "tampered.cmw.json"
    tampered.write_bytes(cmw.encode_json(cmw.evidence_record(json.dumps(evdoc).encode())))
    code, doc = offline(capsys, node, state, tampered, nonce=nonce)
    assert code == 11, doc
    assert doc["verdict"] == "contraindicated"
    assert "signature" in doc["explanation"].lower(), doc["explanation"]


def test_offline_appraisal_refuses_without_a_nonce_and_without_an_enrollment(
    node: Node,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    saved = tmp_path / "node.cmw.json"
    nonce = save_live(capsys, node, state, ear_key[0], saved)

    capsys.readouterr()
    code = verify_main([node.url, "--state", str(state), "--evidence", str(saved)])
    assert code == 2  # a usage error: freshness is the verifier's, not the file's
    assert "--evidence needs --nonce HEX" in capsys.readouterr().err

    code, doc = offline(capsys, node, tmp_path / "other-verifier", saved, nonce=nonce)
    assert code == 12, doc
    assert "not enrolled in this verifier's state" in doc["explanation"]

    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(["application/json", "e30", 4]))
    code, doc = offline(capsys, node, state, hostile, nonce=nonce)
    assert code == 12, doc
    assert "malformed evidence file" in doc["explanation"]
    assert "not attest evidence" in doc["explanation"]
