"""The registry of fuzz targets: every bounded parser of the pure core, its seeds and the
documented error it may raise (see ``attest.testing.fuzz``).

Seeds are small valid inputs built here; ``targets(eventlog_dirs=...)`` adds the real firmware
event logs of a corpus directory (``../shared/eventlogs``) when the caller has one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attest import cmw
from attest.ekcert.parse import parse_bundle_lenient, parse_certificate, parse_input, tpm_identity
from attest.errors import (
    AttestError,
    CertificateFormatError,
    CmwFormatError,
    CorimFormatError,
    EventLogFormatError,
    EvidenceFormatError,
    ManifestFormatError,
    QuoteFormatError,
    ReplayError,
    SnpFormatError,
    UkiFormatError,
    VerificationError,
    VerityFormatError,
)
from attest.eventlog.cel import dumps_cel, loads_cel, new_record, parse_ima_log
from attest.eventlog.parse import parse_event_log
from attest.eventlog.replay import replay, replay_pcrs, replay_self
from attest.evidence import (
    b64,
    pair_evidence_digest,
    parse_evidence,
    parse_snp_only,
    snp_member,
    snp_only_members,
)
from attest.manifest import edit
from attest.manifest.corim import corim_map
from attest.manifest.corim_parse import parse_comid, parse_corim, platform_reference
from attest.manifest.envelope import Key, UnverifiedEnvelope, sign
from attest.manifest.model import (
    PlatformReference,
    Release,
    ReleaseSnp,
    SnpLaunch,
    VerifiedRegistry,
    VerityParams,
)
from attest.manifest.parse import load_registry, load_root
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.quote import DEFAULT_POLICY, _verify_quote_reference, verify_quote
from attest.snp.certs import AmdCertificate, crl_signed_by, load_certificates, load_crl
from attest.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table, parse_cert_table
from attest.snp.policy import SnpPolicy
from attest.snp.report import Product, TcbVersion, parse_report
from attest.testing.fuzz import Target
from attest.testing.snp import build_report
from attest.tpmstruct import (
    TPM_ST_ATTEST_QUOTE,
    Alg,
    ClockInfo,
    ObjectAttr,
    Public,
    Signature,
    build_attest,
    build_signature,
    digest_of_values,
    parse_attest,
    parse_public,
    parse_signature,
    public_from_key,
)
from attest.uki import authenticode_digest, parse_uki, predict_pcrs
from attest.verity.devices import parse_verity_status, parse_verity_table

_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
_FAR = datetime(2036, 1, 1, tzinfo=UTC)
_NOW = datetime(2026, 1, 1, tzinfo=UTC)

# --- TPM structures --------------------------------------------------------------------------


def _tpm_seeds() -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]:
    sel = PcrSelection.of({HashAlg.SHA256: range(8), HashAlg.SHA1: [0, 7]})
    attests = tuple(
        build_attest(
            qualified_signer=b"\x00\x0b" + bytes(32),
            extra_data=nonce,
            clock_info=ClockInfo(123456, 3, 1, True),
            firmware_version=0x2000_0001,
            pcr_select=s,
            pcr_digest=bytes(range(32)),
            st=TPM_ST_ATTEST_QUOTE,
        )
        for nonce, s in ((b"n" * 32, sel), (b"", PcrSelection.of({HashAlg.SHA256: [23]})))
    )
    sigs = (
        build_signature(Signature(Alg.ECDSA, HashAlg.SHA256, r=b"\x01" * 32, s=b"\x02" * 32)),
        build_signature(Signature(Alg.RSASSA, HashAlg.SHA256, sig=b"\x03" * 256)),
    )
    attrs = ObjectAttr(0x00050072)
    ecc = ec.derive_private_key(7, ec.SECP256R1()).public_key()
    rsa_key = _rsa_key().public_key()
    publics = (
        public_from_key(
            ecc, attributes=attrs, scheme=Alg.ECDSA, scheme_hash=HashAlg.SHA256
        ).tpm2b(),
        public_from_key(
            rsa_key, attributes=attrs, scheme=Alg.RSASSA, scheme_hash=HashAlg.SHA256
        ).tpm2b(),
    )
    return attests, sigs, publics


@cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- quote verification: the fast path against the reference --------------------------------

_QUOTE_NONCE = b"q" * 32
_QUOTE_SEL = PcrSelection.of({HashAlg.SHA256: range(8), HashAlg.SHA1: [0, 7]})
_QUOTE_PCRS = PcrValues(
    {alg: {i: bytes([i + 1]) * alg.digest_size for i in idx} for alg, idx in _QUOTE_SEL.banks}
)


@cache
def _quote_aks() -> tuple[tuple[Public, Callable[[bytes], bytes]], ...]:
    """An ECC P-256 and an RSA-2048 AK, each with a function that signs as a TPM does."""
    ecc = ec.derive_private_key(11, ec.SECP256R1())
    rsa_key = _rsa_key()

    def sign_ecdsa(message: bytes) -> bytes:
        r, s = decode_dss_signature(ecc.sign(message, ec.ECDSA(hashes.SHA256())))
        sig = Signature(Alg.ECDSA, HashAlg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
        return build_signature(sig)

    def sign_rsassa(message: bytes) -> bytes:
        raw = rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return build_signature(Signature(Alg.RSASSA, HashAlg.SHA256, sig=raw))

    attrs = ObjectAttr(0x00050072)
    return (
        (public_from_key(ecc.public_key(), attributes=attrs, scheme=Alg.ECDSA,
                         scheme_hash=HashAlg.SHA256), sign_ecdsa),
        (public_from_key(rsa_key.public_key(), attributes=attrs, scheme=Alg.RSASSA,
                         scheme_hash=HashAlg.SHA256), sign_rsassa),
    )  # fmt: skip


def _quote_seeds() -> tuple[bytes, ...]:
    """Genuine quotes as ``_quote_verify`` takes them: which AK (one byte), the TPMS_ATTEST's
    size (two bytes), the TPMS_ATTEST and the TPMT_SIGNATURE."""
    seeds = []
    for which, (ak, sign_as_tpm) in enumerate(_quote_aks()):
        attest = build_attest(
            qualified_signer=ak.name,
            extra_data=_QUOTE_NONCE,
            clock_info=ClockInfo(123456, 3, 1, True),
            firmware_version=0x2000_0001,
            pcr_select=_QUOTE_SEL,
            pcr_digest=digest_of_values(HashAlg.SHA256, _QUOTE_PCRS.values, _QUOTE_SEL),
        )
        seeds.append(bytes([which]) + len(attest).to_bytes(2, "big") + attest + sign_as_tpm(attest))
    return tuple(seeds)


def _quote_verify(data: bytes) -> object:
    """``verify_quote`` (its fast path first) and the reference path on the same quote, AK,
    nonce and PCR values: the same result or the same error with the same message, else an
    ``AssertionError`` (a finding)."""
    if len(data) < 3:
        raise QuoteFormatError("quote fuzz input: shorter than its header")
    ak = _quote_aks()[data[0] & 1][0]
    size = int.from_bytes(data[1:3], "big")
    attest, signature = data[3 : 3 + size], data[3 + size :]
    try:
        fast: object = verify_quote(attest, signature, ak=ak, nonce=_QUOTE_NONCE, pcrs=_QUOTE_PCRS)
    except AttestError as exc:
        fast = exc
    try:
        ref: object = _verify_quote_reference(
            attest, signature, ak, _QUOTE_NONCE, _QUOTE_PCRS, None, DEFAULT_POLICY
        )
    except AttestError as exc:
        ref = exc
    if _outcome(fast) != _outcome(ref):
        raise AssertionError(f"fast path: {fast!r}; reference: {ref!r}")
    if isinstance(fast, AttestError):
        raise fast
    return fast


def _outcome(result: object) -> object:
    return (type(result), str(result)) if isinstance(result, AttestError) else result


# --- event logs ------------------------------------------------------------------------------


def _spec_id_log(events: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A minimal crypto-agile log (PFP §10.4.5): the Spec ID event, then SHA-256 events."""
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)
    spec += struct.pack("<HH", HashAlg.SHA256, 32) + b"\x00"
    out = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, etype, data in events:
        out += struct.pack("<III", pcr, etype, 1) + struct.pack("<H", HashAlg.SHA256)
        out += hashlib.sha256(data).digest() + struct.pack("<I", len(data)) + data
    return out


