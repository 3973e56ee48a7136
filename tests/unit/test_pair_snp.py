"""A confidential guest in a pair: the ``guest-snp`` layer (``attest.appraisal.snp``) and the
pair's one verdict over ``host``, ``guest-snp`` and ``guest-vtpm`` (``attest.appraisal.pair``).
Reports are signed by the fake AMD chain (``attest.testing.snp``), whose ARK the verifier pins."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.manifest import NOW, snp_registry
from tests.unit.snp.fakes import fake

from attest.appraisal import AppraisalResult, result_of
from attest.appraisal.claims import (
    APPROVED_BOOT,
    CONTRAINDICATED_RUNTIME,
    CRYPTO_VALIDATION_FAILED,
    TRUSTWORTHY_INSTANCE,
    UNRECOGNIZED_RUNTIME,
    UNSUPPORTABLE_CONFIG,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Verdict,
)
from attest.appraisal.ear import sign_ear, verify_ear
from attest.appraisal.layers import GUEST_SNP, GUEST_VTPM, HOST
from attest.appraisal.pair import (
    GuestIdentity,
    appraise_pair,
    guest_nonce,
    host_nonce,
)
from attest.appraisal.snp import appraise_guest_snp, guest_snp_layer
from attest.errors import EvidenceFormatError
from attest.evidence import UnverifiedSnpEvidence, snp_member, snp_of
from attest.manifest import edit
from attest.manifest.model import PlatformReference, VerifiedRegistry
from attest.model import HashAlg, PcrValues
from attest.runtime import VtpmVouch
from attest.snp.certs import load_crl
from attest.snp.policy import SnpPolicy
from attest.snp.report import Product, TcbVersion
from attest.snp.reportdata import encode_report_data
from attest.snp.verify import SnpVerifier
from attest.testing.snp import FakeAmd, guest_cert_table, make_crl

CHALLENGE = b"c" * 32
GUEST_DIGEST = hashlib.sha256(b"the guest evidence as received").digest()
GUEST_NONCE = guest_nonce(CHALLENGE)
HOST_NONCE = host_nonce(CHALLENGE, GUEST_DIGEST)
EK_B = hashlib.sha256(b"ek-b").digest()
G1 = GuestIdentity("g1", EK_B)
VOUCHED = (VtpmVouch("g1", EK_B),)
AK = b"\x00\x58" + b"a" * 88  # the enrolled AK's TPM2B_PUBLIC, as the guest binds it
SPKI = b"\x30\x59" + b"k" * 89
BLESSED = b"\x5b" * 48
DEBUG = 1 << 19


@pytest.fixture()
def amd() -> FakeAmd:
    return fake(Product.MILAN)


def ok(node_id: str, nonce: bytes) -> AppraisalResult:
    """A layer whose own appraisal affirms (the pair adds the host-vouch finding)."""
    return result_of(
        [Finding(Claim.INSTANCE_IDENTITY, TRUSTWORTHY_INSTANCE, "quote", "quote ok")],
        node_id=node_id,
        nonce=nonce,
        now=NOW,
    )


HOST_OK = ok("host-1", HOST_NONCE)
GUEST_OK = ok("g1", GUEST_NONCE)


def _registry(measurement: bytes = BLESSED) -> VerifiedRegistry:
    return snp_registry("3.0.0", measurement, sequence=4)


def _member(
    amd: FakeAmd,
    *,
    nonce: bytes = GUEST_NONCE,
    tls_spki: bytes | None = None,
    ak: bytes | None = AK,
    **fields: object,
) -> UnverifiedSnpEvidence:
    """What a guest sends: a report binding (nonce, TLS key, AK), through the evidence codec."""
    data = encode_report_data(nonce=nonce, tls_spki=tls_spki, vtpm_ak=ak)
    fields.setdefault("measurement", BLESSED)
    report = amd.report(report_data=data, **fields)
    parsed = snp_of({"snp": snp_member(report, guest_cert_table(amd), tls_spki)})
    assert parsed is not None
    return parsed


def _appraise(
    amd: FakeAmd,
    member: UnverifiedSnpEvidence | None,
    *,
    registry: VerifiedRegistry | None = None,
    tls_binding: bytes = b"",
    crl: bool = True,
    nonce: bytes = GUEST_NONCE,
    platform: str | None = None,
) -> AppraisalResult:
    crls = [load_crl(make_crl(amd, this_update=NOW - dt.timedelta(days=1)))] if crl else []
    return appraise_guest_snp(
        member,
        node_id="g1",
        nonce=nonce,
        tls_binding=tls_binding,
        ak_public=AK,
        verifier=SnpVerifier(pins=amd.pins),
        registry=registry if registry is not None else _registry(),
        crls=crls,
        platform=platform,
        now=NOW,
    )


def _checks(r: AppraisalResult) -> list[str]:
    return [f.check for f in r.findings if f.tier.value > 1]


# --- the guest-snp layer -------------------------------------------------------------------------


def test_blessed_launch_bound_to_this_challenge_is_affirming(amd: FakeAmd) -> None:
    r = _appraise(amd, _member(amd))
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.claim(Claim.INSTANCE_IDENTITY).value == TRUSTWORTHY_INSTANCE
    assert r.claim(Claim.EXECUTABLES).value == APPROVED_BOOT
    assert (
        "release 3.0.0's blessed launch (slot a"
        in r.claim(Claim.EXECUTABLES).findings[0].explanation
    )
    assert r.nonce == GUEST_NONCE


def test_report_from_an_earlier_challenge_is_stale(amd: FakeAmd) -> None:
    earlier = guest_nonce(b"e" * 32)
    r = _appraise(amd, _member(amd, nonce=earlier))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == UNTRUSTWORTHY_INSTANCE
    assert "stale or replayed" in (r.first_divergence or "")
    assert _checks(r) == ["snp-report-data"]


def test_report_binding_another_ak_is_refused(amd: FakeAmd) -> None:
    r = _appraise(amd, _member(amd, ak=b"\x00\x58" + b"z" * 88))
    assert r.verdict is Verdict.CONTRAINDICATED and _checks(r) == ["snp-report-data"]


def test_tls_key_must_be_the_one_the_evidence_is_bound_to(amd: FakeAmd) -> None:
    binding = hashlib.sha256(SPKI).digest()
    good = _appraise(amd, _member(amd, tls_spki=SPKI), tls_binding=binding)
    assert good.verdict is Verdict.AFFIRMING, good.explanations
    other = _appraise(amd, _member(amd, tls_spki=SPKI), tls_binding=b"\x01" * 32)
    assert "not the one the evidence is bound to" in (other.first_divergence or "")
    none = _appraise(amd, _member(amd), tls_binding=binding)
    assert "binds none" in (none.first_divergence or "")


def test_tampered_report_fails_cryptographic_validation(amd: FakeAmd) -> None:
    m = _member(amd)
    flipped = bytearray(m.report)
    flipped[0x90] ^= 1  # MEASUREMENT
    r = _appraise(amd, dataclasses.replace(m, report=bytes(flipped)))
    assert r.claim(Claim.INSTANCE_IDENTITY).value == CRYPTO_VALIDATION_FAILED
    assert _checks(r) == ["snp-signature"]


def test_look_alike_root_is_refused(amd: FakeAmd) -> None:
    other = fake(Product.GENOA)  # another chain; pinned: this one's Milan ARK only
    m = _member(amd)
    r = appraise_guest_snp(
        m,
        node_id="g1",
        nonce=GUEST_NONCE,
        tls_binding=b"",
        ak_public=AK,
        verifier=SnpVerifier(pins=other.pins),
        registry=_registry(),
        now=NOW,
    )
    assert r.claim(Claim.INSTANCE_IDENTITY).value == CRYPTO_VALIDATION_FAILED
    assert _checks(r) == ["snp-root"]


def test_missing_certificate_table_or_report_fails_closed(amd: FakeAmd) -> None:
    r = _appraise(amd, dataclasses.replace(_member(amd), certs=None))
    assert r.verdict is Verdict.CONTRAINDICATED and "no certificate table" in str(r.explanations)
    r = _appraise(amd, None)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert "sent no SEV-SNP report" in (r.first_divergence or "")


def test_unblessed_measurement_is_contraindicated_and_explained(amd: FakeAmd) -> None:
    r = _appraise(amd, _member(amd, measurement=b"\x77" * 48))
    assert r.claim(Claim.EXECUTABLES).value == CONTRAINDICATED_RUNTIME
    assert "matches no blessed launch" in (r.first_divergence or "")


def test_debug_guest_is_unsupportable(amd: FakeAmd) -> None:
    r = _appraise(amd, _member(amd, policy=0x30000 | DEBUG))
    assert r.claim(Claim.CONFIGURATION).value == UNSUPPORTABLE_CONFIG
    assert "snp-debug" in _checks(r)


def test_without_a_crl_the_default_policy_refuses(amd: FakeAmd) -> None:
    r = _appraise(amd, _member(amd), crl=False)
    assert r.verdict is Verdict.CONTRAINDICATED and "snp-crl-missing" in _checks(r)


def test_without_a_registry_the_measurement_is_unrecognised(amd: FakeAmd) -> None:
    crls = [load_crl(make_crl(amd, this_update=NOW - dt.timedelta(days=1)))]
    r = appraise_guest_snp(
        _member(amd),
        node_id="g1",
        nonce=GUEST_NONCE,
        tls_binding=b"",
        ak_public=AK,
        verifier=SnpVerifier(pins=amd.pins),
        registry=None,
        crls=crls,
        now=NOW,
    )
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.EXECUTABLES).value == UNRECOGNIZED_RUNTIME


def test_snp_member_is_bounded() -> None:
    assert snp_of({}) is None
    with pytest.raises(EvidenceFormatError, match="snp is not an object"):
        snp_of({"snp": "x"})
    with pytest.raises(EvidenceFormatError, match="snp.report"):
        snp_of({"snp": {"report": "A" * 8000}})


# --- one verdict for host, guest-snp and guest-vtpm ---------------------------------------------


def test_three_layers_affirming_make_one_affirming_ear(amd: FakeAmd) -> None:
    snp = _appraise(amd, _member(amd))
    pair = appraise_pair(
        HOST_OK, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert pair.verdict is Verdict.AFFIRMING and pair.failed_layer is None
    assert list(pair.layers) == [HOST, GUEST_SNP, GUEST_VTPM]
    key = ec.generate_private_key(ec.SECP256R1())
    claims = verify_ear(sign_ear(pair.ear_claims(now=NOW), key), key.public_key())
    assert set(claims["submods"]) == {"host", "guest-snp", "guest-vtpm"}
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
    assert pair.to_json()["layers"].keys() == {"host", "guest-snp", "guest-vtpm"}


def test_replayed_snp_half_contraindicates_the_pair_naming_guest_snp(amd: FakeAmd) -> None:
    earlier = guest_nonce(b"e" * 32)
    snp = _appraise(amd, _member(amd, nonce=earlier))
    pair = appraise_pair(
        HOST_OK, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == GUEST_SNP
    assert (pair.first_divergence or "").startswith("guest-snp layer (g1): ")
    assert "stale or replayed" in (pair.first_divergence or "")
    subs = pair.submods()
    assert subs["guest-snp"]["ear.status"] == "contraindicated"
    assert subs["host"]["ear.status"] == subs["guest-vtpm"]["ear.status"] == "affirming"


def test_spliced_snp_half_is_blamed_on_guest_snp_not_the_host(amd: FakeAmd) -> None:
    # A guest half from an earlier challenge beside a fresh host quote: the host's quote, which
    # committed to the guest evidence of its own verification, fails the commitment to this
    # one (a nonce failure), but the layer that does not fit is the guest's.
    earlier = guest_nonce(b"e" * 32)
    snp = _appraise(amd, _member(amd, nonce=earlier))
    stale = "quote (nonce): the quote does not answer this challenge (stale or replayed)"
    host = result_of(
        [Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "quote:nonce", stale)],
        node_id="host-1",
        nonce=HOST_NONCE,
        now=NOW,
    )
    pair = appraise_pair(
        host, GUEST_OK, None, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == GUEST_SNP
    assert (pair.first_divergence or "").startswith("guest-snp layer (g1): ")
    assert pair.submods()["host"]["ear.status"] == "contraindicated"


def test_snp_layer_appraised_against_another_challenge_is_refused(amd: FakeAmd) -> None:
    other = guest_nonce(b"o" * 32)
    snp = _appraise(amd, _member(amd, nonce=other), nonce=other)  # consistent, but not ours
    assert snp.verdict is Verdict.AFFIRMING
    pair = appraise_pair(
        HOST_OK, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert pair.failed_layer == GUEST_SNP and pair.verdict is Verdict.CONTRAINDICATED
    assert "this pair verification's challenge" in (pair.first_divergence or "")


def test_a_vouching_that_fails_is_blamed_on_guest_vtpm(amd: FakeAmd) -> None:
    snp = _appraise(amd, _member(amd))
    bad_host = ok("host-1", b"x" * 32)  # answers another commitment: blamed on the host
    pair = appraise_pair(
        bad_host, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert pair.failed_layer == HOST
    assert "does not commit to this guest's evidence" in (pair.first_divergence or "")
    unvouched = appraise_pair(
        HOST_OK, GUEST_OK, (), G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST, snp=snp
    )
    assert unvouched.failed_layer == GUEST_VTPM and unvouched.verdict is Verdict.CONTRAINDICATED
    assert EK_B.hex() in (unvouched.first_divergence or "")


def test_without_snp_evidence_the_pair_is_host_and_guest_as_before() -> None:
    pair = appraise_pair(
        HOST_OK, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert list(pair.layers) == ["host", "guest"] and pair.snp is None


def test_guest_snp_layer_of_a_document(amd: FakeAmd) -> None:
    """The verifier chooses: no member is no layer unless required; a member that does not
    parse is a failed layer, never one left out."""
    args = {
        "node_id": "g1",
        "nonce": GUEST_NONCE,
        "ak_public": AK,
        "verifier": SnpVerifier(pins=amd.pins),
        "registry": _registry(),
        "now": NOW,
    }
    assert guest_snp_layer(None, require=True, **args) is None  # the guest layer says why
    assert guest_snp_layer({}, require=False, **args) is None
    required = guest_snp_layer({}, require=True, **args)
    assert required is not None and required.verdict is Verdict.CONTRAINDICATED
    bad = guest_snp_layer({"snp": {"report": 7}}, require=False, **args)
    assert bad is not None and bad.claim(Claim.INSTANCE_IDENTITY).value == CRYPTO_VALIDATION_FAILED
    assert "does not parse" in (bad.first_divergence or "")


def test_the_verifier_named_platform_adds_its_snp_policy(amd: FakeAmd) -> None:
    """The guest's platform (the verifier's --platform / the pair's platform_id) makes the
    policy stricter; the finding names the platform's policy as the one that refused."""
    floor = TcbVersion(bootloader=255, tee=255, snp=255, microcode=255)
    pcrs = PcrValues({HashAlg.SHA256: {0: bytes(32)}})
    ref = PlatformReference("epyc", "SNP host", pcrs, snp=SnpPolicy(min_tcb={Product.MILAN: floor}))
    base = _registry()
    registry = VerifiedRegistry(edit.set_platform(base.snapshot, ref), b"", frozenset())
    assert _appraise(amd, _member(amd), registry=registry).verdict is Verdict.AFFIRMING
    r = _appraise(amd, _member(amd), registry=registry, platform="epyc")
    assert r.verdict is not Verdict.AFFIRMING
    [refusal] = [f for f in r.findings if f.check == "snp-tcb-floor"]
    assert refusal.explanation.endswith("[platform epyc policy]")
