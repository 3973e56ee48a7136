"""The scenarios of issue 8 in QEMU + OVMF + swtpm, each test named after its scenario.

Order matters only for speed, and one VM runs at a time: the shared VM is booted by the first
scenario-1 test and reused by the upgrade scenarios 4-7 (each also runs on its own: it brings
the node to the release it needs) and by scenario 8, which swaps its TPM and closes it;
scenarios 2 and 3 boot VMs of their own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from vm_harness import image as im
from vm_harness.build import STUB, NodeImage
from vm_harness.harness import Harness
from vm_harness.orchestrator import bless_image
from vm_harness.scenarios import (
    s1_blessed_boot_affirming,
    s2_corrupt_root_fails_closed,
    s3_changed_cmdline_contraindicated,
    s8_tpm_reset_and_replacement,
    s9_privilege_split,
)
from vm_harness.upgrade_scenarios import (
    NEW,
    OLD,
    s4_unblessed_upgrade_refused,
    s5_blessed_upgrade,
    s6_rollback,
    s7_power_cut_mid_write,
)
from vm_harness.verifier import RELEASE_PCRS

from attest import uki

pytestmark = pytest.mark.slow


def test_uki_build_is_byte_for_byte_reproducible(node_image: NodeImage, tmp_path: Path) -> None:
    parts = uki.parse_uki(Path(node_image.uki).read_bytes())
    (tmp_path / "linux").write_bytes(parts.linux)
    (tmp_path / "initrd").write_bytes(parts.initrd or b"")
    again = im.build_uki(
        tmp_path / "again.efi",
        stub=STUB,
        linux=tmp_path / "linux",
        initrd=tmp_path / "initrd",
        cmdline=node_image.cmdline,
        osrel=parts.sections[".osrel"].decode(),
    )
    assert (
        hashlib.sha256(again.read_bytes()).hexdigest()
        == hashlib.sha256(Path(node_image.uki).read_bytes()).hexdigest()
    )


def test_bless_puts_the_predicted_pcrs_and_verity_root_in_the_release(
    node_image: NodeImage, tmp_path: Path
) -> None:
    """`attest manifest bless` recomputes the squashfs's sha256 and dm-verity root hash (it
    refuses a mismatch with the build's) and records the UKI's predicted PCRs."""
    import json
    import shutil

    registry = tmp_path / "registry.json"
    shutil.copy(Path(__file__).parents[2] / "firmware_manifests/test/registry.json", registry)
    assert bless_image(node_image, registry=str(registry)) == 0
    release = json.loads(registry.read_text())["signed"]["releases"][node_image.version]
    assert release["artifact"]["sha256"] == node_image.root_sha256
    assert release["expected_pcrs"]["attest-vm-harness-q35"]["uki"] == node_image.expected_pcrs


def test_releases_share_the_uki_pcrs_and_differ_in_the_root_hash_pcr(harness: Harness) -> None:
    """The UKI names no release (both slots boot it): 1.0.0 and 1.1.0 predict the same PCRs
    4/9/11/12; PCR 15 (the initramfs's measurement of the slot's root hash) tells them apart."""
    old, new = harness.image, harness.release(NEW)
    assert Path(old.uki).read_bytes() == Path(new.uki).read_bytes()
    assert old.verity_root_hash != new.verity_root_hash
    a, b = old.expected_pcrs["sha256"], new.expected_pcrs["sha256"]
    assert {k: a[k] for k in ("4", "9", "11", "12")} == {k: b[k] for k in ("4", "9", "11", "12")}
    assert a["15"] != b["15"] and a["15"] == im.pcr15(old.verity_root_hash)


def test_scenario1_predicted_pcrs_equal_the_booted_vm_quote(harness: Harness) -> None:
    """PCRs 4/9/11/12 computed offline from the UKI, and 15 from the release's root hash,
    equal what the booted node quotes, in a quote the appraisal affirms as the release."""
    vm = harness.booted()
    att = harness.attest(vm)
    assert att.affirming_as(harness.image.version), att.summary()
    assert att.ear["submods"][att.result.node_id]["ear.status"] == "affirming"
    predicted = uki.predict_json(Path(harness.image.uki).read_bytes())["sha256"]
    predicted["15"] = im.pcr15(harness.image.verity_root_hash)
    assert {i: att.quoted[i].hex() for i in RELEASE_PCRS} == {
        i: predicted[str(i)] for i in RELEASE_PCRS
    }


def test_scenario1_blessed_image_attests_affirming_through_attest_verify(
    harness: Harness,
) -> None:
    """`attest verify` as an orchestrator runs it (subprocess; a registry made with `attest
    manifest` blessing the release's expected PCRs 4/9/11/12/15 and the platform's 0-2; EK
    chain to the harness CA; credential activation over the node's mutual-TLS listener):
    exit 0 affirming as the release, the stored enrollment re-used on the second run, exit 11
    naming the revocation against the next snapshot, which revokes the release."""
    out = s1_blessed_boot_affirming(harness)
    assert out.passed, out.detail
    print(f"scenario 1 ({im.node_shape()} shape): {out.detail}")  # boot times (pytest -rP)
    cli = out.data["cli"]
    first, second, revoked = cli["first"], cli["second"], cli["revoked"]
    assert first["code"] == 0 and first["doc"]["verdict"] == "affirming"
    assert first["doc"]["result"]["release"]["version"] == harness.image.version
    assert first["doc"]["enrollment"]["activated"] is True
    assert first["doc"]["enrollment"]["ek_certificate"]  # the EK chain to the harness CA
    node = first["doc"]["result"]["node_id"]
    assert first["ear"]["submods"][node]["ear.status"] == "affirming"
    assert second["code"] == 0 and second["doc"]["verdict"] == "affirming"
    assert not any("enrolled" in n for n in second["doc"]["notes"])
    assert second["doc"]["enrollment"] == first["doc"]["enrollment"]
    assert revoked["code"] == 11 and revoked["doc"]["verdict"] == "contraindicated"
    assert f"release {harness.image.version} was revoked" in revoked["doc"]["explanation"]
    assert out.data["in_process"]["status"] == "affirming"
    assert out.data["in_process"]["release"] == harness.image.version
    assert {i: out.data["pcrs"][i] for i in RELEASE_PCRS} == {
        i: harness.image.expected_pcrs["sha256"][str(i)] for i in RELEASE_PCRS
    }


def test_scenario4_unblessed_upgrade_is_refused_and_nothing_written(harness: Harness) -> None:
    out = s4_unblessed_upgrade_refused(harness)
    assert out.passed, out.detail
    assert "unknown-artifact" in out.detail


def test_scenario5_blessed_upgrade_reboots_into_slot_b_attests_and_confirms(
    harness: Harness,
) -> None:
    out = s5_blessed_upgrade(harness)
    assert out.passed, out.detail
    assert harness.running == NEW
    assert f"attests affirming as {NEW}" in out.detail


def test_scenario5_the_upgraded_node_is_not_the_old_release(harness: Harness) -> None:
    """After scenario 5 the node runs 1.1.0: affirming as 1.1.0 against a registry blessing
    both releases; against one blessing only 1.0.0, contraindicated by its dm-verity root
    hash, no release named."""
    assert harness.running == NEW
    vm = harness.booted()
    both = harness.attest(vm)
    assert both.affirming_as(NEW), both.summary()
    old_only = harness.attest(vm, enrollment=both.enrollment, versions=[OLD])
    assert old_only.status == "contraindicated" and old_only.release is None
    assert "verity" in old_only.failed_checks, old_only.summary()


def test_scenario6_rollback_refused_then_authorised(harness: Harness) -> None:
    out = s6_rollback(harness)
    assert out.passed, out.detail
    assert "rollback-unauthorised" in out.detail
    assert harness.running == OLD and f"attests affirming as {OLD}" in out.detail


def test_scenario7_power_cut_mid_write_boots_the_old_slot(harness: Harness) -> None:
    running = harness.running
    out = s7_power_cut_mid_write(harness)
    assert out.passed, out.detail
    assert f"attests affirming as {running}" in out.detail


def test_scenario8_tpm_reset_and_replacement_detected(harness: Harness) -> None:
    out = s8_tpm_reset_and_replacement(harness)
    assert out.passed, out.detail


def test_scenario2_flipped_root_block_fails_closed(harness: Harness) -> None:
    out = s2_corrupt_root_fails_closed(harness)
    assert out.passed, out.detail


def test_scenario3_changed_cmdline_names_pcr_and_change(harness: Harness) -> None:
    out = s3_changed_cmdline_contraindicated(harness)
    assert out.passed, out.detail
    assert out.data["status"] == "contraindicated"
    assert any(f.startswith("PCR 9") and "command line" in f for f in out.data["findings"])
    # the harness's observation: the first measurement that differs from the prediction
    assert any(
        e.startswith("PCR 9") and "LoadOptions (kernel command line)" in e
        for e in out.data["explained"]
    )


def test_scenario9_privilege_split_under_systemd(harness: Harness) -> None:
    """systemd is PID 1, attestd runs unprivileged without the TPM, attestd-tpm with it, the
    units' exposure in the guest is at most the documented one, and a killed broker is
    restarted by systemd: /readyz false, then true, and the node attests again."""
    if im.node_shape() != "systemd":
        pytest.skip(f"{im.NODE_SHAPE_ENV}={im.node_shape()}: the script init has no split")
    out = s9_privilege_split(harness)
    print(f"scenario 9: {out.detail}")  # the figures seen in the guest (pytest -rP)
    assert out.passed, out.detail
    api = out.data["facts"]["attestd.service"]["process"]
    assert "0" not in api["Uid"] and api["tpm_visible"] is False and api["tpm_fds"] == []
    assert out.data["after"]["attestd-tpm.service"]["restarts"] >= 1


MEASURE = Path("/usr/lib/systemd/systemd-measure")


def _measure(parts: Path, phase: str) -> str:
    import json
    import subprocess

    out = subprocess.run(
        [
            str(MEASURE),
            "calculate",
            *(f"--{n}={parts / n}" for n in ("linux", "osrel", "cmdline", "initrd")),
            "--bank=sha256",
            f"--phase={phase}",
            "--json=short",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [entry] = json.loads(out)["sha256"]
    assert entry["pcr"] == 11
    return str(entry["hash"])


def test_pcr11_prediction_is_systemd_measures_and_pcrphase_would_change_it(
    node_image: NodeImage, tmp_path: Path
) -> None:
    """The release's PCR 11 is `systemd-measure calculate --phase=` (no phase) of the UKI's
    sections; the image masks systemd-pcrphase (docs/vm-harness.md), which would extend it with
    each phase word: sha256 of the word, as systemd-measure computes for `--phase=sysinit:ready`
    -- a value the release does not name, so a node running pcrphase would not match it."""
    if not MEASURE.exists():
        pytest.skip(f"{MEASURE} (Debian's systemd package) is not installed")
    parts = uki.parse_uki(Path(node_image.uki).read_bytes())
    for name, data in parts.sections.items():
        (tmp_path / name.lstrip(".")).write_bytes(data)
    unphased = _measure(tmp_path, "")
    assert unphased == node_image.expected_pcrs["sha256"]["11"]
    assert unphased == uki.predict_json(Path(node_image.uki).read_bytes())["sha256"]["11"]
    pcr = bytes.fromhex(unphased)
    for word in ("sysinit", "ready"):
        pcr = hashlib.sha256(pcr + hashlib.sha256(word.encode()).digest()).digest()
    phased = _measure(tmp_path, "sysinit:ready")
    assert phased == pcr.hex() != unphased