def _eventlog_seeds(dirs: Sequence[Path]) -> tuple[bytes, ...]:
    built = _spec_id_log(
        [(0, 0x8, b"\x00" * 4)]  # EV_S_CRTM_VERSION
        + [(pcr, 0x4, b"\x00" * 4) for pcr in range(8)]  # EV_SEPARATOR
        + [(4, 0x80000003, b"\x00" * 40)]  # EV_EFI_BOOT_SERVICES_APPLICATION
    )
    real = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.glob("*.bin"))]
    return (built, *[r for r in real if len(r) <= 1 << 16])


def _replay_against(quoted: PcrValues) -> Callable[[bytes], object]:
    def call(data: bytes) -> object:
        log = parse_event_log(data)
        replay_self(log)
        return replay(log, quoted)

    return call


def _cel_seed() -> bytes:
    records = [
        new_record(0, 11, b"kernel", content_type="systemd", content={"string": "enter-initrd"}),
        new_record(1, 15, b"machine-id", content_type="systemd", content={"string": "x"}),
    ]
    return dumps_cel(records).encode()


def _ima_seed() -> bytes:
    name = b"ima-ng"
    template = struct.pack("<I", 40) + b"sha256:\x00" + bytes(32) + struct.pack("<I", 5) + b"/bin\0"
    return (
        struct.pack("<I", 10)
        + bytes(20)
        + struct.pack("<I", len(name))
        + name
        + (struct.pack("<I", len(template)) + template)
    )


