"""The evidence document ``attestd`` returns for a challenge, and its verification. Pure.

The document (JSON; digests hex, blobs base64) -- ``POST /v1/evidence`` in docs/api.md::

    {"version": 1, "node_id": str,
     "quote": {"attest": b64 TPMS_ATTEST, "signature": b64 TPMT_SIGNATURE},
     "pcrs": {"sha256": {"0": hex, ...}, ...},
     "batch": {"size": n, "index": i, "proof": [hex, ...], "tls_binding": hex | null},
     "ak": {"public": b64 TPM2B_PUBLIC, "name": hex},
     "firmware_log": {"start": byte offset, "total": bytes, "data": b64} | null,
     "runtime_log": {"pcr": n, "start": recnum, "records": [CEL JSON records]} | null,
     "verity": {...} | null, "boot": {"cmdline": str | null},
     "image": {"version": str | null, "slot": str | null},
     "time": ISO 8601 (the node's clock; informational),
     "snp": {"report": b64, "certs": b64 | null, "tls_spki": b64 | null}   (SEV-SNP guests only)}

An SEV-SNP guest **without a TPM** (docs/snp.md, "A guest without a vTPM") answers with the
members it has -- ``version``, ``node_id``, ``snp``, ``boot``, ``image``, ``time``
(``snp_only_members``) -- and no ``quote``, ``pcrs``, ``batch`` or ``ak``. Which shape a
verifier reads is its own choice (``parse_snp_only`` for a guest it appraises without a vTPM),
never the document's.

``snp`` (``snp_member`` / ``snp_of``; docs/snp.md, "Guest evidence"): the guest's SEV-SNP
ATTESTATION_REPORT, the certificate table the host served with it (configfs-TSM ``auxblob``),
and the guest's TLS key (SubjectPublicKeyInfo DER) when it serves TLS. Its REPORT_DATA binds
this challenge's nonce, that TLS key and the AK of this document under the versioned encoding
of ``attest.snp.reportdata``, so the report belongs to this answer and no other.

This module is the document's one home. The node side builds it from ``quote_members`` (the
members every challenge one quote answers shares; attestd encodes them once per quote) and
``challenge_members`` (the place in the batch and the logs asked for), with
``firmware_log_member`` / ``runtime_log_member`` for the logs; ``encode_members`` and
``join_encoded`` make the bytes. The verifier side reads it with ``parse_evidence`` ->
``UnverifiedEvidence``; ``verify_evidence`` authenticates the quote (every check of
``verify_quote``) with the Merkle root it signs, proves the verifier's own challenge is a leaf of
that root, and checks the quote covers exactly the PCRs that were asked for. Appraisal (event
logs, manifests) builds on the returned ``VerifiedEvidence`` and reads the other members through
``*_of`` functions here (``firmware_log_of``, ``runtime_log_of``, ``ak_public_of``, ...): no
other module reads the document's members by name (tests/unit/test_layout.py checks it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attest.errors import EvidenceFormatError, NonceError, PcrSelectionError
from attest.eventlog.cel import CelRecord, loads_cel
from attest.merkle import MAX_LEAVES, challenge_leaf, verify_inclusion
from attest.model import PcrSelection, PcrValues
from attest.quote import DEFAULT_POLICY, QuotePolicy, VerifiedQuote, verify_quote
from attest.tpmstruct import ClockInfo, Public, parse_attest

EVIDENCE_VERSION = 1
MAX_EVIDENCE_BYTES = 8 << 20


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str, *, limit: int = MAX_EVIDENCE_BYTES) -> bytes:
    if not isinstance(text, str) or len(text) > limit * 4 // 3 + 4:
        raise EvidenceFormatError(f"{what} is not a base64 string of at most {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"{what} is not valid base64") from None


def unhex(text: object, what: str, *, size: int | None = None, limit: int = 64) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * limit:
        raise EvidenceFormatError(f"{what} is not a hex string of at most {limit} bytes")
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise EvidenceFormatError(f"{what} is not hex") from None
    if size is not None and len(value) != size:
        raise EvidenceFormatError(f"{what} is {len(value)} bytes, not {size}")
    return value


# --- building the document (the node's side) --------------------------------------------------


def quote_members(
    *,
    node_id: str,
    attest: bytes,
    signature: bytes,
    pcrs: PcrValues,
    ak: Public,
    verity: Mapping[str, Any] | None,
    cmdline: str | None,
    image_version: str | None,
    image_slot: str | None,
    time: datetime,
) -> dict[str, Any]:
    """The members every challenge answered by one quote shares: the quote and its PCRs, the
    AK, and what the node reports about itself (verity devices, command line, image; not
    authenticated by the quote -- appraisal trusts them only through measurements)."""
    return {
        "version": EVIDENCE_VERSION,
        "node_id": node_id,
        "quote": {"attest": b64(attest), "signature": b64(signature)},
        "pcrs": pcrs.to_json(),
        "ak": {"public": b64(ak.tpm2b()), "name": ak.name.hex()},
        "verity": None if verity is None else dict(verity),
        "boot": {"cmdline": cmdline},
        "image": {"version": image_version, "slot": image_slot},
        "time": time.isoformat(),
    }


def challenge_members(
    *,
    batch_size: int,
    batch_index: int,
    proof: Sequence[bytes],
    tls_binding: bytes,
    firmware_log: Mapping[str, Any] | None,
    runtime_log: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The members of one challenge's answer: its leaf's place in the quoted Merkle tree, the
    node's TLS key binding (empty: none), and the logs asked for (``*_log_member``)."""
    return {
        "batch": {
            "size": batch_size,
            "index": batch_index,
            "proof": [p.hex() for p in proof],
            "tls_binding": tls_binding.hex() or None,
        },
        "firmware_log": None if firmware_log is None else dict(firmware_log),
        "runtime_log": None if runtime_log is None else dict(runtime_log),
    }


