"""A verified SNP report appraised against a blessed release (attest.manifest.snp): the launch
measurement matched or explained, the release's SNP policy, revocation, HOST_DATA binding."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.support.manifest import release
from tests.support.manifest import snp_launch as launch
from tests.unit.snp.fakes import FAKE_NOW, milan_crl, milan_report

from attest.manifest import edit
from attest.manifest.model import Embargo, RegistrySnapshot, Release, ReleaseSnp, VerifiedRegistry
from attest.manifest.snp import appraise_snp_release, release_host_data
from attest.snp.findings import SnpCheck
from attest.snp.policy import CrlMissing, SnpPolicy

A, B, OTHER = b"\xaa" * 48, b"\xbb" * 48, b"\xcc" * 48
SMT = 1 << 16
BASE_POLICY = 1 << 17


_report, _crl = milan_report, milan_crl


def _snp(policy: SnpPolicy | None = None, *, bind: bool = False) -> ReleaseSnp:
    return ReleaseSnp(
        launches=(launch("a", measurement=A), launch("b", measurement=B)),
        policy=policy or SnpPolicy(),
        bind_host_data=bind,
    )


def _registry(*releases: Release, revoke: tuple[str, ...] = ()) -> VerifiedRegistry:
    snap = edit.checked(
        RegistrySnapshot(
            sequence=1,
            expires=FAKE_NOW.replace(year=2030),
            releases={r.version: r for r in releases},
        )
    )
    for v in revoke:
        snap = edit.revoke(snap, v, reason="CVE-2026-0001", at=FAKE_NOW)
    return VerifiedRegistry(snapshot=snap, raw=b"", signers=frozenset())


R1 = replace(release("1.0.0", 1), snp=_snp())
R2 = replace(release("1.1.0", 2), snp=ReleaseSnp((launch("a", measurement=OTHER),)))


@pytest.mark.parametrize(("measurement", "slot"), [(A, "a"), (B, "b")])
@pytest.mark.parametrize("version", ["1.0.0", None])
def test_blessed_launch_is_affirmed(measurement: bytes, slot: str, version: str | None) -> None:
    vr = _report(measurement=measurement)
    got = appraise_snp_release(vr, _registry(R1, R2), version=version, crl=_crl(vr), now=FAKE_NOW)
    assert got.affirmed, got.decision
    assert got.release == R1 and got.launch is not None and got.launch.slot == slot


def test_mismatch_names_the_inputs_of_every_blessed_launch() -> None:
    vr = _report(measurement=OTHER)
    got = appraise_snp_release(vr, _registry(R1, R2), version="1.0.0", crl=_crl(vr), now=FAKE_NOW)
    assert not got.affirmed and got.launch is None
    [finding] = got.decision.refusals
    assert finding.check is SnpCheck.MEASUREMENT
    msg = finding.message
    assert f"measurement {OTHER.hex()} matches no blessed launch of release 1.0.0" in msg
    snp = R1.snp
    assert snp is not None
    for blessed in snp.launches:
        assert f"slot {blessed.slot} (4 x EPYC-v4): measurement {blessed.measurement.hex()}" in msg
        assert blessed.ovmf_sha256.hex() in msg
        assert blessed.cmdline_sha256 is not None and blessed.cmdline_sha256.hex() in msg
    assert snp.launches[0].kernel_sha256 is not None
    assert f"kernel {snp.launches[0].kernel_sha256.hex()}" in msg


def test_mismatch_names_the_release_whose_launch_it_is() -> None:
    vr = _report(measurement=OTHER)  # R2's launch, appraised as R1's
    got = appraise_snp_release(vr, _registry(R1, R2), version="1.0.0", crl=_crl(vr), now=FAKE_NOW)
    [finding] = got.decision.refusals
    assert finding.message.endswith("(it is release 1.1.0's launch, slot a)")


def test_unknown_measurement_without_a_release_is_refused() -> None:
    vr = _report(measurement=b"\x01" * 48)
    got = appraise_snp_release(vr, _registry(R1, R2), version=None, crl=_crl(vr), now=FAKE_NOW)
    assert [f.check for f in got.decision.refusals] == [SnpCheck.MEASUREMENT]
    assert (
        got.release is None
        and "2 release(s) bless SNP launches" in got.decision.refusals[0].message
    )


@pytest.mark.parametrize("version", ["1.0.0", None])
def test_launch_of_a_revoked_release_is_refused(version: str | None) -> None:
    vr = _report(measurement=A)
    reg = _registry(R1, R2, revoke=("1.0.0",))
    got = appraise_snp_release(vr, reg, version=version, crl=_crl(vr), now=FAKE_NOW)
    assert not got.affirmed
    assert [f.check for f in got.decision.refusals] == [SnpCheck.RELEASE_REVOKED]
    assert "CVE-2026-0001" in got.decision.refusals[0].message


def test_measurement_also_blessed_by_a_revoked_release_is_refused() -> None:
    """The same launch under a newer release is still the revoked release's guest."""
    newer = replace(release("1.2.0", 3), snp=ReleaseSnp((launch("a", measurement=A),)))
    vr = _report(measurement=A)
    got = appraise_snp_release(
        vr, _registry(R1, newer, revoke=("1.0.0",)), version=None, crl=_crl(vr), now=FAKE_NOW
    )
    assert got.release == newer
    assert [f.check for f in got.decision.refusals] == [SnpCheck.RELEASE_REVOKED]
    assert "revoked release 1.0.0" in got.decision.refusals[0].message