# --- manifests, evidence ---------------------------------------------------------------------


def _signed(signed: dict[str, object], private: ed25519.Ed25519PrivateKey) -> bytes:
    env = UnverifiedEnvelope(signed, ())
    keyid = Key.of_private(private).keyid
    return env.with_signature(keyid, sign(private, env.signed_bytes)).to_bytes()


def _manifest_seeds() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    key = Key.of_private(private)
    root = edit.new_root(
        version=1,
        expires=_FAR,
        role_keys={"root": [key], "releases": [key], "platform": [key]},
        thresholds={"root": 1, "releases": 1, "platform": 1},
    )
    registry = edit.empty_registry(expires=_FAR)
    with_snp = edit.bless(registry, _snp_release())
    pcrs = PcrValues({HashAlg.SHA256: {0: bytes(32)}})
    policy = SnpPolicy(min_tcb={Product.MILAN: TcbVersion(1, 2, 3, 4)}, allow_smt=False)
    ref = PlatformReference("fuzz", "fuzz platform", pcrs, snp=policy, snp_bind_host_data=True)
    with_platform = edit.set_platform(with_snp, ref)  # reaches the platform's snp policy
    registries = tuple(_signed(r.to_json(), private) for r in (registry, with_snp, with_platform))
    return (_signed(root.to_json(), private),), registries


def _snp_release() -> Release:
    """A release with an SNP section (two slots, a TCB floor, chip ids): the registry seed that
    reaches ``parse_release_snp``."""
    digest = hashlib.sha256(b"fuzz").digest()
    launches = tuple(
        SnpLaunch(slot, bytes([n]) * 48, 4, "EPYC-v4", digest, digest, None, digest)
        for n, slot in enumerate(("a", "b"), start=1)
    )
    policy = SnpPolicy(
        min_tcb={Product.TURIN: TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)},
        allowed_chip_ids=frozenset({b"\x01" * 64}),
    )
    return Release(
        version="1.0.0",
        sequence=1,
        artifact_sha256=digest,
        artifact_size=4096,
        verity=VerityParams(root_hash=digest, salt=b"", data_blocks=1),
        blessed_at=_FAR,
        source_commit=bytes(20),
        snp=ReleaseSnp(launches, policy, bind_host_data=True),
    )


