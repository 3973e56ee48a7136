"""Crash safety: the upgrade "dies" at every write / fsync / rename / NV-increment boundary of
stage -> boot -> confirm; everything is re-opened from disk as a fresh process would, and

- the node still boots a slot whose bytes verify against what the pointer records;
- the state is consistent: the pointer parses, the NV counter never claims less than the
  committed slot after the gate ran, the runtime log replays into the (fake) TPM's PCR;
- the upgrade can be completed afterwards and ends committed, with the counter at its sequence.

(A power cut, which also loses unsynced page cache, is the VM harness's job: it needs a real
kernel under the file system.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from tests.support.upgrade import (
    NOW,
    KillAt,
    Killed,
    Node,
    make_image,
    new_node,
    offer,
    signed,
    snapshot,
)

from attest.errors import UpgradeRefused
from attest.model import PcrSelection
from attest.runtime import verify_runtime_log


class Scenario:
    """Node with 1.0.0 committed; the flow under test stages 2.0.0, boots and confirms."""

    def __init__(self, tmp: Path) -> None:
        self.v1 = make_image(tmp, "1.0.0", 1, blocks=40)
        self.v2 = make_image(tmp, "2.0.0", 2, blocks=48)
        self.snap = signed(snapshot(7, [self.v1.release, self.v2.release]))
        self.node: Node = new_node(tmp / "node")
        gate, local = self.node.open()
        gate.stage(offer(self.v1, self.snap), now=NOW)
        gate.slots.boot()
        gate.confirm()
        local.runtime.close()
        local.audit.close()

    def flow(self, hook: KillAt) -> None:
        gate, local = self.node.open(hook)
        try:
            gate.stage(offer(self.v2, self.snap), now=NOW)
            gate.slots.boot()
            gate.confirm()
        finally:
            local.runtime.close()
            local.audit.close()


def _boundaries() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        s = Scenario(Path(tmp))
        hook = KillAt()
        s.flow(hook)
        return hook.seen


BOUNDARIES = _boundaries()


def test_every_kind_of_boundary_is_exercised() -> None:
    kinds = {b.split(".", 1)[1] if b.startswith("pointer.") else b for b in BOUNDARIES}
    for k in (
        "create-temp",
        "write-temp",
        "fsync-temp",
        "rename",
        "fsync-dir",
        "slot.write",
        "slot.fsync",
        "slot.truncate",
        "trust.save",
        "nv.increment",
    ):
        assert k in kinds, k
    assert BOUNDARIES.count("slot.write") >= 3  # a multi-chunk image


@pytest.mark.parametrize(
    "at", range(len(BOUNDARIES)), ids=[f"{i}-{b}" for i, b in enumerate(BOUNDARIES)]
)
def test_killed_at_every_boundary_still_boots_and_recovers(tmp_path: Path, at: int) -> None:
    s = Scenario(tmp_path)
    with pytest.raises(Killed):
        s.flow(KillAt(at))

    # --- a fresh process, a reboot ---
    gate, local = s.node.open()
    before = gate.status()
    booted = gate.boot()  # verifies the slot's bytes against the pointer; catches NV up
    assert booted.image.version in ("1.0.0", "2.0.0")
    ptr = gate.slots.load()
    assert ptr.installed is not None and gate.slots.verify_slot(ptr.active, ptr.installed)
    if ptr.pending is not None:
        image = ptr.slots[ptr.pending]
        assert image is not None and gate.slots.verify_slot(ptr.pending, image)
    # the counter never says less than what was committed before the crash, and never more
    # than the newest release that was ever committed
    nv = before["nv_counter"]["committed_sequence"]
    assert nv in (1, 2) and nv <= max(im["sequence"] for im in before["slots"].values() if im)
    assert gate.status()["nv_counter"]["committed_sequence"] == ptr.installed.sequence
    # the runtime log replays into the TPM's runtime PCR
    pcr = local.runtime.pcr
    sel = PcrSelection.parse(f"sha256:{pcr}")
    verify_runtime_log(local.runtime_log(), s.node.tpm.read_pcrs(sel), pcr=pcr)

    # --- and the upgrade can be completed ---
    if gate.slots.load().booted_unconfirmed:
        gate.confirm()
    elif gate.slots.load().installed.version != "2.0.0":  # type: ignore[union-attr]
        try:
            gate.stage(offer(s.v2, s.snap), now=NOW)
        except UpgradeRefused as exc:  # pragma: no cover - must not happen
            pytest.fail(f"cannot complete the upgrade after a crash at {BOUNDARIES[at]}: {exc}")
        gate.slots.boot()
        gate.confirm()
    gate, local = s.node.open()
    assert gate.boot().image.version == "2.0.0"
    st = gate.status()
    assert st["nv_counter"]["committed_sequence"] == 2
    assert st["slots"][st["active"]]["version"] == "2.0.0"
    with pytest.raises(UpgradeRefused) as info:  # and 1.0.0 is now a rollback
        gate.stage(offer(s.v1, s.snap), now=NOW)
    assert info.value.reason == "rollback-unauthorised"
