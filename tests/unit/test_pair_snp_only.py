"""A confidential guest **without a vTPM** in a pair (docs/snp.md, "A guest without a vTPM"):
the guest's document is its SEV-SNP report alone (``attest.evidence.snp_only_members``), the
host vouches for it by its chip (``snp-host`` runtime events, ``HostChips``), and the pair is
``host`` + ``guest-snp``. Reports are signed by the fake AMD chain (``attest.testing.snp``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cli import verify_main
from tests.support.manifest import NOW, snp_registry
from tests.unit.snp.fakes import fake

from attest.appraisal import AppraisalResult, result_of
from attest.appraisal.claims import (
    CONTRAINDICATED_HARDWARE,
    TRUSTWORTHY_INSTANCE,
    UNRECOGNIZED_INSTANCE,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Verdict,
)
from attest.appraisal.ear import sign_ear, verify_ear
from attest.appraisal.layers import GUEST_SNP, HOST
from attest.appraisal.pair import (
    CHECK,
    GuestIdentity,
    appraise_pair,
    guest_evidence_of,
    guest_nonce,
    host_chips_of,
    host_nonce,
)
from attest.appraisal.snp import HostChips, guest_snp_layer
from attest.cli._verify_common import EXIT_CODES
from attest.errors import EventLogFormatError, EvidenceFormatError
from attest.evidence import pair_evidence_digest, parse_snp_only, snp_member, snp_only_members
from attest.manifest.model import VerifiedRegistry
from attest.runtime import KIND_SNP_HOST, RuntimeEvent, SnpHostChip, parse_content
from attest.snp.certs import load_crl
from attest.snp.certtable import ARK_GUID, ASK_GUID, VLEK_GUID, build_cert_table
from attest.snp.report import Product, Signer
from attest.snp.reportdata import encode_report_data
from attest.snp.verify import SnpVerifier
from attest.testing.snp import FakeAmd, guest_cert_table, make_crl

CHALLENGE = b"s" * 32
GUEST_NONCE = guest_nonce(CHALLENGE)
BLESSED = b"\x5c" * 48
SPKI = b"\x30\x59" + b"t" * 89
OTHER_CHIP = b"\x42" * 64


@pytest.fixture()
def amd() -> FakeAmd:
    return fake(Product.GENOA)


def _registry() -> VerifiedRegistry:
    return snp_registry("4.0.0", BLESSED, sequence=7)


def _doc(
    amd: FakeAmd,
    *,
    nonce: bytes = GUEST_NONCE,
    spki: bytes | None = SPKI,
    signer: Signer = Signer.VCEK,
    **fields: object,
) -> dict[str, Any]:
    """What a guest without a vTPM answers: its report binding (nonce, TLS key), no AK."""
    data = encode_report_data(nonce=nonce, tls_spki=spki, vtpm_ak=None)
    fields.setdefault("measurement", BLESSED)
    report = amd.report(report_data=data, signer=signer, **fields)
    table = (
        build_cert_table({VLEK_GUID: amd.vlek.der, ASK_GUID: amd.asvk.der, ARK_GUID: amd.ark.der})
        if signer is Signer.VLEK
        else guest_cert_table(amd)
    )
    return snp_only_members(
        node_id="g1",
        snp=snp_member(report, table, spki),
        cmdline=None,
        image_version="4.0.0",
        image_slot="a",
        time=NOW,
    )


def _layer(
    amd: FakeAmd,
    doc: dict[str, Any] | None,
    chips: tuple[bytes, ...] | None,
    *,
    peer: bytes | None = None,
    nonce: bytes = GUEST_NONCE,
    now: dt.datetime = NOW,
) -> AppraisalResult | None:
    crl = load_crl(make_crl(amd, this_update=now - dt.timedelta(days=1)))
    return guest_snp_layer(
        doc,
        require=False,
        node_id="",
        nonce=nonce,
        ak_public=None,
        verifier=SnpVerifier(pins=amd.pins),
        registry=_registry(),
        crls=[crl],
        now=now,
        host_chips=HostChips("host-1", chips),
        peer_binding=peer,
    )


def _host(doc: dict[str, Any] | None, value: int = TRUSTWORTHY_INSTANCE) -> AppraisalResult:
    """The host layer, appraised with the host nonce committing to ``doc``."""
    digest = guest_evidence_of(doc, vtpm=False)
    return result_of(
        [Finding(Claim.INSTANCE_IDENTITY, value, "quote", "host quote")],
        node_id="host-1",
        nonce=host_nonce(CHALLENGE, digest),
        now=NOW,
    )


def _pair(amd: FakeAmd, doc: dict[str, Any], chips: tuple[bytes, ...] | None, **kw: Any) -> Any:
    snp = _layer(amd, doc, chips, peer=kw.pop("peer", None), now=kw.pop("now", NOW))
    assert snp is not None
    host = kw.pop("host", None) or _host(doc)
    return appraise_pair(
        host,
        None,
        None,
        GuestIdentity("g1", None),
        challenge=CHALLENGE,
        guest_evidence=guest_evidence_of(doc, vtpm=False),
        snp=snp,
    )


def test_guest_on_the_hosts_chip_is_one_affirming_pair_of_two_layers(amd: FakeAmd) -> None:
    doc = _doc(amd)
    pair = _pair(amd, doc, (amd.chip_id,), peer=hashlib.sha256(SPKI).digest())
    assert pair.verdict is Verdict.AFFIRMING, pair.first_divergence
    assert list(pair.layers) == [HOST, GUEST_SNP]
    assert pair.guest is None and pair.guest_name == GUEST_SNP
    assert pair.vouch.check == CHECK and pair.vouch.value == TRUSTWORTHY_INSTANCE
    assert "recorded as its own" in pair.vouch.explanation
    assert "release 4.0.0" in " ".join(pair.guest_result.notes)
    key = ec.generate_private_key(ec.SECP256R1())
    token = sign_ear(pair.ear_claims(now=NOW), key)
    claims = verify_ear(token, key.public_key())
    assert set(claims["submods"]) == {HOST, GUEST_SNP}
    assert all(s["ear.status"] == "affirming" for s in claims["submods"].values())


def test_guest_on_another_chip_is_contraindicated_naming_guest_snp(amd: FakeAmd) -> None:
    pair = _pair(amd, _doc(amd), (OTHER_CHIP,))
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.failed_layer == GUEST_SNP
    assert pair.vouch.value == UNTRUSTWORTHY_INSTANCE
    assert "not on host-1's" in (pair.first_divergence or "")


def test_host_that_recorded_no_chip_vouches_for_nothing(amd: FakeAmd) -> None:
    pair = _pair(amd, _doc(amd), ())
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert "recorded no SEV-SNP chip" in pair.vouch.explanation


def test_host_log_not_verified_vouches_for_nothing(amd: FakeAmd) -> None:
    pair = _pair(amd, _doc(amd), None)
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.vouch.value == UNTRUSTWORTHY_INSTANCE
    assert "did not verify" in pair.vouch.explanation


def test_vlek_report_names_no_chip_and_cannot_be_tied_to_the_host(amd: FakeAmd) -> None:
    in_validity = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)  # the fake VLEK expires end of 2024
    pair = _pair(amd, _doc(amd, signer=Signer.VLEK), (amd.chip_id,), now=in_validity)
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.vouch.value == UNRECOGNIZED_INSTANCE
    assert "VLEK names no chip" in pair.vouch.explanation


def test_report_from_an_earlier_challenge_is_stale_and_blamed_on_guest_snp(amd: FakeAmd) -> None:
    old = _doc(amd, nonce=guest_nonce(b"e" * 32))
    pair = _pair(amd, old, (amd.chip_id,))
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.failed_layer == GUEST_SNP
    assert "stale or replayed" in (pair.first_divergence or "")


def test_host_quote_committed_to_other_guest_evidence_is_blamed_on_the_host(
    amd: FakeAmd,
) -> None:
    doc = _doc(amd)
    other = _doc(amd)  # a fresh report of the same guest: other bytes (another signature)
    assert guest_evidence_of(other, vtpm=False) != guest_evidence_of(doc, vtpm=False)
    pair = _pair(amd, doc, (amd.chip_id,), host=_host(other))
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.failed_layer == HOST
    assert "does not commit to this guest's evidence" in (pair.first_divergence or "")


def test_contraindicated_host_cannot_vouch(amd: FakeAmd) -> None:
    doc = _doc(amd)
    pair = _pair(amd, doc, (amd.chip_id,), host=_host(doc, UNTRUSTWORTHY_INSTANCE))
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.failed_layer == HOST
    assert "outside policy cannot vouch" in pair.vouch.explanation
    vouched = [f for f in pair.guest_result.findings if f.check == CHECK]
    assert vouched[-1] == pair.vouch  # the pair's word, after the layer's own findings


def test_tls_key_must_be_the_one_the_connection_saw(amd: FakeAmd) -> None:
    doc = _doc(amd)
    chips = (amd.chip_id,)
    other = hashlib.sha256(b"another key").digest()
    refused = _layer(amd, doc, chips, peer=other)
    assert refused is not None and refused.verdict is Verdict.CONTRAINDICATED
    assert "not the one the evidence is bound to" in (refused.first_divergence or "")
    plain = _layer(amd, doc, chips, peer=b"")  # plain HTTP: no key, but the report binds one
    assert plain is not None and plain.verdict is Verdict.CONTRAINDICATED
    offline = _layer(amd, doc, chips, peer=None)  # offline: the document's own key
    assert offline is not None and offline.verdict is Verdict.AFFIRMING


def test_document_without_a_report_fails_closed(amd: FakeAmd) -> None:
    doc = _doc(amd)
    del doc["snp"]
    layer = _layer(amd, doc, (amd.chip_id,))
    assert layer is not None and layer.verdict is Verdict.CONTRAINDICATED
    assert "no snp member" in (layer.first_divergence or "")
    assert guest_evidence_of(doc, vtpm=False) is None


def test_below_the_tcb_floor_is_still_checked(amd: FakeAmd) -> None:
    """The chip vouching does not replace the release's policy: a report that fails the
    CRL check (none given) is refused on hardware."""
    doc = _doc(amd)
    layer = guest_snp_layer(
        doc,
        require=False,
        node_id="",
        nonce=GUEST_NONCE,
        ak_public=None,
        verifier=SnpVerifier(pins=amd.pins),
        registry=_registry(),
        crls=[],
        now=NOW,
        host_chips=HostChips("host-1", (amd.chip_id,)),
    )
    assert layer is not None and layer.claim(Claim.HARDWARE).value == CONTRAINDICATED_HARDWARE


def test_snp_only_digest_is_domain_separated_and_reads_only_the_report(amd: FakeAmd) -> None:
    doc = _doc(amd)
    digest = pair_evidence_digest(doc, vtpm=False)
    changed = {**doc, "image": {"version": "9.9.9", "slot": "b"}, "time": "x"}
    assert pair_evidence_digest(changed, vtpm=False) == digest
    with pytest.raises(EvidenceFormatError):
        pair_evidence_digest(doc)  # read as a vTPM guest's document: no quote
    report = parse_snp_only(doc).snp.report
    assert digest != hashlib.sha256(report).digest()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(node_id=7),
        lambda d: d.update(snp="x"),
        lambda d: d["snp"].update(report="!!"),
        lambda d: d.pop("snp"),
    ],
)
def test_parse_snp_only_refuses_malformed_documents(amd: FakeAmd, mutate: Any) -> None:
    doc = _doc(amd)
    doc["snp"] = dict(doc["snp"])
    mutate(doc)
    with pytest.raises(EvidenceFormatError):
        parse_snp_only(doc)
    with pytest.raises(EvidenceFormatError):
        parse_snp_only([doc])


def test_snp_host_event_is_typed_and_bounded() -> None:
    chip = b"\xab" * 64
    detail = parse_content(KIND_SNP_HOST, {"chip_id": chip.hex()})
    assert detail == SnpHostChip(chip)
    event = RuntimeEvent(3, KIND_SNP_HOST, {"chip_id": chip.hex()}, detail)
    assert host_chips_of([event]) == (chip,)
    for bad in (
        {"chip_id": (b"\x00" * 64).hex()},
        {"chip_id": chip.hex()[:-2]},
        {"chip_id": chip.hex().upper()},
        {"chip_id": chip.hex(), "extra": 1},
        {},
    ):
        with pytest.raises(EventLogFormatError):
            parse_content(KIND_SNP_HOST, bad)


def test_cli_no_guest_vtpm_with_snp_off_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = verify_main(
        [
            "http://127.0.0.1:9",
            "--host",
            "http://127.0.0.1:9",
            "--no-guest-vtpm",
            "--snp",
            "off",
            "--state",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "--no-guest-vtpm" in capsys.readouterr().err


def test_cli_unreachable_guest_without_vtpm_is_unappraisable_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on port 9: the guest layer cannot be appraised, the pair says so (and
    the host, asked with a nonce committing to no guest evidence, is unreachable too)."""
    code = verify_main(
        [
            "http://127.0.0.1:9",
            "--host",
            "http://127.0.0.1:9",
            "--no-guest-vtpm",
            "--state",
            str(tmp_path),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_CODES[Verdict.UNAPPRAISABLE]
    assert set(out["layers"]) == {HOST, GUEST_SNP}
    assert "node unreachable" in out["layers"][GUEST_SNP]["explanation"]