def _corim_seeds() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """A registry's CoRIM (release with PCRs and SNP launches, a platform reference), unsigned
    and as a COSE_Sign1 whose signature is not checked (fixed bytes: the seeds stay the same
    from run to run); and its CoMIDs."""
    pcrs = PcrValues({HashAlg.SHA256: {i: bytes([i]) * 32 for i in range(8)}})
    release = replace(_snp_release(), expected_pcrs={"fuzz": {"a": pcrs}})
    snap = edit.set_platform(
        edit.bless(edit.empty_registry(expires=_FAR), release),
        PlatformReference("fuzz", "fuzz platform", pcrs),
    )
    doc = corim_map(VerifiedRegistry(snap, b"", frozenset()), signer="fuzz", now=_NOW)
    payload = cbor2.dumps(cbor2.CBORTag(501, doc), canonical=True)
    meta = cbor2.dumps({0: {0: "fuzz"}, 1: {1: cbor2.CBORTag(1, int(_FAR.timestamp()))}})
    claims = {1: "fuzz", 4: int(_FAR.timestamp()), 5: 0}
    protected = cbor2.dumps({1: -7, 3: "application/rim+cbor", 4: b"k", 8: meta, 15: claims})
    signed = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, bytes(64)]))
    return (payload, signed), tuple(t.value for t in doc[1])


def _corim(data: bytes) -> object:
    """Parse, then make the platform reference the CLI's import makes."""
    return platform_reference(parse_corim(data), platform_id="fuzz", select="attest:platform:")


def _evidence_seed(attest: bytes, sig: bytes, public: bytes) -> bytes:
    pcrs = PcrValues({HashAlg.SHA256: {i: bytes([i]) * 32 for i in range(8)}})
    doc = {
        "version": 1,
        "node_id": "node-1",
        "quote": {"attest": b64(attest), "signature": b64(sig)},
        "pcrs": pcrs.to_json(),
        "batch": {"size": 2, "index": 1, "proof": ["ab" * 32], "tls_binding": "cd" * 32},
        "ak": {"public": b64(public)},
    }
    return json.dumps(doc).encode()


def _evidence(data: bytes) -> object:
    """The verifier decodes the JSON body, then parses the document: JSON that does not decode
    is refused before the evidence parser, so it counts as refused here."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise EvidenceFormatError("not JSON") from None
    return parse_evidence(doc)


def _snp_only_seed(report: bytes, table: bytes) -> bytes:
    doc = snp_only_members(
        node_id="guest-1",
        snp=snp_member(report, table, b"\x30\x03\x01\x01\xff"),
        cmdline="ro",
        image_version="1.0.0",
        image_slot="a",
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return json.dumps(doc).encode()


def _snp_only(data: bytes) -> object:
    """A guest without a vTPM: the document as ``parse_snp_only`` reads it, and the digest a
    pair's host nonce commits to."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise EvidenceFormatError("not JSON") from None
    return parse_snp_only(doc), pair_evidence_digest(doc, vtpm=False)


def _cmw_seeds(evidence: bytes) -> tuple[bytes, ...]:
    """Attest's own CMW forms (a record, a pair; JSON and CBOR), and a collection with a
    Content-Format record, a CBOR tag CMW and a tunnel (veraison/cmw's
    collection-and-tunnel example)."""
    record = cmw.evidence_record(evidence)
    pair = cmw.pair_collection(evidence, evidence)
    foreign = cbor2.dumps(
        {
            "__cmwc_t": "tag:example.com,2024:composite-attester",
            0: [30001, bytes.fromhex("2347da55"), 4],
            1: cbor2.CBORTag(1668576935, bytes.fromhex("2347da55")),
            2: ["#cmw-j2c-tunnel", b'["application/eat+jwt","Li4u",8]'],
        }
    )
    c2j = json.dumps({"x": ["#cmw-c2j-tunnel", cmw.b64url(cmw.encode_cbor(record))]}).encode()
    return (
        cmw.encode_json(record),
        cmw.encode_cbor(record),
        cmw.encode_json(pair),
        cmw.encode_cbor(pair),
        foreign,
        c2j,
    )


