"""Pure helpers of the production-shape image (vm_harness/prodnode.py) and of the
privilege-split scenario's judgement: no VM needed."""

from __future__ import annotations

import copy
from typing import Any

from vm_harness import prodnode
from vm_harness.scenarios import documented_exposure, privilege_problems

from attest.node.install import packaged


def test_broker_dropin_keeps_the_shipped_command_line_and_adds_the_slot_devices() -> None:
    shipped = packaged("attestd-tpm.service").decode()
    dropin = prodnode.broker_dropin(shipped)
    lines = dropin.splitlines()
    assert lines.count("ExecStart=") == 1  # the reset, then one ExecStart
    start = dropin.split("ExecStart=\nExecStart=", 1)[1]
    for arg in ("--tcti device:/dev/tpmrm0", "--spool-user root", "--runtime-pcr 13"):
        assert arg in start
    assert "--slot-device a=/dev/disk/by-id/virtio-slot-a" in start
    assert "--slot-device b=/dev/disk/by-id/virtio-slot-b" in start
    # Not ordered on the slot disks or attest-vm-boot: the broker opens a slot only to stage.
    assert "After=" not in dropin and "Requires=" not in dropin and "Wants=" not in dropin


def test_only_attestd_waits_for_the_vm_boot_unit() -> None:
    """attest-vm-boot writes attestd's slot file and TLS key, nothing of the broker's: the
    broker starts beside it, attestd after it."""
    before = [ln for ln in prodnode.VM_BOOT_UNIT.splitlines() if ln.startswith("Before=")]
    assert before == ["Before=attestd.service"]
    assert "After=attest-vm-boot.service" in prodnode.ATTESTD_DROPIN


def test_documented_exposure_names_both_units() -> None:
    figures = documented_exposure()
    assert set(figures) == {"attestd.service", "attestd-tpm.service"}
    assert all(0 < v < 10 for v in figures.values())


GOOD: dict[str, Any] = {
    "pid1": "systemd",
    "attestd.service": {
        "active": "active",
        "restarts": 0,
        "user": "attest",
        "process": {
            "pid": 300,
            "Uid": ["997"] * 4,
            "CapEff": ["0000000000000000"],
            "CapBnd": ["0000000000000000"],
            "tpm_visible": False,
            "tpm_fds": [],
        },
    },
    "attestd-tpm.service": {
        "active": "active",
        "restarts": 0,
        "user": "attest-tpm",
        "process": {
            "pid": 200,
            "Uid": ["998"] * 4,
            "CapEff": ["0000000000200000"],
            "CapBnd": ["0000000000200000"],
            "tpm_visible": True,
            "tpm_fds": ["/dev/tpmrm0"],
        },
    },
}
SECURE = {u: {"exposure": v} for u, v in documented_exposure().items()}


def test_privilege_problems_accepts_the_split() -> None:
    assert privilege_problems(GOOD, SECURE) == []


def test_privilege_problems_names_each_breach() -> None:
    root = copy.deepcopy(GOOD)
    root["attestd.service"]["process"]["Uid"] = ["0"] * 4
    assert any("uids" in p for p in privilege_problems(root, SECURE))
    tpm = copy.deepcopy(GOOD)
    tpm["attestd.service"]["process"]["tpm_fds"] = ["/dev/tpmrm0"]
    assert any("attestd sees the TPM" in p for p in privilege_problems(tpm, SECURE))
    caps = copy.deepcopy(GOOD)
    caps["attestd.service"]["process"]["CapBnd"] = ["0000000000200000"]
    assert any("capabilities" in p for p in privilege_problems(caps, SECURE))
    blind = copy.deepcopy(GOOD)
    blind["attestd-tpm.service"]["process"]["tpm_fds"] = []
    assert any("positive" in p or "does not see" in p for p in privilege_problems(blind, SECURE))
    script = dict(GOOD, pid1="sh")
    assert any("PID 1" in p for p in privilege_problems(script, SECURE))
    worse = {u: {"exposure": v + 0.1} for u, v in documented_exposure().items()}
    assert len(privilege_problems(GOOD, worse)) == 2