def firmware_log_member(data: bytes, start: int, *, encoded: str | None = None) -> dict[str, Any]:
    """The firmware event log from byte ``start`` (``encoded``: ``b64(data[start:])`` when the
    caller already has it). Raises ``EvidenceFormatError`` for a start past the end."""
    if not 0 <= start <= len(data):
        raise EvidenceFormatError(f"firmware log start {start} is past its end ({len(data)})")
    return {
        "start": start,
        "total": len(data),
        "data": b64(data[start:]) if encoded is None else encoded,
    }


def runtime_log_member(
    pcr: int, start: int, records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The runtime log from record ``start``: its CEL JSON records (``CelRecord.to_json``)."""
    return {"pcr": pcr, "start": start, "records": list(records)}


def snp_member(report: bytes, certs: bytes | None, tls_spki: bytes | None) -> dict[str, Any]:
    """The ``snp`` member: an SEV-SNP report, its certificate table, the guest's TLS key."""
    return {
        "report": b64(report),
        "certs": None if certs is None else b64(certs),
        "tls_spki": None if tls_spki is None else b64(tls_spki),
    }


def snp_only_members(
    *,
    node_id: str,
    snp: Mapping[str, Any],
    cmdline: str | None,
    image_version: str | None,
    image_slot: str | None,
    time: datetime,
) -> dict[str, Any]:
    """The whole document of an SEV-SNP guest without a TPM: its ``snp_member`` (whose
    REPORT_DATA binds the nonce and the TLS key, no AK) and what it says about itself."""
    return {
        "version": EVIDENCE_VERSION,
        "node_id": node_id,
        "snp": dict(snp),
        "boot": {"cmdline": cmdline},
        "image": {"version": image_version, "slot": image_slot},
        "time": time.isoformat(),
    }


def encode_members(members: Mapping[str, Any]) -> bytes:
    """Compact JSON of a set of members (a JSON object)."""
    return json.dumps(members, separators=(",", ":")).encode()


def join_encoded(challenge: bytes, quote: bytes) -> bytes:
    """The document from the encoded ``challenge_members`` and ``quote_members`` (two JSON
    objects with no member in common): one object holding both."""
    return challenge[:-1] + b"," + quote[1:]


# --- reading and verifying it (the verifier's side) ---------------------------------------------


def _obj(doc: object, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise EvidenceFormatError(f"{what} is not an object")
    return doc


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EvidenceFormatError(f"{what} is not an integer in {lo}..{hi}")
    return value


@dataclass(frozen=True, slots=True)
class UnverifiedEvidence:
    """The evidence document, parsed but not yet believed."""

    node_id: str
    attest: bytes
    signature: bytes
    pcrs: PcrValues
    batch_size: int
    batch_index: int
    proof: tuple[bytes, ...]
    tls_binding: bytes
    ak_public: bytes
    doc: Mapping[str, Any] = field(repr=False)


def parse_evidence(doc: object) -> UnverifiedEvidence:
    """Parse the evidence document's shape; raise ``EvidenceFormatError`` for anything else."""
    d = _obj(doc, "evidence")
    if d.get("version") != EVIDENCE_VERSION:
        raise EvidenceFormatError(f"evidence version {d.get('version')!r} is not 1")
    quote = _obj(d.get("quote"), "quote")
    batch = _obj(d.get("batch"), "batch")
    ak = _obj(d.get("ak"), "ak")
    try:
        pcrs = PcrValues.from_json(_obj(d.get("pcrs"), "pcrs"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise EvidenceFormatError(f"pcrs: {exc}") from None
    size = _int(batch.get("size"), "batch.size", 1, MAX_LEAVES)
    proof_doc = batch.get("proof")
    if not isinstance(proof_doc, list) or len(proof_doc) > 64:
        raise EvidenceFormatError("batch.proof is not a list of at most 64 hashes")
    binding = batch.get("tls_binding")
    node_id = d.get("node_id")
    if not isinstance(node_id, str) or len(node_id) > 256:
        raise EvidenceFormatError("node_id is not a string")
    return UnverifiedEvidence(
        node_id=node_id,
        attest=unb64(quote.get("attest"), "quote.attest", limit=4096),
        signature=unb64(quote.get("signature"), "quote.signature", limit=1024),
        pcrs=pcrs,
        batch_size=size,
        batch_index=_int(batch.get("index"), "batch.index", 0, size - 1),
        proof=tuple(unhex(p, "batch.proof[]", size=32) for p in proof_doc),
        tls_binding=b"" if binding is None else unhex(binding, "batch.tls_binding"),
        ak_public=unb64(ak.get("public"), "ak.public", limit=2048),
        doc=d,
    )


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    quote: VerifiedQuote
    evidence: UnverifiedEvidence  # the rest of the document, for appraisal to check further
    tls_binding: bytes


def verify_evidence(
    doc: object,
    *,
    nonce: bytes,
    ak: Public,
    selection: PcrSelection,
    tls_binding: bytes | None = None,
    previous: ClockInfo | VerifiedQuote | None = None,
    policy: QuotePolicy = DEFAULT_POLICY,
) -> VerifiedEvidence:
    """Verify a challenge's evidence against the enrolled AK.

    ``tls_binding``: the binding of the node's TLS key the verifier itself observed on the
    connection (sha256 of its SubjectPublicKeyInfo), when it used TLS; the evidence must then
    name exactly that key, or a relaying machine-in-the-middle could pass another node's
    answer off as this one's.
    """
    ev = parse_evidence(doc)
    if tls_binding is not None and ev.tls_binding != tls_binding:
        raise NonceError("the evidence is bound to another TLS key than the one connected to")
    # The root the TPM signed is the quote's qualifying data; it is authenticated by the
    # signature check inside verify_quote before the inclusion proof is trusted.
    claimed_root = parse_attest(ev.attest).extra_data
    vq = verify_quote(
        ev.attest,
        ev.signature,
        ak=ak,
        nonce=claimed_root,
        pcrs=ev.pcrs,
        previous=previous,
        policy=policy,
    )
    verify_inclusion(
        challenge_leaf(nonce, ev.tls_binding),
        index=ev.batch_index,
        size=ev.batch_size,
        proof=ev.proof,
        root=vq.nonce,
    )
    if vq.selection.as_dict() != selection.as_dict():
        raise PcrSelectionError(f"the quote covers {vq.selection}, not {selection} as asked")
    return VerifiedEvidence(vq, ev, ev.tls_binding)


# --- the members appraisal reads beyond the quote -----------------------------------------------
# Each takes the document (a JSON object) and returns a typed, bounded value or raises
# ``EvidenceFormatError``; nothing outside this module reads the document's members by name.

MAX_RUNTIME_RECORDS = 100_000


def evidence_node_id(doc: Mapping[str, Any]) -> str | None:
    """The ``node_id`` the node names (not authenticated), when it is a string."""
    node_id = doc.get("node_id")
    return node_id if isinstance(node_id, str) else None


def ak_public_of(doc: Mapping[str, Any]) -> bytes | None:
    """The AK's TPM2B_PUBLIC (``ak.public``, at most 2048 bytes), ``None`` when ``ak`` is not
    an object. Also reads a ``/v1/identity`` answer."""
    ak = doc.get("ak")
    return required_ak_public(doc) if isinstance(ak, Mapping) else None


def required_ak_public(doc: Mapping[str, Any]) -> bytes:
    """The AK's TPM2B_PUBLIC (``ak.public``, at most 2048 bytes), which must be there."""
    ak = doc.get("ak")
    public = ak.get("public") if isinstance(ak, Mapping) else None
    return unb64(public, "ak.public", limit=2048)


def ek_public_of(doc: Mapping[str, Any], *, strict: bool = False) -> bytes | None:
    """The EK's public area as sent (``ek.public``, at most 2048 bytes) of a ``/v1/identity``
    answer: ``None`` when ``ek`` is null, or (unless ``strict``) not an object."""
    ek = doc.get("ek")
    if not isinstance(ek, Mapping):
        if strict and ek is not None:
            raise EvidenceFormatError("ek is not an object")
        return None
    return unb64(ek.get("public"), "ek.public", limit=2048)


def firmware_log_of(
    doc: Mapping[str, Any], *, resume: int | None = None
) -> tuple[int, bytes] | None:
    """(start, data) of the ``firmware_log`` member, ``None`` when the node serves none: the
    log from byte 0, or from ``resume`` (the size of the log the verifier holds) when it was
    asked for from there (then ``start == resume``)."""
    member = doc.get("firmware_log")
    if member is None:
        return None
    if not isinstance(member, Mapping):
        raise EvidenceFormatError("firmware_log is not an object")
    start = member.get("start", 0)
    if resume is not None and type(start) is int and start == resume:
        return resume, unb64(member.get("data"), "firmware_log.data")
    if start != 0:
        raise EvidenceFormatError("firmware_log does not start at byte 0")
    return 0, unb64(member.get("data"), "firmware_log.data")


def runtime_log_of(
    doc: Mapping[str, Any], *, resume: int = 0
) -> tuple[int, tuple[CelRecord, ...]] | None:
    """(start, records) of the ``runtime_log`` member, ``None`` when the node serves none: from
    record 0, or from ``resume`` (the records the verifier holds) when it asked for the log
    from there; at most ``MAX_RUNTIME_RECORDS`` in all."""
    member = doc.get("runtime_log")
    if member is None:
        return None
    if not isinstance(member, Mapping):
        raise EvidenceFormatError("runtime_log is not an object")
    records = member.get("records")
    start = member.get("start", 0)
    incremental = resume > 0 and type(start) is int and start == resume
    held = resume if incremental else 0
    if not isinstance(records, list) or held + len(records) > MAX_RUNTIME_RECORDS:
        raise EvidenceFormatError(
            f"runtime_log.records is not a list of at most {MAX_RUNTIME_RECORDS} records"
        )
    if start != 0 and not incremental:
        raise EvidenceFormatError("runtime_log does not start at record 0")
    if not records:
        return held, ()
    # loads_cel is the one strict CEL reader; it takes text, so the records go back to JSON.
    return held, loads_cel(json.dumps(records))


def image_version_of(doc: Mapping[str, Any]) -> str | None:
    """The image version the node claims (``image.version``; not authenticated), when it is a
    string of at most 128 characters."""
    image = doc.get("image")
    claimed = image.get("version") if isinstance(image, Mapping) else None
    return claimed if isinstance(claimed, str) and len(claimed) <= 128 else None


def boot_cmdline_of(doc: Mapping[str, Any]) -> str | None:
    """The kernel command line the node reports (``boot.cmdline``; not authenticated), when it
    is a string of at most 4096 characters."""
    reported = doc.get("boot")
    text = reported.get("cmdline") if isinstance(reported, Mapping) else None
    return text if isinstance(text, str) and len(text) <= 4096 else None


MAX_SNP_REPORT = 4000
MAX_SNP_CERTS = 64 * 1024
MAX_TLS_SPKI = 16 * 1024


@dataclass(frozen=True, slots=True)
class UnverifiedSnpEvidence:
    """The ``snp`` member, bounded but not believed: the report is checked by ``attest.snp``,
    its REPORT_DATA against this challenge (``attest.appraisal.snp``)."""

    report: bytes
    certs: bytes | None
    tls_spki: bytes | None


def snp_of(doc: Mapping[str, Any]) -> UnverifiedSnpEvidence | None:
    """The ``snp`` member, ``None`` when the node sends none (not an SEV-SNP guest)."""
    member = doc.get("snp")
    if member is None:
        return None
    if not isinstance(member, Mapping):
        raise EvidenceFormatError("snp is not an object")
    certs, spki = member.get("certs"), member.get("tls_spki")
    return UnverifiedSnpEvidence(
        report=unb64(member.get("report"), "snp.report", limit=MAX_SNP_REPORT),
        certs=None if certs is None else unb64(certs, "snp.certs", limit=MAX_SNP_CERTS),
        tls_spki=None if spki is None else unb64(spki, "snp.tls_spki", limit=MAX_TLS_SPKI),
    )


@dataclass(frozen=True, slots=True)
class UnverifiedSnpOnly:
    """An SEV-SNP guest's document read as one without a TPM: its node id and ``snp`` member.
    Any TPM members it also carries are not read."""

    node_id: str
    snp: UnverifiedSnpEvidence
    doc: Mapping[str, Any] = field(repr=False)


def parse_snp_only(doc: object) -> UnverifiedSnpOnly:
    """The document of a guest the verifier appraises without a vTPM (``snp_only_members``):
    version 1, a ``node_id`` and an ``snp`` member; ``EvidenceFormatError`` otherwise."""
    d = _obj(doc, "evidence")
    if d.get("version") != EVIDENCE_VERSION:
        raise EvidenceFormatError(f"evidence version {d.get('version')!r} is not 1")
    node_id = d.get("node_id")
    if not isinstance(node_id, str) or len(node_id) > 256:
        raise EvidenceFormatError("node_id is not a string")
    snp = snp_of(d)
    if snp is None:
        raise EvidenceFormatError("the document has no snp member (an SEV-SNP report)")
    return UnverifiedSnpOnly(node_id, snp, d)


# --- the guest evidence a pair's host quote commits to (attest.appraisal.pair) -----------------

PAIR_EVIDENCE_DOMAIN = b"attest-pair-v2\x00guest-evidence\x00"
PAIR_SNP_ONLY_DOMAIN = b"attest-pair-v2\x00guest-snp-evidence\x00"


def _pcr_bytes(pcrs: PcrValues) -> bytes:
    """PCR values in one canonical form: per bank by TPM_ALG_ID (u16), its count (u16), then per
    index ascending the index (u16) and the digest (the bank's size)."""
    out = bytearray()
    for alg in sorted(pcrs.values):
        bank = pcrs.values[alg]
        if len(bank) > 0xFFFF or any(not 0 <= i <= 0xFFFF for i in bank):
            raise EvidenceFormatError(f"pcrs: bank {alg.name} has a PCR index out of range")
        out += int(alg).to_bytes(2, "big") + len(bank).to_bytes(2, "big")
        for index in sorted(bank):
            out += index.to_bytes(2, "big") + bank[index]
    return bytes(out)


def pair_evidence_digest(doc: object, *, vtpm: bool = True) -> bytes:
    """The digest of a guest's evidence document as received, which a pair's host quote
    commits to (``attest.appraisal.pair.host_nonce``; docs/host-guest.md)::

        SHA-256("attest-pair-v2\\0guest-evidence\\0"
                || lp(quote.attest) || lp(quote.signature) || lp(pcrs)
                || (0x01 || lp(snp.report)  if the document has an snp member, else 0x00))

    ``lp(x)``: the length of ``x`` as 4 bytes big-endian, then ``x``; ``pcrs``: ``_pcr_bytes``
    of the ``pcrs`` member. These are the members the guest's freshness and identity rest on
    (the logs are bound through the quoted PCRs, the AK through the signature and REPORT_DATA).
    Computed from the bytes before anything is verified, so the live verifier and an offline
    one reading a saved collection (``attest.cmw``) get the same digest. Raises
    ``EvidenceFormatError`` for a document ``parse_evidence`` or ``snp_of`` refuses.

    ``vtpm=False``: the verifier appraises the guest without a vTPM (``parse_snp_only``), and
    the digest is ``SHA-256("attest-pair-v2\\0guest-snp-evidence\\0" || lp(snp.report))``
    (another domain, so neither form can stand for the other)."""
    if not vtpm:
        report = parse_snp_only(doc).snp.report
        h = hashlib.sha256(PAIR_SNP_ONLY_DOMAIN)
        h.update(len(report).to_bytes(4, "big") + report)
        return h.digest()
    ev = parse_evidence(doc)
    snp = snp_of(ev.doc)
    h = hashlib.sha256(PAIR_EVIDENCE_DOMAIN)
    for part in (ev.attest, ev.signature, _pcr_bytes(ev.pcrs)):
        h.update(len(part).to_bytes(4, "big") + part)
    if snp is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + len(snp.report).to_bytes(4, "big") + snp.report)
    return h.digest()