def _cmw(data: bytes) -> object:
    """Decode a CMW, then read it as a saved evidence file (what ``attest verify --evidence``
    does before the evidence parser)."""
    with contextlib.suppress(CmwFormatError):
        cmw.decode(data)
    return cmw.read_saved_evidence(data)


# --- dm-verity, UKI --------------------------------------------------------------------------

_VERITY_TABLES = (
    "0 16384 verity 1 /dev/sda1 /dev/sda2 4096 4096 2048 2049 sha256 "
    + "ab" * 32
    + " "
    + "01" * 32,
    "0 8 verity 1 253:1 253:2 4096 4096 1 2 sha256 " + "ab" * 32 + " - 3 "
    "restart_on_corruption ignore_zero_blocks check_at_most_once",
    "0 8 verity 1 8:1 8:2 512 4096 8 9 sha1 " + "ab" * 20 + " 00 8 use_fec_from_device 8:3 "
    "fec_roots 2 fec_blocks 10 fec_start 11",
)
_VERITY_STATUS = ("0 16384 verity V", "0 16384 verity C", "0 8 verity V 12", "0 8 verity V -")


def _text(parse: Callable[[str], object]) -> Callable[[bytes], object]:
    def call(data: bytes) -> object:
        return parse(data.decode("utf-8", "surrogateescape"))

    return call


