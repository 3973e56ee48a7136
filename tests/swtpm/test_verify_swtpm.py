"""``attest verify URL`` against the real daemons on swtpm: enrollment on first contact
(EK chain + credential activation over the operator socket), the stored enrollment on the next
contact, an AK change (the node restarted on another TPM) as an alarm, a node that is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cli import ear_main
from tests.support.cli import verify_main as main
from tests.swtpm.conftest import Node, NodeFactory, no_release_policy, verify

from attest.appraisal.ear import b64url, unb64url, verify_cwt, verify_ear
from attest.node.tpm.swtpm import SwtpmProcess, manufacture


def test_first_contact_enrolls_then_the_stored_enrollment_is_used(
    node: Node,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    code, doc = verify(capsys, node, state, ear_key[0])
    assert code == 0, (doc["explanation"], doc["notes"])
    assert doc["verdict"] == "affirming"
    assert any(n.startswith("enrolled on first contact") for n in doc["notes"])
    assert doc["enrollment"]["activated"] is True
    assert "swtpm-localca" in doc["enrollment"]["ek_certificate"]
    assert doc["claims"]["instance-identity"] == 2
    assert doc["claims"]["configuration"] == 2  # runtime log + audit chain
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert claims["submods"]["swtpm-node"]["ear.status"] == "affirming"
    # Enrolled in this run: the EAR names the EK roots the certificate was checked against.
    roots = claims["submods"]["swtpm-node"]["attest.collateral"]["ek-roots"]
    assert roots["count"] == 1 and len(roots["sha256"]) == 64

    (record_file,) = state.glob("node-*.json")
    first = json.loads(record_file.read_text())
    assert first["last_clock"] is not None

    # The second appraisal's EAR as a CWT (draft-ietf-rats-ear's CBOR serialisation), written
    # to a file that `attest ear verify` checks with the challenge nonce.
    cwt_file = tmp_path / "ear.cwt"
    code, doc = verify(
        capsys, node, state, ear_key[0], "--format", "cwt", "--ear-out", str(cwt_file)
    )
    assert code == 0, (doc["explanation"], doc["notes"])
    assert not any("enrolled" in n for n in doc["notes"])
    assert doc["ear_format"] == "cwt" and doc["ear"] == b64url(cwt_file.read_bytes())
    cwt_claims = verify_cwt(cwt_file.read_bytes(), ear_key[1].public_key())
    assert cwt_claims["submods"]["swtpm-node"]["ear.status"] == "affirming"
    assert "attest.collateral" not in cwt_claims["submods"]["swtpm-node"]  # no enrollment now
    nonce = unb64url(cwt_claims["eat_nonce"], "nonce").hex()
    assert ear_main(["verify", str(cwt_file), "--key", str(ear_key[0]), "--nonce", nonce]) == 0
    assert "submod swtpm-node: affirming" in capsys.readouterr().out
    assert ear_main(["verify", str(cwt_file), "--key", str(ear_key[0]), "--nonce", "00" * 32]) == 1
    second = json.loads(record_file.read_text())
    assert second["enrollment"] == first["enrollment"]
    assert second["last_clock"]["clock_ms"] >= first["last_clock"]["clock_ms"]


def test_ak_change_is_an_alarm_until_an_operator_re_enrolls(
    node_factory: NodeFactory,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    first = node_factory("first")
    code, doc = verify(capsys, first, state, ear_key[0])
    assert code == 0, (doc["explanation"], doc["notes"])
    enrolled = doc["enrollment"]
    first.stop()

    # The same address, now answered by a node on another TPM (its own EK, its own AK).
    other_state = manufacture(tmp_path / "other-tpm")
    sw = SwtpmProcess(other_state.state_dir).start()
    try:
        second = node_factory("second", port=first.port, tpm=(sw, other_state))
        code, doc = verify(capsys, second, state, ear_key[0])
        assert code == 11, doc
        assert doc["verdict"] == "alarm" and doc["status"] == "contraindicated"
        assert doc["explanation"].startswith("ALARM: the node presents AK")
        assert doc["enrollment"] == enrolled  # not silently replaced
        claims = verify_ear(doc["ear"], ear_key[1].public_key())
        assert claims["submods"]["swtpm-node"]["ear.status"] == "contraindicated"

        code, doc = verify(capsys, second, state, ear_key[0], "--re-enroll")
        assert code == 0, (doc["explanation"], doc["notes"])
        assert doc["re_enrollment"]["previous_ak_name"] == enrolled["ak_name"]
        assert doc["re_enrollment"]["new_ak_name"] == doc["enrollment"]["ak_name"]
        assert any("RE-ENROLLED by operator action" in n for n in doc["notes"])
    finally:
        sw.stop()


def test_node_down_could_not_appraise(
    node: Node,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    assert verify(capsys, node, state, ear_key[0])[0] == 0
    node.stop()
    code, doc = verify(capsys, node, state, ear_key[0])
    assert code == 12, doc
    assert doc["verdict"] == "could-not-appraise" and doc["status"] == "none"
    assert "node unreachable" in doc["explanation"]


def test_human_output_names_the_verdict(
    node: Node,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    base = [node.url, "--state", str(tmp_path / "v"), "--operator-socket", str(node.api_sock)]
    # Without --ek-ca the bundled vendor store is used; none of its CAs issued swtpm's EK
    # (swtpm_setup's private test CA), so, without --tofu, enrollment is refused naming it.
    assert main(base) == 11
    out = capsys.readouterr().out
    assert "enrollment refused: certificate: no EK certificate verifies" in out, out
    assert "no chain from issuer" in out and "EK roots: bundled vendor EK CA store (" in out, out
    code = main([*base, "--tofu", "--policy", no_release_policy(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("swtpm-node: AFFIRMING")
    assert "release: not identified; enrollment: activated; policy: attest/custom@" in out
    assert "instance-identity" in out and "not signed" in out
