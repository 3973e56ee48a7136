"""A platform reference's SEV-SNP policy: the stricter-of-two merge, its parsing and signature
(the platform role's), and the appraisal that names which policy a finding came from."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from tests.support.manifest import NOW, World, build_world, release
from tests.support.manifest import snp_launch as launch
from tests.unit.snp.fakes import FAKE_NOW, milan_crl, milan_report

from attest.errors import ManifestFormatError, SnpCheckError, ThresholdError
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.model import (
    PlatformReference,
    RegistrySnapshot,
    ReleaseSnp,
    VerifiedRegistry,
)
from attest.manifest.parse import load_registry, parse_platform_signed
from attest.manifest.snp import appraise_snp_release, release_host_data
from attest.manifest.verify import verify_snapshot
from attest.model import HashAlg, PcrValues
from attest.snp.findings import SnpCheck
from attest.snp.policy import CrlMissing, SnpPolicy, stricter
from attest.snp.report import Product, TcbVersion
from attest.snp.verify import VerifiedReport

A = b"\xaa" * 48
SMT = 1 << 16
BASE_POLICY = 1 << 17
CHIP1, CHIP2, CHIP3 = b"\x01" * 64, b"\x02" * 64, b"\x03" * 64


def _tcb(bl: int, tee: int, snp: int, uc: int, fmc: int | None = None) -> TcbVersion:
    return TcbVersion(bootloader=bl, tee=tee, snp=snp, microcode=uc, fmc=fmc)


# --- the merge ---------------------------------------------------------------------------------


def test_floors_take_the_maximum_of_each_component_per_product() -> None:
    a = SnpPolicy(min_tcb={Product.MILAN: _tcb(3, 0, 8, 100), Product.TURIN: _tcb(1, 1, 1, 1)})
    b = SnpPolicy(min_tcb={Product.MILAN: _tcb(2, 1, 9, 90), Product.GENOA: _tcb(5, 5, 5, 5)})
    got = stricter(a, b).min_tcb
    assert got[Product.MILAN] == _tcb(3, 1, 9, 100)
    assert got[Product.GENOA] == _tcb(5, 5, 5, 5)  # a floor only one side sets still applies
    assert got[Product.TURIN] == _tcb(1, 1, 1, 1)
    turin = stricter(
        SnpPolicy(min_tcb={Product.TURIN: _tcb(1, 1, 1, 1)}),
        SnpPolicy(min_tcb={Product.TURIN: _tcb(0, 0, 0, 0, fmc=4)}),
    )
    assert turin.min_tcb[Product.TURIN] == _tcb(1, 1, 1, 1, fmc=4)


@pytest.mark.parametrize("order", [False, True])
def test_booleans_refuse_when_either_refuses(order: bool) -> None:
    lax = SnpPolicy(allow_migration_agent=True, allow_smt=True, crl_missing=CrlMissing.WARN)
    strict = SnpPolicy(allow_migration_agent=False, allow_smt=False, require_single_socket=True)
    got = stricter(strict, lax) if order else stricter(lax, strict)
    assert not got.allow_migration_agent and not got.allow_smt and not got.allow_debug
    assert got.require_single_socket and got.crl_missing is CrlMissing.REFUSE
    both_lax = stricter(lax, lax)
    assert both_lax.allow_smt and both_lax.crl_missing is CrlMissing.WARN


def test_report_version_takes_the_higher_minimum() -> None:
    got = stricter(SnpPolicy(min_report_version=3), SnpPolicy(min_report_version=2))
    assert got.min_report_version == 3


def test_chip_ids_intersect_when_both_give_a_list() -> None:
    one = SnpPolicy(allowed_chip_ids=frozenset({CHIP1, CHIP2}))
    two = SnpPolicy(allowed_chip_ids=frozenset({CHIP2, CHIP3}))
    assert stricter(one, two).allowed_chip_ids == {CHIP2}
    assert stricter(one, SnpPolicy()).allowed_chip_ids == {CHIP1, CHIP2}
    assert stricter(SnpPolicy(), two).allowed_chip_ids == {CHIP2, CHIP3}
    assert stricter(SnpPolicy(), SnpPolicy()).allowed_chip_ids is None
    disjoint = SnpPolicy(allowed_chip_ids=frozenset({CHIP3}))
    assert stricter(one, disjoint).allowed_chip_ids == frozenset()  # nothing allowed


def test_different_vmpls_cannot_both_be_met() -> None:
    assert stricter(SnpPolicy(vmpl=1), SnpPolicy(vmpl=1)).vmpl == 1
    with pytest.raises(SnpCheckError, match="different VMPLs") as exc:
        stricter(SnpPolicy(vmpl=0), SnpPolicy(vmpl=2))
    assert exc.value.check == SnpCheck.VMPL


# --- parse and signature -------------------------------------------------------------------------

PCRS = PcrValues({HashAlg.SHA256: {i: bytes([i]) * 32 for i in range(8)}})
PLATFORM_POLICY = SnpPolicy(
    min_tcb={Product.MILAN: _tcb(9, 9, 9, 200)},
    allow_smt=False,
    allowed_chip_ids=frozenset({CHIP1}),
)
REF = PlatformReference("epyc", "an SNP host", PCRS, snp=PLATFORM_POLICY, snp_bind_host_data=True)


@pytest.fixture
def world() -> World:
    return build_world()


def test_platform_policy_round_trips_through_the_registry(world: World) -> None:
    data = world.registry_bytes(world.snapshot(platforms=[REF]))
    got = verify_snapshot(world.root, data, now=NOW).snapshot.platforms["epyc"].reference
    assert got == REF and got.snp == PLATFORM_POLICY and got.snp_bind_host_data
    _, parsed = load_registry(data)
    assert parsed.to_json() == json.loads(data)["signed"]


def test_platform_without_snp_keeps_its_signed_form(world: World) -> None:
    plain = replace(REF, snp=None, snp_bind_host_data=False)
    assert "snp" not in plain.to_json()
    data = world.registry_bytes(world.snapshot(platforms=[plain]))
    assert (
        verify_snapshot(world.root, data, now=NOW).snapshot.platforms["epyc"].reference.snp is None
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("min_tcb", "Milan", "microcode"), 1),  # a lowered floor
        (("allow_smt",), True),
        (("allowed_chip_ids",), None),
    ],
)
def test_changed_platform_policy_without_the_platform_role_is_refused(
    world: World, path: tuple[str, ...], value: object
) -> None:
    """The releases role re-signs the registry (its threshold is met) after the platform
    policy changed: the platform role's signature over the reference no longer verifies."""
    doc = json.loads(world.registry_bytes(world.snapshot(platforms=[REF])))
    target = doc["signed"]["platforms"]["epyc"]["signed"]["snp"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    resigned = world.registry_bytes(load_registry(canonicalize(doc))[1])
    with pytest.raises(ThresholdError, match="platform"):
        verify_snapshot(world.root, resigned, now=NOW)


def test_platform_policy_is_parsed_strictly() -> None:
    doc = REF.to_json()
    doc["snp"]["allow_debug"] = True
    with pytest.raises(ManifestFormatError, match="allow_debug"):
        parse_platform_signed(doc, field="p")
    doc = REF.to_json()
    del doc["snp"]["vmpl"]
    with pytest.raises(ManifestFormatError, match="missing"):
        parse_platform_signed(doc, field="p")
    doc = REF.to_json()
    doc["snp"]["min_tcb"]["Milan"]["microcode"] = 256
    with pytest.raises(ManifestFormatError, match="microcode"):
        parse_platform_signed(doc, field="p")


# --- appraisal -----------------------------------------------------------------------------------


_report, _crl = milan_report, milan_crl


def _registry(release_policy: SnpPolicy, *platforms: PlatformReference) -> VerifiedRegistry:
    rel = replace(
        release("1.0.0", 1), snp=ReleaseSnp((launch("a", measurement=A),), release_policy)
    )
    snap = edit.checked(
        RegistrySnapshot(sequence=1, expires=FAKE_NOW.replace(year=2030), releases={"1.0.0": rel})
    )
    for ref in platforms:
        snap = edit.set_platform(snap, ref)
    return VerifiedRegistry(snapshot=snap, raw=b"", signers=frozenset())


def _ref(policy: SnpPolicy | None, *, bind: bool = False) -> PlatformReference:
    return PlatformReference("epyc", "an SNP host", PCRS, snp=policy, snp_bind_host_data=bind)


def _appraise(vr: VerifiedReport, registry: VerifiedRegistry, platform: str | None) -> list[str]:
    got = appraise_snp_release(
        vr, registry, version="1.0.0", crl=_crl(vr), now=FAKE_NOW, platform=platform
    )
    return [f"{f.check}: {f.message}" for f in got.decision.refusals]


def test_platform_floor_refuses_and_is_named() -> None:
    vr = _report(measurement=A, policy=BASE_POLICY)
    high = SnpPolicy(min_tcb={Product.MILAN: _tcb(255, 255, 255, 255)})
    registry = _registry(SnpPolicy(), _ref(high))
    assert _appraise(vr, registry, None) == []  # the release's policy alone affirms
    [refusal] = _appraise(vr, registry, "epyc")
    assert refusal.startswith("snp-tcb-floor") and refusal.endswith("[platform epyc policy]")


def test_release_refusal_is_named_and_both_when_both_refuse() -> None:
    vr = _report(measurement=A, policy=BASE_POLICY | SMT)
    no_smt = SnpPolicy(allow_smt=False)
    [refusal] = _appraise(vr, _registry(no_smt, _ref(SnpPolicy())), "epyc")
    assert refusal.startswith("snp-smt") and refusal.endswith("[release 1.0.0 policy]")
    [refusal] = _appraise(vr, _registry(no_smt, _ref(no_smt)), "epyc")
    assert refusal.endswith("[release 1.0.0 and platform epyc policies]")
    [refusal] = _appraise(vr, _registry(no_smt), None)
    assert refusal.endswith("[release 1.0.0 policy]")


def test_platform_without_policy_leaves_the_release_policy() -> None:
    vr = _report(measurement=A, policy=BASE_POLICY)
    assert _appraise(vr, _registry(SnpPolicy(), _ref(None)), "epyc") == []


def test_unknown_platform_is_refused() -> None:
    vr = _report(measurement=A, policy=BASE_POLICY)
    [refusal] = _appraise(vr, _registry(SnpPolicy()), "nowhere")
    assert refusal.startswith("snp-platform") and "nowhere" in refusal


def test_conflicting_vmpls_refuse_naming_both_policies() -> None:
    vr = _report(measurement=A, policy=BASE_POLICY)
    [refusal] = _appraise(vr, _registry(SnpPolicy(), _ref(SnpPolicy(vmpl=1))), "epyc")
    assert refusal.startswith("snp-vmpl") and "release 1.0.0 and platform epyc" in refusal


def test_platform_can_bind_host_data() -> None:
    registry = _registry(SnpPolicy(), _ref(SnpPolicy(), bind=True))
    vr = _report(measurement=A, policy=BASE_POLICY)
    [refusal] = _appraise(vr, registry, "epyc")
    assert refusal.startswith("snp-host-data") and refusal.endswith("[platform epyc policy]")
    want = release_host_data(registry.snapshot.releases["1.0.0"])
    bound = _report(measurement=A, policy=BASE_POLICY, host_data=want)
    assert _appraise(bound, registry, "epyc") == []