def _pe(sections: Sequence[tuple[str, bytes]]) -> bytes:
    """A minimal PE32+ image (as in tests/unit/test_uki.py's make_pe, without a certificate)."""
    falign, salign, pe_off, opt_size = 0x200, 0x1000, 0x80, 112 + 16 * 8
    table = pe_off + 4 + 20 + opt_size
    headers = -(-(table + 40 * len(sections)) // falign) * falign
    raw, ptr, va, rows = b"", headers, salign, []
    for name, data in sections:
        size = -(-len(data) // falign) * falign
        rows.append(struct.pack("<8sIIII12xI", name.encode(), len(data), va, size, ptr, 0x40000040))
        raw += data + bytes(size - len(data))
        ptr += size
        va += -(-size // salign) * salign
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", pe_off)
    dos += bytes(pe_off - len(dos))
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x22)
    opt = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        *(0x20B, 0, 0, len(raw), 0, 0, 0x1000, 0x1000, 0, salign, falign),
        *(0, 0, 0, 0, 0, 0, 0, va, headers, 0, 10, 0, 0, 0, 0, 0, 0, 16),
    )
    hdr = dos + coff + opt + bytes(16 * 8) + b"".join(rows)
    return hdr + bytes(headers - len(hdr)) + raw


def _uki(data: bytes) -> object:
    parse_uki(data)
    authenticode_digest(data)
    return predict_pcrs(data)


# --- certificates ----------------------------------------------------------------------------


def _certificate() -> x509.Certificate:
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz EK")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(_FAR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DirectoryName(x509.Name([x509.NameAttribute(_TPM_MANUFACTURER, "id:1")]))]
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _ekcert(data: bytes) -> object:
    """Parse, then read what enrollment reads of an unverified EK certificate."""
    return tpm_identity(parse_certificate(data))


def _snp_seeds(der: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    tcb = TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
    reports = tuple(
        build_report(key=None, product=p, tcb=tcb, chip_id=b"\x42" * 64, report_data=b"r" * 64)
        for p in (Product.MILAN, Product.TURIN)
    )
    table = build_cert_table({VCEK_GUID: der, ASK_GUID: der, ARK_GUID: der})
    return reports, (table, build_cert_table({uuid.UUID(int=1): der}))


def _crl_seeds() -> tuple[bytes, ...]:
    key, now = _rsa_key(), datetime(2025, 1, 1, tzinfo=UTC)
    revoked = x509.RevokedCertificateBuilder().serial_number(7).revocation_date(now).build()
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan")]))
        .last_update(now)
        .next_update(_FAR)
        .add_revoked_certificate(revoked)
        .sign(key, hashes.SHA384())
    )
    return crl.public_bytes(serialization.Encoding.DER), crl.public_bytes(
        serialization.Encoding.PEM
    )


def _crl(issuer: AmdCertificate) -> Callable[[bytes], object]:
    def call(data: bytes) -> object:
        return crl_signed_by(load_crl(data), issuer)

    return call


def _snp_certtable(data: bytes) -> object:
    table = parse_cert_table(data)
    return [load_certificates(der) for der in table.entries.values()]


# --- the registry ----------------------------------------------------------------------------


def _t(
    name: str,
    call: Callable[[bytes], object],
    seeds: Sequence[bytes],
    *errors: type[AttestError],
) -> Target:
    return Target(name, call, tuple(seeds), errors)


def targets(*, eventlog_dirs: Sequence[Path] = ()) -> list[Target]:
    """Every fuzz target, with its seeds (plus the event logs found in ``eventlog_dirs``)."""
    attests, sigs, publics = _tpm_seeds()
    logs = _eventlog_seeds(eventlog_dirs)
    quoted = replay_pcrs(parse_event_log(logs[0]))
    roots, registries = _manifest_seeds()
    corims, comids = _corim_seeds()
    cert = _certificate()
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    reports, tables = _snp_seeds(der)
    kernel = _pe([(".text", b"\x90" * 300)])
    linux = [(".osrel", b"ID=fuzz\n"), (".cmdline", b"ro quiet"), (".linux", kernel)]
    return [
        _t("tpms-attest", parse_attest, attests, QuoteFormatError),
        _t("tpmt-signature", parse_signature, sigs, QuoteFormatError),
        _t("tpm2b-public", parse_public, publics, QuoteFormatError),
        _t("quote-verify", _quote_verify, _quote_seeds(), QuoteFormatError, VerificationError),
        _t("eventlog", parse_event_log, logs, EventLogFormatError),
        _t(
            "eventlog-strict",
            lambda d: parse_event_log(d, strict=True),
            logs,
            EventLogFormatError,
        ),
        _t("eventlog-replay", _replay_against(quoted), logs, EventLogFormatError, ReplayError),
        _t("cel", loads_cel, [_cel_seed()], EventLogFormatError),
        _t("ima", parse_ima_log, [_ima_seed()], EventLogFormatError),
        _t("manifest-root", load_root, roots, ManifestFormatError),
        _t("manifest-registry", load_registry, registries, ManifestFormatError),
        _t("corim", _corim, corims, CorimFormatError),
        _t("comid", parse_comid, comids, CorimFormatError),
        _t(
            "evidence",
            _evidence,
            [_evidence_seed(attests[0], sigs[0], publics[0])],
            EvidenceFormatError,
        ),
        _t(
            "evidence-snp-only",
            _snp_only,
            [_snp_only_seed(reports[0], tables[0])],
            EvidenceFormatError,
        ),
        _t(
            "cmw",
            _cmw,
            _cmw_seeds(_evidence_seed(attests[0], sigs[0], publics[0])),
            CmwFormatError,
        ),
        _t(
            "verity-table",
            _text(parse_verity_table),
            [s.encode() for s in _VERITY_TABLES],
            VerityFormatError,
        ),  # fmt: skip
        _t(
            "verity-status",
            _text(parse_verity_status),
            [s.encode() for s in _VERITY_STATUS],
            VerityFormatError,
        ),  # fmt: skip
        _t("uki", _uki, [_pe(linux), _pe(linux[1:])], UkiFormatError),
        _t("ekcert", _ekcert, [der], CertificateFormatError),
        _t("ekcert-pem", parse_input, [pem, der], CertificateFormatError),
        _t("ekcert-bundle", parse_bundle_lenient, [pem + pem, der], CertificateFormatError),
        _t("snp-report", parse_report, reports, SnpFormatError),
        _t("snp-certtable", _snp_certtable, tables, SnpFormatError),
        _t("snp-certs", load_certificates, [pem, der], SnpFormatError),
        _t("snp-crl", _crl(load_certificates(der)[0]), _crl_seeds(), SnpFormatError),
    ]


def by_name(*, eventlog_dirs: Sequence[Path] = ()) -> dict[str, Target]:
    return {t.name: t for t in targets(eventlog_dirs=eventlog_dirs)}


__all__ = ["by_name", "targets"]
