"""The upgrade gate inside the broker: staging through the API socket (``BrokerGate``), the
spool directory rules (no path outside it, no symbolic or hard link, the spool group), the
operator-only operations, and refusals crossing the socket as ``UpgradeRefused`` with their
reason code. A ``LocalNode`` over a fake TPM, real images and signed snapshots."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.upgrade import NOW, Image, make_image, new_node, signed, snapshot

from attest.errors import ConfigError, OperationNotAllowed, TransportError, UpgradeRefused
from attest.node.broker import protocol as p
from attest.node.broker.client import BrokerClient, BrokerGate, spool_file
from attest.node.broker.local import LocalNode
from attest.node.broker.protocol import OPS
from attest.node.broker.results import Confirmed
from attest.node.broker.server import BrokerServer
from attest.node.broker.upgrades import BrokerUpgrades, Spool
from attest.node.tpm.fake import FakeTpm
from attest.node.upgrade.slots import SlotStore
from attest.node.upgrade.stager import DEFAULT_NV_INDEX, Offer
from attest.runtime import check_records


def digest_tree(d: Path) -> dict[str, str]:
    return {
        str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(d.rglob("*"))
        if f.is_file()
    }


@dataclass
class World:
    tmp: Path
    api: Path
    op: Path
    spool: Path
    slots: Path
    local: LocalNode
    upgrades: BrokerUpgrades
    tpm: FakeTpm
    v1: Image
    v2: Image
    snap: bytes

    def gate(self) -> BrokerGate:
        return BrokerGate(self.api, spool_dir=self.spool, max_upload=1 << 20, timeout=30)

    def spooled(self, img: Image, name: str = "upload.img") -> Path:
        dst = self.spool / name
        shutil.copy(img.path, dst)
        return dst

    def stage_req(self, path: Path | str, *, actor: str = "api-operator") -> p.UpgradeStage:
        return p.UpgradeStage(str(path), self.snap, actor)

    def decisions(self) -> list[tuple[bool, str]]:
        events = check_records(self.local.runtime_log(), pcr=self.local.runtime.pcr)
        return [
            (e.content["accepted"], e.content["reason"])
            for e in events
            if e.kind == "upgrade-decision"
        ]


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    node = new_node(tmp_path / "node")
    local = LocalNode.open(node.tpm, node.root / "state")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o770)
    v1 = make_image(tmp_path, "1.0.0", 1)
    v2 = make_image(tmp_path, "2.0.0", 2, blocks=80)
    upgrades = BrokerUpgrades(
        local,
        SlotStore(node.slots_dir, capacity=1 << 20),
        node.trust_dir,
        spool=Spool(spool),
        clock=lambda: NOW,
    )
    api, op = tmp_path / "api.sock", tmp_path / "op.sock"
    server = BrokerServer(local, api, operator_socket_path=op, upgrades=upgrades).start()
    yield World(
        tmp_path,
        api,
        op,
        spool,
        node.slots_dir,
        local,
        upgrades,
        node.tpm,
        v1,
        v2,
        signed(snapshot(5, [v1.release, v2.release])),
    )
    server.shutdown()
    upgrades.close()
    local.close()


def test_api_socket_stages_a_spooled_upload_into_slot_b(w: World) -> None:
    d = w.gate().stage(Offer(w.spooled(w.v1), w.snap, actor="api-mtls"), now=NOW).to_json()
    assert d["accepted"] is True and d["reason"] == "upgrade" and d["slot"] == "b"
    written = (w.slots / "slot-b.img").read_bytes()[: w.v1.release.artifact_size]
    assert written == w.v1.path.read_bytes()
    assert w.decisions() == [(True, "upgrade")]
    entry = w.local.audit_log()[-1]
    assert entry["service"] == "upgrade.upgrade" and entry["result"] == "success"


def test_broker_gate_spools_an_image_from_elsewhere_and_removes_the_copy(w: World) -> None:
    d = w.gate().stage(Offer(w.v1.path, w.snap, actor="api-operator"), now=NOW).to_json()
    assert d["accepted"] is True
    assert list(w.spool.iterdir()) == []


def test_refusal_crosses_the_socket_with_its_reason_and_writes_nothing(w: World) -> None:
    bad = w.spooled(w.v1)
    data = bytearray(bad.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    before = digest_tree(w.slots) if w.slots.exists() else {}
    with pytest.raises(UpgradeRefused) as info:
        w.gate().stage(Offer(bad, w.snap, version="1.0.0", actor="api-mtls"), now=NOW)
    assert info.value.reason == "verity-root-mismatch"
    assert (digest_tree(w.slots) if w.slots.exists() else {}) == before
    assert not (w.slots / "slot-b.img").exists()
    assert w.decisions() == [(False, "verity-root-mismatch")]
    assert w.local.audit_log()[-1]["result"] == "denied"


@pytest.mark.parametrize("where", ["outside", "dotdot", "relative"])
def test_broker_refuses_upload_path_outside_its_spool_dir(w: World, where: str) -> None:
    outside = w.tmp / "elsewhere.img"
    shutil.copy(w.v1.path, outside)
    path = {
        "outside": str(outside),
        "dotdot": f"{w.spool}/../elsewhere.img",
        "relative": "elsewhere.img",
    }[where]
    expected = TransportError if where == "relative" else OperationNotAllowed
    with BrokerClient(w.api) as c, pytest.raises(expected):
        c.upgrade_stage(w.stage_req(path))
    assert w.decisions() == [] and not w.slots.exists()


def test_broker_refuses_a_symbolic_link_in_the_spool_dir(w: World) -> None:
    (w.spool / "link.img").symlink_to(w.v1.path)
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed, match="symbolic link"):
        c.upgrade_stage(w.stage_req(w.spool / "link.img"))
    assert w.decisions() == []


def test_broker_refuses_a_spool_dir_reached_through_a_symlinked_parent(w: World) -> None:
    """The directory is compared after resolving links: a link to the spool dir is fine, a
    link from inside it to elsewhere is not."""
    other = w.tmp / "other"
    other.mkdir()
    shutil.copy(w.v1.path, other / "x.img")
    (w.spool / "sub").symlink_to(other)
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed, match="not in the spool"):
        c.upgrade_stage(w.stage_req(w.spool / "sub" / "x.img"))


def test_broker_refuses_a_hard_link_to_another_file(w: World) -> None:
    secret = w.tmp / "audit.key"
    secret.write_bytes(b"k" * 4096)
    os.link(secret, w.spool / "key.img")
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed, match="links"):
        c.upgrade_stage(w.stage_req(w.spool / "key.img"))
    assert w.decisions() == []


def test_broker_refuses_a_file_of_another_group_or_owner(w: World) -> None:
    path = w.spooled(w.v1)
    strict = Spool(w.spool, gid=os.getgid() + 1)
    with pytest.raises(OperationNotAllowed, match="spool group"):
        strict.open(str(path))
    with pytest.raises(OperationNotAllowed, match="owner"):
        Spool(w.spool, uids={os.getuid() + 1}).open(str(path))
    os.close(Spool(w.spool, uids={os.getuid()}).open(str(path)))


def test_broker_refuses_a_directory_or_device(w: World) -> None:
    (w.spool / "d.img").mkdir()
    with pytest.raises(OperationNotAllowed, match="regular file"):
        Spool(w.spool).open(str(w.spool / "d.img"))


def test_world_writable_spool_dir_is_refused_at_start(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ConfigError):
        Spool(d)


@pytest.mark.parametrize(
    "req",
    [
        p.Request(OPS.upgrade_confirm, p.UpgradeConfirm("api-operator")),
        p.Request(OPS.upgrade_boot, None),
        p.Request(OPS.nv_counter_define, p.NvIndex(DEFAULT_NV_INDEX)),
        p.Request(OPS.nv_counter_increment, p.NvIndex(DEFAULT_NV_INDEX)),
    ],
    ids=lambda r: r.op.name,
)
def test_api_socket_cannot_confirm_boot_or_move_the_counter(
    w: World, req: p.Request[Any, Any]
) -> None:
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed):
        c.call(req.op, req.args)


def test_api_socket_cannot_act_in_an_operators_name(w: World) -> None:
    path = w.spooled(w.v1)
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed, match="api-<channel>"):
        c.upgrade_stage(w.stage_req(path, actor="root"))
    assert w.decisions() == []


def test_upload_too_large_is_recorded_by_the_broker(w: World) -> None:
    exc = w.gate().refuse_upload("upload-too-large", "ignored", actor="api-mtls")
    assert exc.reason == "upload-too-large" and str(1 << 20) in str(exc)
    assert w.decisions() == [(False, "upload-too-large")]
    assert w.local.audit_log()[-1]["service"] == "upgrade.upload-too-large"


def test_operator_socket_boots_confirms_and_raises_the_nv_counter(w: World) -> None:
    w.gate().stage(Offer(w.spooled(w.v1), w.snap, actor="api-operator"), now=NOW)
    with BrokerClient(w.op) as c:
        with pytest.raises(UpgradeRefused, match="nothing to confirm") as refused:
            c.upgrade_confirm(actor="alice")
        assert refused.value.reason == "nothing-to-confirm"
        assert c.upgrade_boot().slot == "b"
        assert c.upgrade_confirm(actor="alice") == Confirmed("b", "1.0.0")
        status = c.upgrade_status()
    assert status.pointer.active == "b" and status.nv_counter.committed_sequence == 1
    assert status.to_json() == w.upgrades.gate.status()  # the typed status says it all
    assert w.local.audit_log()[-1]["service"] == "upgrade.confirm"


def test_operator_socket_defines_and_increments_an_nv_counter(w: World) -> None:
    with BrokerClient(w.op) as c:
        v = c.nv_counter_define(0x01000B00)
        assert c.nv_counter_increment(0x01000B00) == v + 1 == c.nv_counter_read(0x01000B00)


def test_spool_file_is_group_readable_and_removed(tmp_path: Path) -> None:
    with spool_file(tmp_path, data=b"tree") as f:
        assert f.read_bytes() == b"tree" and (f.stat().st_mode & 0o777) == 0o640
    assert not f.exists()


# --- registry push (a snapshot without an image) through the broker ---------------------------


def _registry_decisions(w: World) -> list[dict[str, Any]]:
    events = check_records(w.local.runtime_log(), pcr=w.local.runtime.pcr)
    return [dict(e.content) for e in events if e.kind == "registry-decision"]


def test_registry_push_through_the_api_socket_runs_the_brokers_trust_refresh(w: World) -> None:
    from attest.errors import RegistryRefused
    from attest.storage.trusted_state import load_state

    trust = w.tmp / "node" / "trust"
    d = w.gate().refresh_registry(w.snap, actor="api-mtls", now=NOW)
    assert (d.reason, d.previous_sequence, d.sequence) == ("registry-updated", 0, 5)
    state = load_state(trust)
    assert state is not None and state.floor_sequence == 5
    older = signed(snapshot(4, [w.v1.release]))
    with pytest.raises(RegistryRefused) as info:  # crosses the socket as its own class
        w.gate().refresh_registry(older, actor="api-mtls", now=NOW)
    assert info.value.reason == "snapshot-rollback"
    assert [(e["accepted"], e["reason"]) for e in _registry_decisions(w)] == [
        (True, "registry-updated"),
        (False, "snapshot-rollback"),
    ]
    entry = w.local.audit_log()[-1]
    assert entry["service"] == "registry.snapshot-rollback" and entry["result"] == "denied"
    assert (trust / "registry.json").read_bytes() == w.snap


def test_registry_push_refused_by_the_api_is_recorded_by_the_broker(w: World) -> None:
    exc = w.gate().refuse_registry("upload-too-large", "over 10 bytes", actor="api-operator")
    assert exc.reason == "upload-too-large" and "over 10 bytes" in str(exc)
    assert _registry_decisions(w)[-1]["reason"] == "upload-too-large"
    assert w.local.audit_log()[-1]["service"] == "registry.upload-too-large"


def test_registry_push_in_an_operators_name_is_refused_on_the_api_socket(w: World) -> None:
    with BrokerClient(w.api) as c, pytest.raises(OperationNotAllowed):
        c.registry_refresh(p.RegistryPush(w.snap, "root"))
    assert _registry_decisions(w) == []
