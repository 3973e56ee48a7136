"""SNP policy on a fake AMD: every check refuses by name; a stale or missing CRL warns or refuses
per policy (real reports' findings: test_snp_corpus.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest.snp.certs import load_crl
from attest.snp.findings import SnpCheck
from attest.snp.policy import (
    CrlMissing,
    SnpPolicy,
    VerifiedCrl,
    evaluate_snp_policy,
    verify_crl,
)
from attest.snp.report import Product, Signer, TcbVersion, parse_report
from attest.snp.verify import VerifiedReport, verify_chain, verify_report
from attest.testing.snp import FakeAmd, make_crl

SMT, MIGRATE_MA, DEBUG, SINGLE_SOCKET = 1 << 16, 1 << 18, 1 << 19, 1 << 20
BASE_POLICY = 1 << 17


def _verified(amd: FakeAmd, signer: Signer = Signer.VCEK, **fields: object) -> VerifiedReport:
    parsed = parse_report(amd.report(signer=signer, **fields))
    chain = verify_chain(
        amd.leaf(signer)[0], [amd.ask, amd.asvk, amd.ark], now=FAKE_NOW, pins=amd.pins
    )
    return verify_report(parsed, chain, now=FAKE_NOW)


def _crl(amd: FakeAmd, vr: VerifiedReport, **kw: object) -> VerifiedCrl | None:
    return verify_crl(load_crl(make_crl(amd, **kw)), vr.chain)  # type: ignore[arg-type]


def _fresh(amd: FakeAmd, vr: VerifiedReport) -> VerifiedCrl:
    crl = _crl(amd, vr, this_update=FAKE_NOW - dt.timedelta(days=1))
    assert crl is not None
    return crl


def _checks(vr: VerifiedReport, policy: SnpPolicy, crl: VerifiedCrl | None) -> set[SnpCheck]:
    d = evaluate_snp_policy(vr, policy, crl=crl, now=FAKE_NOW)
    assert d.affirmed == (not d.refusals)
    return {f.check for f in d.refusals}


def test_a_good_report_with_a_fresh_crl_is_affirmed(amd: FakeAmd) -> None:
    vr = _verified(amd)
    floor = replace(amd.tcb)
    policy = SnpPolicy(min_tcb={amd.product: floor}, allowed_chip_ids=frozenset({amd.chip_id}))
    d = evaluate_snp_policy(vr, policy, crl=_fresh(amd, vr), now=FAKE_NOW)
    assert d.affirmed and not d.warnings


@pytest.mark.parametrize(
    ("fields", "policy", "check"),
    [
        ({"policy": BASE_POLICY | DEBUG}, SnpPolicy(), SnpCheck.DEBUG),
        ({"policy": BASE_POLICY | MIGRATE_MA}, SnpPolicy(), SnpCheck.MIGRATION_AGENT),
        ({"policy": BASE_POLICY | SMT}, SnpPolicy(allow_smt=False), SnpCheck.SMT),
        ({"policy": BASE_POLICY}, SnpPolicy(require_single_socket=True), SnpCheck.SINGLE_SOCKET),
        ({"vmpl": 1}, SnpPolicy(), SnpCheck.VMPL),
        ({"version": 2}, SnpPolicy(min_report_version=3), SnpCheck.VERSION),
        (
            {"host_data": b"\x01" * 32},
            SnpPolicy(expected_host_data=b"\x02" * 32),
            SnpCheck.HOST_DATA,
        ),
        ({}, SnpPolicy(allowed_chip_ids=frozenset({bytes(64)})), SnpCheck.ALLOWED_CHIP),
        ({}, SnpPolicy(allowed_measurements=frozenset({b"\x22" * 48})), SnpCheck.MEASUREMENT),
    ],
    ids=lambda v: v.value if isinstance(v, SnpCheck) else "",
)
def test_each_policy_check_refuses_by_name(
    fields: dict[str, object], policy: SnpPolicy, check: SnpCheck
) -> None:
    amd = fake(Product.GENOA)
    vr = _verified(amd, **fields)
    assert _checks(vr, policy, _fresh(amd, vr)) == {check}


def test_the_allowed_values_pass() -> None:
    amd = fake(Product.GENOA)
    vr = _verified(amd, policy=BASE_POLICY | DEBUG | SINGLE_SOCKET, vmpl=2, host_data=b"\x05" * 32)
    policy = SnpPolicy(
        allow_debug=True,
        require_single_socket=True,
        vmpl=2,
        expected_host_data=b"\x05" * 32,
        allowed_measurements=frozenset({b"\x11" * 48}),
    )
    assert _checks(vr, policy, _fresh(amd, vr)) == set()


def test_tcb_below_the_floor_is_refused(amd: FakeAmd) -> None:
    vr = _verified(amd)
    t = amd.tcb
    floors = [
        replace(t, microcode=t.microcode + 1),
        replace(t, snp=t.snp + 1),
        replace(t, bootloader=t.bootloader + 1),
    ]
    if amd.product.fmc_in_tcb:
        floors.append(replace(t, fmc=(t.fmc or 0) + 1))
    for floor in floors:
        assert _checks(vr, SnpPolicy(min_tcb={amd.product: floor}), _fresh(amd, vr)) == {
            SnpCheck.TCB_FLOOR
        }
    other = next(p for p in Product if p is not amd.product)  # another product's floor: unchecked
    high = TcbVersion(255, 255, 255, 255, 255)
    assert _checks(vr, SnpPolicy(min_tcb={other: high}), _fresh(amd, vr)) == set()


def test_a_revoked_ask_or_asvk_is_refused(amd: FakeAmd) -> None:
    for signer in (Signer.VCEK, Signer.VLEK):
        vr = _verified(amd, signer)
        serial = vr.chain.intermediate.serial
        crl = _crl(amd, vr, revoked=(serial,), this_update=FAKE_NOW - dt.timedelta(days=1))
        for mode in CrlMissing:
            assert _checks(vr, SnpPolicy(crl_missing=mode), crl) == {SnpCheck.REVOKED}


def test_a_stale_crl_refuses_or_warns_per_policy(amd: FakeAmd) -> None:
    vr = _verified(amd)
    stale = _crl(amd, vr, this_update=FAKE_NOW - dt.timedelta(days=30))  # next update: +7 days
    assert _checks(vr, SnpPolicy(), stale) == {SnpCheck.CRL_STALE}
    d = evaluate_snp_policy(vr, SnpPolicy(crl_missing=CrlMissing.WARN), crl=stale, now=FAKE_NOW)
    assert d.affirmed and [w.check for w in d.warnings] == [SnpCheck.CRL_STALE]


def test_a_missing_crl_refuses_or_warns_per_policy(amd: FakeAmd) -> None:
    vr = _verified(amd)
    assert _checks(vr, SnpPolicy(), None) == {SnpCheck.CRL_MISSING}
    d = evaluate_snp_policy(vr, SnpPolicy(crl_missing=CrlMissing.WARN), crl=None, now=FAKE_NOW)
    assert d.affirmed and [w.check for w in d.warnings] == [SnpCheck.CRL_MISSING]


def test_a_crl_signed_by_another_key_does_not_verify(amd: FakeAmd) -> None:
    vr = _verified(amd)
    assert _crl(amd, vr, key=amd.ask_key) is None  # the ASK's key, the ARK's name


def test_another_products_crl_does_not_count() -> None:
    milan, genoa = fake(Product.MILAN), fake(Product.GENOA)
    vr = _verified(milan)
    genoa_vr = _verified(genoa)
    assert _crl(genoa, vr) is None  # it does not verify under Milan's root
    foreign = _fresh(genoa, genoa_vr)
    assert _checks(vr, SnpPolicy(), foreign) == {SnpCheck.CRL_INVALID}
