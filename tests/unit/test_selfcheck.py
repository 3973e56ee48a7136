"""The node's self-appraisal verdicts (GET /v1/status)."""

from __future__ import annotations

from datetime import timedelta

from tests.support.manifest import NOW, build_world, release

from attest.appraisal.selfcheck import evaluate_node
from attest.manifest import verify_snapshot
from attest.manifest.model import Revocation
from attest.verity.devices import CmdlineRootHash, VerityDevice, VerityReport, VerityStatus

WORLD = build_world()
REL = release("1.0.0", 1)


def registry(revoked: bool = False):  # type: ignore[no-untyped-def]
    snap = WORLD.snapshot(releases=[REL, release("1.1.0", 2)])
    if revoked:
        import dataclasses

        rev = Revocation("1.0.0", REL.artifact_sha256, "CVE-2099-1", NOW)
        snap = dataclasses.replace(snap, revocations={"1.0.0": rev})
    return verify_snapshot(WORLD.root, WORLD.registry_bytes(snap), now=NOW)


def verity(root: bytes, *, backed: bool = True, corrupted: bool = False) -> VerityReport:
    status = VerityStatus.CORRUPTED if corrupted else VerityStatus.VERIFIED
    dev = VerityDevice("root", "CRYPT-VERITY-x", (253, 0), None, status, None)
    return VerityReport((dev,), (CmdlineRootHash("roothash", root, ("root",) if backed else ()),))


def test_blessed_node() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(REL.verity.root_hash),
        registry=registry(),
        registry_error=None,
        now=NOW,
    )
    assert v.verdict == "blessed"
    assert v.release and v.release["version"] == "1.0.0"


def test_revoked_release_is_reported() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(REL.verity.root_hash),
        registry=registry(revoked=True),
        registry_error=None,
        now=NOW,
    )
    assert v.verdict == "revoked"


def test_unknown_root_hash_is_not_blessed() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(b"\x09" * 32),
        registry=registry(),
        registry_error=None,
        now=NOW,
    )
    assert v.verdict == "not-blessed"


def test_unbacked_cmdline_root_hash_is_not_blessed() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(REL.verity.root_hash, backed=False),
        registry=registry(),
        registry_error=None,
        now=NOW,
    )
    assert v.verdict == "not-blessed" and "not backed" in " ".join(v.reasons)


def test_corruption_is_reported() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(REL.verity.root_hash, corrupted=True),
        registry=registry(),
        registry_error=None,
        now=NOW,
    )
    assert v.verdict == "corrupted"


def test_tpm_and_runtime_log_problems_are_worst() -> None:
    v = evaluate_node(
        tpm_error="gone",
        runtime_error="does not replay",
        verity=verity(REL.verity.root_hash, corrupted=True),
        registry=None,
        registry_error="no trust root",
        now=NOW,
    )
    assert v.verdict == "degraded"
    assert len(v.reasons) == 4


def test_no_registry_is_unknown_not_blessed() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=verity(REL.verity.root_hash),
        registry=None,
        registry_error="no trust root in /x",
        now=NOW + timedelta(days=1),
    )
    assert v.verdict == "unknown" and "no trust root" in v.reasons[0]


def _device_only(root: bytes, devno: str) -> VerityReport:
    """No root hash on the command line (the initramfs chose and measured it): only the active
    verity device, with the table parsed from ``dmsetup table``."""
    from attest.verity.devices import parse_verity_table

    table = parse_verity_table(
        f"0 8 verity 1 254:1 254:1 4096 4096 1 1 sha256 {root.hex()} {'00' * 32}"
    )
    return VerityReport(
        (VerityDevice("root", "CRYPT-VERITY-x", devno, table, VerityStatus.VERIFIED, None),), ()
    )


def test_root_device_names_the_release_without_a_command_line_root_hash() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=_device_only(REL.verity.root_hash, "254:0"),
        registry=registry(),
        registry_error=None,
        now=NOW,
        root_devno="254:0",
    )
    assert v.verdict == "blessed" and v.checks["verity"] == "ok"
    assert v.release and v.release["version"] == "1.0.0"
    unknown = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=_device_only(b"\x09" * 32, "254:0"),
        registry=registry(),
        registry_error=None,
        now=NOW,
        root_devno="254:0",
    )
    assert unknown.verdict == "not-blessed"


def test_a_verity_device_not_mounted_at_root_names_nothing() -> None:
    v = evaluate_node(
        tpm_error=None,
        runtime_error=None,
        verity=_device_only(REL.verity.root_hash, "254:3"),
        registry=registry(),
        registry_error=None,
        now=NOW,
        root_devno="254:0",
    )
    assert v.verdict == "unknown" and v.checks["verity"] == "none"
    assert "mounted at /" in " ".join(v.reasons)
