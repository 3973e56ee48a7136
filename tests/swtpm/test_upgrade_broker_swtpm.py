"""Upgrades in the production split, on swtpm: the unprivileged attestd spools a
``POST /v1/upgrades`` upload, the privileged attestd-tpm's gate opens it in its spool directory,
decides, records (runtime log + audit log) and writes slot B; the operator confirms through
``attest upgrade … --broker-socket`` (NV counter raised by the broker). An unblessed upload is a
409 with its reason code and writes nothing; the public listener gets 403; the decisions are in
the runtime log served with evidence, which a verifier appraises affirming (the runtime log
replays into the quoted PCR, the audit chain matches its anchors)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.upgrade import TEST_TRUST, Image, make_image, signed, snapshot
from tests.swtpm.conftest import BIN, Node, NodeFactory, appraise_contact

from attest.appraisal.claims import Verdict
from attest.errors import OperationNotAllowed
from attest.model import PcrSelection
from attest.node.broker.client import BrokerClient
from attest.node.upgrade.stager import DEFAULT_NV_INDEX
from attest.runtime import check_records
from attest.verifier.contact import enroll

PCR = 13
CAPACITY = 1 << 20


def _body(snap: bytes, image: bytes, tree: bytes = b"") -> bytes:
    return len(snap).to_bytes(8, "big") + snap + len(tree).to_bytes(8, "big") + tree + image


def _digests(d: Path) -> dict[str, str]:
    return {
        str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(d.rglob("*"))
        if f.is_file()
    }


@dataclass
class Gate:
    node: Node
    spool: Path
    slots: Path
    v1: Image
    v2: Image
    stray: Image  # a well-formed image no registry blesses
    snap: bytes
    snap_path: Path

    def post(self, image: Image, *, uds: bool = True, **params: str) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.node.api_sock)) if uds else None
        base = "http://operator" if uds else self.node.url
        with httpx.Client(transport=transport, base_url=base, timeout=120) as c:
            return c.post(
                "/v1/upgrades",
                params=params,
                content=_body(self.snap, image.path.read_bytes()),
                headers={"Content-Type": "application/vnd.attest.upgrade"},
            )

    def cli(self, *args: str) -> dict[str, Any]:
        r = subprocess.run(
            [
                str(BIN / "attest"),
                "upgrade",
                *args,
                "--json",
                "--broker-socket",
                str(self.node.broker_operator_sock),
                "--spool-dir",
                str(self.spool),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc


@pytest.fixture()
def gate(node_factory: NodeFactory, tmp_path: Path) -> Gate:
    root = tmp_path / "gate"
    spool, trust, slots = root / "spool", root / "trust", root / "slots"
    spool.mkdir(parents=True)
    spool.chmod(0o2770)  # set-group-id: uploads get the directory's group
    trust.mkdir()
    shutil.copy(TEST_TRUST / "root.json", trust / "root.json")
    images = root / "images"
    images.mkdir()
    v1 = make_image(images, "1.0.0", 1)
    v2 = make_image(images, "2.0.0", 2, blocks=80)
    stray = make_image(images, "9.9.9", 9, blocks=72)
    snap = signed(snapshot(5, [v1.release, v2.release]))
    snap_path = root / "snapshot.json"
    snap_path.write_bytes(snap)
    node = node_factory(
        "upgrade",
        broker_args=[
            "--slots-dir",
            str(slots),
            "--slot-capacity",
            str(CAPACITY),
            "--trust-dir",
            str(trust),
            "--spool-dir",
            str(spool),
        ],
        env={"ATTEST_UPGRADE_SPOOL_DIR": str(spool)},
    )
    return Gate(node, spool, slots, v1, v2, stray, snap, snap_path)


def test_broker_stages_confirms_and_records_upgrades_offered_to_attestd(gate: Gate) -> None:
    # a blessed upload over attestd's operator socket: the broker writes slot B
    r = gate.post(gate.v1)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True and r.json()["slot"] == "b"
    assert r.json()["reason"] == "upgrade" and r.json()["version"] == "1.0.0"
    size = gate.v1.release.artifact_size
    assert (gate.slots / "slot-b.img").read_bytes()[:size] == gate.v1.path.read_bytes()
    assert list(gate.spool.iterdir()) == []  # the spooled upload is gone

    # the boot loader's part and the confirmation, through the broker's operator socket
    assert gate.cli("boot")["slot"] == "b"
    assert gate.cli("confirm") == {"active": "b", "version": "1.0.0"}
    status = gate.cli("status")
    assert status["active"] == "b" and status["nv_counter"]["committed_sequence"] == 1

    # an unblessed upload: 409 with the reason code, nothing written
    before = _digests(gate.slots)
    r = gate.post(gate.stray)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "UpgradeRefused" and r.json()["check"] == "unknown-artifact"
    r = gate.post(gate.v1, version="2.0.0")  # claims to be 2.0.0: a precise refusal
    assert r.status_code == 409 and r.json()["check"] == "size-mismatch"
    assert _digests(gate.slots) == before

    # the CLI stages a file from elsewhere: it is copied into the spool directory first
    d = gate.cli("stage", str(gate.v2.path), "--snapshot", str(gate.snap_path))
    assert d["accepted"] is True and d["slot"] == "a" and d["version"] == "2.0.0"

    # a verifier appraising the node as attest verify does: the decisions are in the runtime
    # log served with evidence, which replays into the quoted runtime PCR; the audit chain
    # (fetched over the operator socket) matches its anchors
    with gate.node.client() as c, gate.node.operator() as op:
        e = enroll(c, now=datetime.now(UTC))
        done = appraise_contact(c, e, pcrs=PcrSelection.parse(f"sha256:{PCR}"), operator=op)
    assert done.result.verdict is Verdict.AFFIRMING, done.result.first_divergence
    assert done.memory.runtime is not None
    log = done.memory.runtime.log
    decisions = [
        (ev.content["accepted"], ev.content["reason"], ev.content["version"])
        for ev in log.of_kind("upgrade-decision")
    ]
    assert decisions == [
        (True, "upgrade", "1.0.0"),
        (False, "unknown-artifact", "unknown"),
        (False, "size-mismatch", "2.0.0"),
        (True, "upgrade", "2.0.0"),
    ]
    assert [
        ev.content["slot"] for ev in log.of_kind("upgrade-decision") if ev.content["accepted"]
    ] == ["b", "a"]
    assert log.of_kind("nv-counter")
    entries = done.memory.audit  # verified against the runtime log's anchors
    assert [x.service for x in entries] == [
        "upgrade.upgrade",
        "upgrade.confirm",
        "upgrade.unknown-artifact",
        "upgrade.size-mismatch",
        "upgrade.upgrade",
    ]
    assert [x.result for x in entries] == ["success", "success", "denied", "denied", "success"]


def test_public_listener_gets_403_and_nothing_is_recorded(gate: Gate) -> None:
    r = gate.post(gate.v1, uds=False)
    assert r.status_code == 403
    assert not gate.slots.exists() or not (gate.slots / "slot-b.img").exists()
    with BrokerClient(gate.node.broker_operator_sock) as broker:
        assert broker.audit_log() == ()
        events = check_records(broker.runtime_log(), pcr=PCR)
    assert "upgrade-decision" not in {ev.kind for ev in events}
    assert list(gate.spool.iterdir()) == []


def test_api_socket_of_the_broker_may_not_confirm(gate: Gate) -> None:
    with BrokerClient(gate.node.work / "run" / "tpm.sock") as api:
        with pytest.raises(OperationNotAllowed):
            api.upgrade_confirm(actor="api-operator")
        # reading the status is allowed
        assert api.upgrade_status().nv_counter.index == DEFAULT_NV_INDEX


def test_registry_push_moves_the_node_to_a_new_sequence_and_a_replay_is_refused(
    gate: Gate,
) -> None:
    """``attest registry push`` to attestd's operator socket: attestd-tpm's gate runs the
    trust refresh and persists the snapshot in its trust directory; a replayed older snapshot
    is refused (exit 5) and changes nothing; every decision is in the runtime log (served with
    evidence, appraised affirming) and in the audit log it anchors."""
    trust = gate.spool.parent / "trust"
    snap6 = gate.spool.parent / "snapshot-6.json"
    snap6.write_bytes(signed(snapshot(6, [gate.v1.release, gate.v2.release])))

    def push(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "attest"), "registry", "push", str(gate.node.api_sock), str(path)]
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120)

    r = push(gate.snap_path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["reason"], doc["previous_sequence"], doc["sequence"]) == ("registry-updated", 0, 5)
    r = push(snap6)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("node accepted registry #5 -> #6 (registry-updated)")
    assert (trust / "registry.json").read_bytes() == snap6.read_bytes()

    r = push(gate.snap_path)  # the older snapshot, replayed
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stderr.startswith("attest: refused (snapshot-rollback): registry sequence 5")
    assert (trust / "registry.json").read_bytes() == snap6.read_bytes()

    with gate.node.client() as c, gate.node.operator() as op:
        e = enroll(c, now=datetime.now(UTC))
        done = appraise_contact(c, e, pcrs=PcrSelection.parse(f"sha256:{PCR}"), operator=op)
    assert done.result.verdict is Verdict.AFFIRMING, done.result.first_divergence
    assert done.memory.runtime is not None
    decisions = [
        (ev.content["accepted"], ev.content["reason"], ev.content["sequence"])
        for ev in done.memory.runtime.log.of_kind("registry-decision")
    ]
    assert decisions == [
        (True, "registry-updated", 5),
        (True, "registry-updated", 6),
        (False, "snapshot-rollback", None),
    ]
    assert [(x.service, x.result) for x in done.memory.audit] == [
        ("registry.registry-updated", "success"),
        ("registry.registry-updated", "success"),
        ("registry.snapshot-rollback", "denied"),
    ]


def test_upgrade_push_uploads_image_and_snapshot_and_prints_the_gates_decision(
    gate: Gate,
) -> None:
    """``attest upgrade push URL IMAGE SNAPSHOT`` to attestd's operator socket: attestd spools
    the upload, attestd-tpm's gate decides and writes slot B; an unblessed image is refused with
    its reason code (exit 5) and writes nothing."""

    def push(image: Image, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "attest"), "upgrade", "push", str(gate.node.api_sock)]
        return subprocess.run(
            [*cmd, str(image.path), str(gate.snap_path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = push(gate.stray)
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stderr.startswith("attest: refused (unknown-artifact):")
    assert not (gate.slots / "slot-b.img").exists()

    r = push(gate.v1, "--json", "--progress")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["accepted"], doc["reason"], doc["version"], doc["slot"]) == (
        True,
        "upgrade",
        "1.0.0",
        "b",
    )
    assert "(100%)" in r.stderr
    size = gate.v1.release.artifact_size
    assert (gate.slots / "slot-b.img").read_bytes()[:size] == gate.v1.path.read_bytes()
