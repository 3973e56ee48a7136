"""A host and its guest as one node, with real daemons on swtpm (no VM).

The host is attestd-tpm + attestd on swtpm A (its "hardware" TPM) with ``--vtpm-dir``: its
vTPM manager manufactures swtpm B for guest ``g1`` and vouches for it in the host's runtime
log. The guest is another attestd-tpm + attestd pair on swtpm B (node id ``g1``). Then:
both good → affirming; the guest moved to vTPM C the host never vouched for → contraindicated at
the guest layer, naming the cause; vouching C for g1 → refused, logged and audited; a host
that replays an old quote → contraindicated at the host layer as stale.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.appraisal import TEST_MANIFESTS
from tests.support.cli import verify_main, vtpm_main
from tests.support.replay import replaying
from tests.swtpm.conftest import NodeFactory, Pair, no_release_policy, verify_pair

from attest import cmw
from attest.appraisal.ear import verify_ear
from attest.appraisal.pair import guest_nonce, host_nonce
from attest.cli._common import EXIT_REFUSED
from attest.errors import OperationNotAllowed
from attest.evidence import pair_evidence_digest, unb64
from attest.node.broker.client import BrokerClient
from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, manufacture
from attest.verifier.contact import selection_for
from attest.verifier.enrollments import EnrollmentStore

pytestmark = pytest.mark.slow


@pytest.fixture()
def pair(node_factory: NodeFactory, tmp_path: Path) -> Iterator[Pair]:
    vtpm_dir = tmp_path / "host-vtpm"
    host = node_factory(
        "host", broker_args=["--vtpm-dir", str(vtpm_dir)], env={"ATTEST_NODE_ID": "host-1"}
    )
    with BrokerClient(host.broker_operator_sock, timeout=300) as c:
        created = c.vtpm_create("g1")
    assert created.recorded is True and created.vtpm.guest_id == "g1"
    state = Path(created.vtpm.state_dir)
    assert state.is_relative_to(vtpm_dir)
    sw = SwtpmProcess(state).start()
    try:
        guest = node_factory(
            "guest", tpm=(sw, SwtpmState(state, vtpm_dir / "ca")), env={"ATTEST_NODE_ID": "g1"}
        )
        yield Pair(host, vtpm_dir, guest, sw)
    finally:
        sw.stop()


def test_host_and_guest_blessed_and_vouched_is_affirming(
    pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = verify_pair(capsys, pair, tmp_path / "verifier", ear_key[0])
    assert code == 0, (doc["explanation"], doc["layers"]["guest"]["result"]["explanations"])
    assert doc["verdict"] == "affirming" and doc["failed_layer"] is None
    host, guest = doc["layers"]["host"], doc["layers"]["guest"]
    assert host["enrollment"]["activated"] and guest["enrollment"]["activated"]
    # The guest's EK certificate chains to the host's vTPM CA; the host vouched for that EK.
    assert [v["guest_id"] for v in host["vouchings"]] == ["g1"]
    assert host["vouchings"][0]["ek_sha256"] == guest["enrollment"]["ek_sha256"]
    assert doc["vouch"]["value"] == 2 and "vouched for by host-1" in doc["vouch"]["explanation"]
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert set(claims["submods"]) == {"host", "guest"}
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
    assert claims["submods"]["guest"]["attest.node.port-id"] == "g1"

    # A second pair verification uses the stored enrollments and is still affirming.
    code, doc = verify_pair(capsys, pair, tmp_path / "verifier", ear_key[0])
    assert code == 0, doc["explanation"]


def test_guest_moved_to_an_unvouched_vtpm_is_contraindicated_and_cannot_be_vouched(
    pair: Pair,
    node_factory: NodeFactory,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    assert verify_pair(capsys, pair, state, ear_key[0])[0] == 0
    pair.guest.stop()
    pair.guest_sw.stop()
    # vTPM C: same vTPM CA (so the EK chain alone would pass), never vouched for by the host.
    c = manufacture(tmp_path / "vtpm-c", ca_dir=pair.vtpm_dir / "ca")
    sw = SwtpmProcess(c.state_dir).start()
    try:
        moved = node_factory(
            "moved", port=pair.guest.port, tpm=(sw, c), env={"ATTEST_NODE_ID": "g1"}
        )
        # The verifier's enrollment of g1 is vTPM B's: an alarm at the guest layer.
        code, doc = verify_pair(capsys, pair, state, ear_key[0], guest=moved)
        assert code == 11 and doc["verdict"] == "alarm" and doc["failed_layer"] == "guest"
        # An operator re-enrolls g1 on C: its own appraisal passes, the vouching does not.
        code, doc = verify_pair(capsys, pair, state, ear_key[0], "--re-enroll", guest=moved)
        assert code == 11, doc
        assert doc["verdict"] == "contraindicated" and doc["failed_layer"] == "guest"
        assert doc["layers"]["host"]["verdict"] == "affirming"
        assert doc["explanation"].startswith("guest layer (g1): guest vTPM not vouched for")
        assert "that host-1 never vouched for" in doc["explanation"]
        claims = verify_ear(doc["ear"], ear_key[1].public_key())
        assert claims["submods"]["host"]["ear.status"] == "affirming"
        assert claims["submods"]["guest"]["ear.status"] == "contraindicated"

        # Vouching C for g1 is refused: the host did not create it (and g1 has B).
        with moved.client() as mc:
            ek_c = unb64(mc.identity()["ek"]["public"], "ek", limit=2048)
        with BrokerClient(pair.host.broker_operator_sock) as b:
            with pytest.raises(OperationNotAllowed, match="not the vTPM this host created"):
                b.vtpm_record("g1", ek_c)
            (b_entry,) = b.vtpm_list()  # the created set: g1 on B only
            assert b_entry.guest_id == "g1"
            again = b.vtpm_record("g1", b_entry.ek_public)
            assert again.recorded is False  # B is already vouched for in this boot
        ek_file = tmp_path / "ek-c.pub"
        ek_file.write_bytes(ek_c)
        capsys.readouterr()
        code = vtpm_main(
            [
                "record",
                "--guest",
                "g1",
                "--ek-public",
                str(ek_file),
                "--broker-socket",
                str(pair.host.broker_operator_sock),
            ]
        )
        assert code == EXIT_REFUSED
        assert "refused" in capsys.readouterr().err
        # ... logged by the broker and audited on the host, anchored in its runtime log.
        assert "vtpm record for guest g1 refused" in (pair.host.work / "broker.log").read_text()
        with pair.host.operator() as op:
            entries = op.audit(0)["entries"]
        assert [e["service"] for e in entries[-2:]] == ["attest-vtpm-record"] * 2
        assert {e["result"] for e in entries[-2:]} == {"denied"}
        # The API socket cannot vouch at all, not even through measure.
        with BrokerClient(pair.host.work / "run" / "tpm.sock") as api:
            with pytest.raises(OperationNotAllowed):
                api.vtpm_record("g1", ek_c)
            with pytest.raises(OperationNotAllowed):
                api.measure("vtpm", {"guest_id": "g1", "ek_sha256": "ab" * 32})
        # Still refused in the next pair verification; the host is still affirming.
        code, doc = verify_pair(capsys, pair, state, ear_key[0], guest=moved)
        assert code == 11 and doc["failed_layer"] == "guest"
    finally:
        sw.stop()


def test_host_replaying_an_old_quote_is_refused_as_stale(
    pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "verifier"
    assert verify_pair(capsys, pair, state, ear_key[0])[0] == 0
    enrollment = EnrollmentStore(state).load(pair.host.url)
    assert enrollment is not None
    with pair.host.client() as c:  # a genuine host quote, vouching for g1, of an earlier time
        old = c.evidence(
            os.urandom(32),
            selection_for(enrollment.enrollment.runtime_pcr),
            firmware_from=0,
            runtime_from=0,
        )
    with replaying(pair.host.url, old) as url:
        code, doc = verify_pair(capsys, pair, state, ear_key[0], host_url=url)
    assert code == 11, doc
    assert doc["failed_layer"] == "host" and doc["layers"]["host"]["verdict"] == "contraindicated"
    assert doc["explanation"].startswith(
        "host layer (host-1): the host's quote does not commit to this guest's evidence"
    )
    host_findings = doc["layers"]["host"]["result"]["findings"]
    assert any(
        f["check"] == "quote:nonce" and "stale or replayed" in f["explanation"]
        for f in host_findings
    )
    assert doc["layers"]["host"]["vouchings"] is None  # a stale quote vouches for nothing
    assert "no fresh vouching" in doc["vouch"]["explanation"]
    assert doc["layers"]["guest"]["verdict"] == "contraindicated"


def test_unblessed_host_with_a_blessed_guest_is_contraindicated_at_the_host_layer(
    pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The host's root file system is a dm-verity device no release of the registry blesses
    # (recorded as the broker's verity watcher would: through its operator socket).
    with BrokerClient(pair.host.broker_operator_sock) as op:
        op.measure("verity-device", {"name": "root", "root_hash": "5a" * 32})
    code, doc = verify_pair(
        capsys,
        pair,
        tmp_path / "verifier",
        ear_key[0],
        "--host-root",
        str(TEST_MANIFESTS / "root.json"),
        "--host-snapshot",
        str(TEST_MANIFESTS / "registry.json"),
    )
    assert code == 11, doc
    assert doc["failed_layer"] == "host"
    assert doc["layers"]["host"]["verdict"] == "contraindicated"
    assert doc["layers"]["host"]["claims"]["executables"] >= 96
    assert doc["explanation"].startswith("host layer (host-1): ")
    # The guest's own appraisal passes, but a host outside policy cannot vouch for it.
    guest = doc["layers"]["guest"]["result"]
    assert [f["check"] for f in guest["findings"] if f["tier"] != "affirming"] == ["host-vouch"]
    assert "a host outside policy cannot vouch" in doc["vouch"]["explanation"]
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert claims["submods"]["host"]["ear.status"] == "contraindicated"


def test_saved_pair_evidence_is_appraised_offline_as_one_cmw_collection(
    pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--save-evidence`` writes the pair as a CMW collection (``host``, ``guest``);
    ``--evidence FILE --nonce CHALLENGE`` appraises it offline: affirming for the pair's
    challenge (the host's nonce recomputed from the saved guest document), contraindicated for
    another (neither layer's nonce derives from it) and for a guest member swapped or altered:
    a fresh answer of the same guest to the same guest nonce (authentic, but not the evidence
    the host's quote committed to) names the host; an altered PCR names the guest."""
    state = tmp_path / "verifier"
    saved = tmp_path / "pair.cmw.json"
    code, live = verify_pair(capsys, pair, state, ear_key[0], "--save-evidence", str(saved))
    assert code == 0, live["explanation"]
    collection = cmw.decode(saved.read_bytes())
    assert isinstance(collection, cmw.Collection)
    assert collection.ctype == cmw.PAIR_COLLECTION_TYPE
    assert set(collection.items) == {"host", "guest"}
    assert any(f"answers nonce {live['challenge']}" in n for n in live["notes"])

    def offline(nonce: str) -> tuple[int, dict[str, Any]]:
        args = [pair.guest.url, "--host", pair.host.url, "--state", str(state), "--json"]
        args += ["--evidence", str(saved), "--nonce", nonce]
        args += ["--policy", no_release_policy(state.parent), "--ear-key", str(ear_key[0])]
        capsys.readouterr()
        code = verify_main(args)
        return code, json.loads(capsys.readouterr().out)

    code, doc = offline(live["challenge"])
    assert code == 0, doc["explanation"]
    assert doc["verdict"] == "affirming" and doc["challenge"] == live["challenge"]
    assert doc["vouch"]["value"] == 2 and "vouched for by host-1" in doc["vouch"]["explanation"]
    assert any(n.startswith("offline appraisal of saved evidence") for n in doc["notes"])
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}

    challenge = bytes.fromhex(live["challenge"])
    saved_docs = {
        str(n): json.loads(r.value)
        for n, r in collection.items.items()
        if isinstance(r, cmw.Record)
    }
    assert (
        doc["layers"]["host"]["result"]["nonce"]
        == host_nonce(challenge, pair_evidence_digest(saved_docs["guest"])).hex()
    )

    code, doc = offline(os.urandom(32).hex())
    assert code == 11, doc
    # every half fails that nonce; the guest's own quote does not answer it, so it is named
    assert doc["failed_layer"] == "guest" and "stale or replayed" in doc["explanation"]
    assert doc["layers"]["host"]["verdict"] == "contraindicated"

    def resave(guest_doc: dict[str, Any]) -> None:
        both = cmw.pair_collection(
            json.dumps(saved_docs["host"]).encode(), json.dumps(guest_doc).encode()
        )
        saved.write_bytes(cmw.encode_json(both))

    # The same guest answering the same guest nonce again: fresh and authentic, but other
    # guest evidence than the host's quote commits to.
    enrollment = EnrollmentStore(state).load(pair.guest.url)
    assert enrollment is not None
    with pair.guest.client() as c:
        second = c.evidence(
            guest_nonce(challenge),
            selection_for(enrollment.enrollment.runtime_pcr),
            firmware_from=0,
            runtime_from=0,
        )
    assert pair_evidence_digest(second) != pair_evidence_digest(saved_docs["guest"])
    resave(second)
    code, doc = offline(live["challenge"])
    assert code == 11, doc
    assert doc["failed_layer"] == "host"
    assert doc["explanation"].startswith(
        "host layer (host-1): the host's quote does not commit to this guest's evidence"
    )
    guest_findings = doc["layers"]["guest"]["result"]["findings"]
    assert [f["check"] for f in guest_findings if f["tier"] != "affirming"] == ["host-vouch"]

    # A guest PCR altered in the saved file: the guest's quote no longer signs it.
    altered = json.loads(json.dumps(saved_docs["guest"]))
    bank = altered["pcrs"]["sha256"]
    first = sorted(bank, key=int)[0]
    bank[first] = "5a" * 32
    resave(altered)
    code, doc = offline(live["challenge"])
    assert code == 11, doc
    assert doc["failed_layer"] == "guest" and doc["layers"]["guest"]["verdict"] == (
        "contraindicated"
    )

    # The untouched collection still affirms (nothing above changed what was saved for it).
    resave(saved_docs["guest"])
    assert offline(live["challenge"])[0] == 0
