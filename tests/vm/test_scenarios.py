"""The scenarios of issue 8 in QEMU + OVMF + swtpm, each test named after its scenario.

Order matters only for speed, and one VM runs at a time: the shared VM is booted by the first
scenario-1 test and reused by scenario 8, which swaps its TPM and closes it; scenarios 2 and 3
boot VMs of their own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from vm_harness import image as im
from vm_harness.build import STUB, NodeImage
from vm_harness.scenarios import (
    RELEASE_PCRS,
    Harness,
    appraise,
    s2_corrupt_root_fails_closed,
    s3_changed_cmdline_contraindicated,
    s8_tpm_reset_and_replacement,
)

from attest import uki

pytestmark = pytest.mark.slow


def test_uki_build_is_byte_for_byte_reproducible(node_image: NodeImage, tmp_path: Path) -> None:
    parts = uki.parse_uki(Path(node_image.uki).read_bytes())
    (tmp_path / "linux").write_bytes(parts.linux)
    (tmp_path / "initrd").write_bytes(parts.initrd or b"")
    again = im.build_uki(tmp_path / "again.efi", stub=STUB, linux=tmp_path / "linux",
                         initrd=tmp_path / "initrd", cmdline=node_image.cmdline,
                         osrel=parts.sections[".osrel"].decode())  # fmt: skip
    assert hashlib.sha256(again.read_bytes()).hexdigest() == \
        hashlib.sha256(Path(node_image.uki).read_bytes()).hexdigest()  # fmt: skip


def test_bless_puts_the_predicted_pcrs_and_verity_root_in_the_release(
    node_image: NodeImage, tmp_path: Path
) -> None:
    """`attest manifest bless` recomputes the squashfs's sha256 and dm-verity root hash (it
    refuses a mismatch with the build's) and records the UKI's predicted PCRs."""
    import json
    import shutil

    from vm_harness.cli import bless_image

    registry = tmp_path / "registry.json"
    shutil.copy(Path(__file__).parents[2] / "firmware_manifests/test/registry.json", registry)
    assert bless_image(node_image, registry=str(registry)) == 0
    release = json.loads(registry.read_text())["signed"]["releases"][node_image.version]
    assert release["artifact"]["sha256"] == node_image.root_sha256
    assert release["expected_pcrs"]["attest-vm-harness-q35"]["uki"] == node_image.expected_pcrs


def test_scenario1_predicted_pcrs_equal_the_booted_vm_quote(harness: Harness) -> None:
    """PCRs 4/9/11/12 computed offline from the UKI equal what the booted node quotes."""
    vm = harness.booted()
    v = appraise(vm, harness.image)
    predicted = uki.predict_json(Path(harness.image.uki).read_bytes())["sha256"]
    assert {i: v.pcrs[i] for i in RELEASE_PCRS} == {i: predicted[str(i)] for i in RELEASE_PCRS}


def test_scenario1_blessed_image_boots_and_attests_affirming(harness: Harness) -> None:
    vm = harness.booted()
    v = appraise(vm, harness.image)
    assert v.affirming, v.reasons
    assert v.enrollment.ek_certificate  # the EK chain to the harness CA was verified


def test_scenario8_tpm_reset_and_replacement_detected(harness: Harness) -> None:
    out = s8_tpm_reset_and_replacement(harness)
    assert out.passed, out.detail


def test_scenario2_flipped_root_block_fails_closed(harness: Harness) -> None:
    out = s2_corrupt_root_fails_closed(harness)
    assert out.passed, out.detail


def test_scenario3_changed_cmdline_names_pcr_and_change(harness: Harness) -> None:
    out = s3_changed_cmdline_contraindicated(harness)
    assert out.passed, out.detail
    assert any(r.startswith("PCR 9") and "command line" in r for r in out.data["reasons"])