def test_unknown_release_and_release_without_snp_are_refused() -> None:
    vr = _report(measurement=A)
    reg = _registry(R1, release("2.0.0", 5))
    for version, text in [("9.9.9", "not in registry"), ("2.0.0", "blesses no SEV-SNP launch")]:
        got = appraise_snp_release(vr, reg, version=version, crl=_crl(vr), now=FAKE_NOW)
        assert [f.check for f in got.decision.refusals] == [SnpCheck.RELEASE]
        assert text in got.decision.refusals[0].message


def test_the_release_policy_is_applied() -> None:
    policy = SnpPolicy(allow_smt=False, vmpl=1, min_report_version=5)
    rel = replace(release("1.0.0", 1), snp=_snp(policy))
    vr = _report(measurement=A, policy=BASE_POLICY | SMT)
    got = appraise_snp_release(vr, _registry(rel), version=None, crl=_crl(vr), now=FAKE_NOW)
    assert {f.check for f in got.decision.refusals} == {
        SnpCheck.SMT,
        SnpCheck.VMPL,
        SnpCheck.VERSION,
    }


def test_crl_missing_follows_the_release_policy() -> None:
    vr = _report(measurement=A)
    refuse = appraise_snp_release(vr, _registry(R1), version=None, crl=None, now=FAKE_NOW)
    assert [f.check for f in refuse.decision.refusals] == [SnpCheck.CRL_MISSING]
    warn_rel = replace(R1, snp=_snp(SnpPolicy(crl_missing=CrlMissing.WARN)))
    warn = appraise_snp_release(vr, _registry(warn_rel), version=None, crl=None, now=FAKE_NOW)
    assert warn.affirmed and [f.check for f in warn.decision.warnings] == [SnpCheck.CRL_MISSING]


def test_host_data_binds_the_release_record() -> None:
    rel = replace(release("1.0.0", 1), snp=_snp(bind=True))
    want = release_host_data(rel)
    good = _report(measurement=A, host_data=want)
    reg = _registry(rel, R2)
    assert appraise_snp_release(good, reg, version=None, crl=_crl(good), now=FAKE_NOW).affirmed
    other = release_host_data(R2)  # another release's record: a guest launched for 1.1.0
    bad = _report(measurement=A, host_data=other)
    got = appraise_snp_release(bad, reg, version=None, crl=_crl(bad), now=FAKE_NOW)
    [finding] = got.decision.refusals
    assert finding.check is SnpCheck.HOST_DATA and want.hex() in finding.message


def test_host_data_record_survives_later_edits_of_the_release() -> None:
    rel = replace(release("1.0.0", 1, embargo=Embargo(), commit=False), snp=_snp(bind=True))
    reg = _registry(rel).snapshot
    before = release_host_data(reg.releases["1.0.0"])
    reg = edit.fleet_complete(reg, "1.0.0", at=FAKE_NOW)
    reg = edit.disclose(reg, "1.0.0", commit=b"\x01" * 20, at=FAKE_NOW)
    reg = edit.add_snp_launch(reg, "1.0.0", launch("c", measurement=OTHER))
    assert release_host_data(reg.releases["1.0.0"]) == before
    assert release_host_data(replace(rel, sequence=7)) != before
    assert release_host_data(R1) != release_host_data(R2)
