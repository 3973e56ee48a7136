"""``attest.appraisal.appraise``: one named test per divergence.

The node is a ``FakeTpm`` (real PCR arithmetic, real ECDSA quotes) whose PCRs were extended
with a real firmware event log -- OVMF's direct kernel boot from ``../shared/eventlogs`` -- and
with a runtime log of ten typed events, three of them anchoring operator audit entries. The
registry is signed with the TEST keys of ``firmware_manifests/test`` under its TEST root.

The OVMF log's kernel command line (``console=ttyS0 loglevel=4``) names no dm-verity root, so
the one event that measures it (the Linux EFI stub's PCR 9 LoadOptions) is rewritten, in every
bank, to the digests the same stub measures for ``console=ttyS0 roothash=<R> initrd=initrd``:
everything else is the real log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

import pytest
from tests.support.appraisal import (
    EVENTLOGS,
    OVMF_LOG,
    PLATFORM,
    R_BLESSED,
    R_OTHER,
    RUNTIME_PCR,
    Node,
    blessed,
    cmdline_for,
    firmware_log,
    make_node,
    make_registry,
    run,
)
from tests.support.manifest import NOW

from attest.appraisal.checks import AllOf, AnyOf
from attest.appraisal.claims import Claim, Finding, Tier, Verdict
from attest.appraisal.stages import AppraisalContext
from attest.eventlog import parse_event_log, replay_pcrs
from attest.evidence import b64
from attest.manifest.model import (
    Embargo,
    Revocation,
    VerifiedRegistry,
)
from attest.model import HashAlg, PcrValues

pytestmark = pytest.mark.skipif(not OVMF_LOG.exists(), reason=f"{OVMF_LOG} is missing")


@pytest.fixture(scope="module")
def good() -> Node:
    return make_node()


@pytest.fixture(scope="module")
def registry(good: Node) -> VerifiedRegistry:
    return make_registry(good)


# --- the genuine node ------------------------------------------------------------------------


def test_fixture_replays_the_real_log() -> None:
    """The fake TPM holds exactly what the real guest read, except PCR 9 (the command line)."""
    real = json.loads((EVENTLOGS / "ovmf__q35-direct-boot.pcrs.json").read_text())["sha256"]
    node = make_node()
    got = node.pcrs().values[HashAlg.SHA256]
    assert all(got[i].hex() == real[str(i)] for i in range(9))
    assert got[9].hex() != real["9"]
    assert replay_pcrs(parse_event_log(node.fw)).values[HashAlg.SHA256][9] == got[9]


def test_genuine_node_is_affirming(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry)
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.first_divergence is None
    vec = r.trustworthiness_vector
    assert vec["instance-identity"] == 2 and vec["hardware"] == 2
    assert vec["configuration"] == 2 and vec["file-system"] == 2
    assert Tier.of(vec["executables"]) is Tier.AFFIRMING
    assert r.release is not None and r.release.release is not None
    assert r.release.release.version == "1.4.2"
    assert r.clock is not None
    doc = r.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["status"] == "affirming"


# --- one test per divergence -----------------------------------------------------------------


def test_rejects_wrong_nonce(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    r = run(good, registry, doc=doc, nonce=b"m" * 32)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert r.first_divergence is not None and "nonce" in r.first_divergence
    assert r.clock is None


def test_rejects_relabelled_pcrs(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    bank = doc["pcrs"]["sha256"]
    doc["pcrs"]["sha256"] = {str(int(i) + 1 if int(i) < 13 else 14): v for i, v in bank.items()}
    r = run(good, registry, doc=doc)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 99
    assert "pcr-selection" in (r.first_divergence or "")


def test_rejects_replayed_old_quote(good: Node, registry: VerifiedRegistry) -> None:
    old = good.evidence(b"o" * 32)
    newer = run(good, registry, doc=good.evidence(b"n" * 32, advance_ms=5000))
    assert newer.verdict is Verdict.AFFIRMING and newer.clock is not None
    # The old quote, replayed with its own (captured) nonce, is older than the last one seen.
    r = run(good, registry, doc=old, nonce=b"o" * 32, previous=newer.clock)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert "clock went backwards" in (r.first_divergence or "")


def test_changed_ak_is_an_alarm(good: Node, registry: VerifiedRegistry) -> None:
    other = make_node(seed=b"another TPM")
    r = run(other, registry, enrollment=good.enrollment)
    assert r.verdict is Verdict.ALARM and r.alarm
    assert r.status == "contraindicated"
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert (r.first_divergence or "").startswith("ALARM: the node presents AK")
    assert good.enrollment.ak_name.hex() in (r.first_divergence or "")
    assert r.clock is None  # nothing from the other TPM is remembered


def test_firmware_log_that_does_not_replay(good: Node, registry: VerifiedRegistry) -> None:
    node = dataclasses.replace(good, fw=firmware_log(R_OTHER))  # the log says another cmdline
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert "sha256:9" in (r.first_divergence or "")
    assert "firmware event log does not replay" in (r.first_divergence or "")


def test_truncated_runtime_log(good: Node, registry: VerifiedRegistry) -> None:
    node = dataclasses.replace(good, records=good.records[:-1])
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert f"runtime log (PCR {RUNTIME_PCR})" in (r.first_divergence or "")


def test_audit_entry_deleted(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, audit_entries=[good.audit[0], good.audit[2]])
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert "entries were deleted" in (r.first_divergence or "")


def test_audit_tail_truncated(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, audit_entries=good.audit[:2])
    assert r.verdict is Verdict.CONTRAINDICATED
    assert "truncated" in (r.first_divergence or "")


def test_release_revoked(good: Node) -> None:
    rel = blessed()
    reg = make_registry(
        good,
        revocations=[
            Revocation(
                "1.4.2", rel.artifact_sha256, "CVE-2025-0001 in the kernel", NOW - timedelta(days=1)
            )
        ],
    )
    r = run(good, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert "release 1.4.2 was revoked" in (r.first_divergence or "")
    assert "CVE-2025-0001" in (r.first_divergence or "")


def test_verity_root_hash_not_blessed(good: Node) -> None:
    node = make_node(R_OTHER)
    # Boot PCRs as the node measured them: only the root file system is unknown.
    quoted = node.pcrs().values[HashAlg.SHA256]
    reg = make_registry(node, variant_pcrs={4: quoted[4], 9: quoted[9]})
    r = run(node, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.FILE_SYSTEM).value == 96
    assert f"dm-verity root hash {R_OTHER.hex()}" in (r.first_divergence or "")
    assert "not blessed" in (r.first_divergence or "")


def test_pcr9_cmdline_differs_names_both_root_hashes(
    good: Node, registry: VerifiedRegistry
) -> None:
    node = make_node(R_OTHER)  # release 1.4.2's kernel booted with another roothash=
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert r.first_divergence == (
        f"PCR 9: kernel command line differs from release 1.4.2: "
        f"`roothash={R_BLESSED.hex()}` → `roothash={R_OTHER.hex()}`"
    )


def test_release_pcr_not_quoted_is_never_affirming(good: Node) -> None:
    """A release that pins PCR 15 (the verity root measured by the initramfs) appraised with a
    selection that leaves 15 out: not taken as matching (fail closed), and said so."""
    quoted = good.pcrs().values[HashAlg.SHA256]
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 15: b"\x15" * 32})
    r = run(good, reg)
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.FILE_SYSTEM).value == 32
    assert not [
        f for c in r.claims for f in c.findings if f.check == "release-pcrs" and f.value < 32
    ]  # nothing approved by it
    assert (
        "PCR 15: release 1.4.2 pins it (sha256) but the quote does not include it; "
        "appraise with a PCR selection that does" in r.explanations
    )


def test_release_pcr_15_differs_is_a_file_system_finding(good: Node) -> None:
    quoted = good.pcrs().values[HashAlg.SHA256]
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 11: b"\x00" * 32})
    r = run(good, reg)  # PCR 11 is quoted (all zero on this node): equal, so affirming
    assert r.verdict is Verdict.AFFIRMING, r.explanation
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 11: b"\x11" * 32})
    r = run(good, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert (r.first_divergence or "").startswith("PCR 11: unified kernel image sections differ")


def test_unauthenticated_cmdline_is_ignored(good: Node, registry: VerifiedRegistry) -> None:
    """A reported command line that is not the measured one says nothing."""
    node = dataclasses.replace(make_node(R_OTHER), cmdline=cmdline_for(R_BLESSED))
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert (r.first_divergence or "").startswith(
        "PCR 9: kernel command line or initrd differs from release 1.4.2: expected "
    )
    assert "roothash=" not in (r.first_divergence or "")


def test_embargo_overdue_is_a_warning(good: Node) -> None:
    rel = dataclasses.replace(
        blessed(),
        source_commit=None,
        embargo=Embargo(quiet_period_days=10, fleet_complete_at=NOW - timedelta(days=30)),
    )
    r = run(good, make_registry(good, releases=[rel]))
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.EXECUTABLES).value == 32
    assert "disclosure was due" in (r.first_divergence or "")


def test_platform_firmware_differs(good: Node) -> None:
    quoted = good.pcrs().values[HashAlg.SHA256]
    plat = {i: quoted[i] for i in range(8)} | {0: hashlib.sha256(b"other firmware").digest()}
    r = run(good, make_registry(good, platform_pcrs=PcrValues({HashAlg.SHA256: plat})))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.HARDWARE).value == 96
    assert (r.first_divergence or "").startswith(
        f"PCR 0: platform firmware differs from reference {PLATFORM}"
    )


def test_malformed_evidence_could_not_appraise(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    doc["quote"]["attest"] = "not base64!"
    r = run(good, registry, doc=doc)
    assert r.verdict is Verdict.UNAPPRAISABLE and r.status == "none"
    assert "malformed evidence" in (r.first_divergence or "")


def test_without_registry_the_release_is_not_appraised(good: Node) -> None:
    r = run(good, None)
    assert r.verdict is Verdict.WARNING  # not knowing which release runs is never affirming
    assert r.trustworthiness_vector["executables"] == 33
    assert "no registry: release not appraised" in (r.first_divergence or "")
    assert "file-system" not in r.trustworthiness_vector
    assert "hardware" not in r.trustworthiness_vector


# --- policy combinators ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Fixed:
    value: int

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        return (Finding(Claim.SOURCED_DATA, self.value, "fixed", f"value {self.value}"),)


def test_any_of_takes_the_first_affirming_alternative(
    good: Node, registry: VerifiedRegistry
) -> None:
    r = run(good, registry, policy=AnyOf((_Fixed(96), _Fixed(2), _Fixed(32))))
    assert r.verdict is Verdict.AFFIRMING and r.trustworthiness_vector == {"sourced-data": 2}
    r = run(good, registry, policy=AnyOf((_Fixed(96), _Fixed(32))))
    assert r.verdict is Verdict.WARNING


def test_all_of_reports_the_worst(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, policy=AllOf((_Fixed(2), _Fixed(96), _Fixed(32))))
    assert r.verdict is Verdict.CONTRAINDICATED and r.first_divergence == "value 96"


def test_changed_ek_is_an_alarm(good: Node, registry: VerifiedRegistry) -> None:
    """The identity document of this contact presents another EK than the enrolled one."""
    enrolled = dataclasses.replace(good.enrollment, ek_sha256=hashlib.sha256(b"ek").digest())
    other_ek = make_node(seed=b"another TPM").tpm.ak_public()  # any TPMT_PUBLIC will do
    identity = {
        "node_id": "node-7",
        "ak": {"public": b64(good.tpm.ak_public().tpm2b())},
        "ek": {"public": b64(other_ek.tpm2b())},
    }
    r = run(good, registry, enrollment=enrolled, identity=identity)
    assert r.verdict is Verdict.ALARM
    assert (r.first_divergence or "").startswith("ALARM: the node presents EK sha256")
