"""A bounded reader of published CoRIMs and CoMIDs (draft-ietf-rats-corim-11), and the platform
reference attest makes of one. Pure; hostile input either parses or raises
``CorimFormatError`` (``SignatureError`` when a key was given and the signature is wrong).

What is read: the CoRIM map (§4.1: id, profile, validity, tags), the signed CoRIM's protected
header (§4.2: alg, content type, kid, corim-meta signer and validity, or CWT-Claims ``iss``),
and every CoMID's (§5.1) reference triples (§5.1.4.2): environment (class id, vendor, model,
layer, index, instance) and measurement (mkey; version, svn, digests, integrity registers).
Other tags (CoSWID 505, CoTL 508) and other triple kinds are counted in ``skipped``, not read.
Unknown map keys (extensions) are ignored.

A CoRIM does not become trusted here: ``platform_reference`` makes an *unsigned* platform
reference (PCRs 0-7) that the registry's platform role must still sign to its threshold
(``attest manifest platform-set`` / ``sign --platform``) before any appraisal uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from attest import cose
from attest.errors import CorimFormatError, ExpiredError, ManifestFormatError
from attest.manifest import corim as c
from attest.manifest.model import PlatformReference, format_time
from attest.manifest.parse import parse_platform_signed
from attest.model import HashAlg, PcrValues

MAX_CORIM_BYTES = 1 << 20
MAX_DEPTH = 24
MAX_TAGS = 64
MAX_TRIPLES = 1024  # reference triples of one CoMID
MAX_CLAIMS = 64  # measurements of one triple
MAX_REGISTERS = 64  # integrity registers of one measurement
MAX_DIGESTS = 16  # digests of one measurement or register
MAX_VALUES = 4096  # reference values of one CoRIM
MAX_TEXT = 1024
MAX_PLATFORM_PCR = 7  # a platform (firmware) reference covers PCRs 0-7
MAX_DESCRIPTION = 200

Digest = tuple[int | str, bytes]
RegisterId = int | str


@dataclass(frozen=True, slots=True)
class Environment:
    """A reference triple's environment (§5.1.4.1), rendered: the class id and instance as
    ``uuid:...``, ``oid:...`` (hex of its DER body) or ``bytes:...``."""

    class_id: str | None = None
    vendor: str | None = None
    model: str | None = None
    layer: int | None = None
    index: int | None = None
    instance: str | None = None

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("class-id", self.class_id),
                ("vendor", self.vendor),
                ("model", self.model),
                ("layer", self.layer),
                ("index", self.index),
                ("instance", self.instance),
            )
            if value is not None
        ]
        return ", ".join(parts) or "(no class)"


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """One measurement of one reference triple."""

    tag_id: str
    environment: Environment
    mkey: int | str | None
    version: str | None = None
    svn: int | None = None
    digests: tuple[Digest, ...] = ()
    registers: Mapping[RegisterId, tuple[Digest, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.tag_id}: {self.environment.describe()}, mkey={self.mkey}"


@dataclass(frozen=True, slots=True)
class UnverifiedCorim:
    """A CoRIM that parsed. ``signature_checked`` says whether a key verified it; either way it
    is not trusted until the registry's own threshold signs what is made of it."""

    corim_id: str
    profile: str | None
    signed: bool
    signature_checked: bool
    signer: str | None
    kid: bytes | None
    not_before: datetime | None
    not_after: datetime | None
    values: tuple[ReferenceValue, ...]
    skipped: tuple[str, ...] = ()


# --- small typed readers ---------------------------------------------------------------------


def _fail(msg: str) -> CorimFormatError:
    return CorimFormatError(msg[:400])


def _map(v: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(v, Mapping):
        raise _fail(f"{what} is not a map")
    return v


def _array(v: Any, what: str, limit: int, *, empty: bool = False) -> Sequence[Any]:
    if not isinstance(v, list | tuple):
        raise _fail(f"{what} is not an array")
    if len(v) > limit:
        raise _fail(f"{what} has {len(v)} entries, more than {limit}")
    if not v and not empty:
        raise _fail(f"{what} is empty")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise _fail(f"{what} is not text of at most {MAX_TEXT} characters")
    return v


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or v < 0 or v >= 1 << 64:
        raise _fail(f"{what} is not an unsigned integer")
    return v


def _bytes(v: Any, what: str, limit: int = 1024) -> bytes:
    if not isinstance(v, bytes) or len(v) > limit:
        raise _fail(f"{what} is not a byte string of at most {limit} bytes")
    return v


def _tagged(v: Any, tag: int) -> bool:
    return isinstance(v, cbor2.CBORTag) and v.tag == tag


def _uri(v: Any, what: str) -> str:
    if _tagged(v, c.TAG_URI):
        return _text(v.value, what)
    if _tagged(v, c.TAG_OID):
        return "oid:" + _bytes(v.value, what).hex()
    raise _fail(f"{what} is not a URI (tag 32) or OID (tag 111)")


def _id(v: Any, what: str) -> str:
    """A tag id, corim id, class id or instance, rendered as text."""
    if isinstance(v, str):
        return _text(v, what)
    if isinstance(v, bytes) and len(v) == 16:  # uuid-type
        return f"uuid:{uuid.UUID(bytes=v)}"
    if isinstance(v, uuid.UUID):  # tag 37, decoded by cbor2
        return f"uuid:{v}"
    if _tagged(v, c.TAG_UUID):
        return f"uuid:{_bytes(v.value, what, 16).hex()}"
    if _tagged(v, c.TAG_OID):
        return "oid:" + _bytes(v.value, what).hex()
    if isinstance(v, cbor2.CBORTag) and isinstance(v.value, bytes | str) and v.tag < 1 << 32:
        body = v.value.hex() if isinstance(v.value, bytes) else v.value
        return f"{v.tag}:{body[:MAX_TEXT]}"
    raise _fail(f"{what} is neither text, a UUID, an OID nor tagged bytes")


def _time(v: Any, what: str) -> datetime:
    """``time`` (#6.1): cbor2 decodes it to an aware datetime."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC)
    raise _fail(f"{what} is not an epoch time (tag 1)")


def _validity(v: Any, what: str) -> tuple[datetime | None, datetime]:
    m = _map(v, what)
    if 1 not in m:
        raise _fail(f"{what} has no not-after")
    nb = _time(m[0], f"{what} not-before") if 0 in m else None
    return nb, _time(m[1], f"{what} not-after")


def _digest(v: Any, what: str) -> Digest:
    d = _array(v, what, 2)
    if len(d) != 2:
        raise _fail(f"{what} is not [alg, value]")
    alg = d[0]
    if isinstance(alg, str):
        alg = _text(alg, f"{what} alg")
    elif type(alg) is not int or abs(alg) >= 1 << 32:
        raise _fail(f"{what} alg is neither an integer nor text")
    return alg, _bytes(d[1], f"{what} value", 128)


def _digests(v: Any, what: str) -> tuple[Digest, ...]:
    return tuple(_digest(d, f"{what}[{i}]") for i, d in enumerate(_array(v, what, MAX_DIGESTS)))


# --- the structure ---------------------------------------------------------------------------


def _environment(v: Any, what: str) -> Environment:
    env = _map(v, what)
    if not env:
        raise _fail(f"{what} is empty")
    cls = _map(env.get(c.ENV_CLASS, {}), f"{what} class")
    opt_int = {
        k: _uint(cls[k], f"{what} class {name}")
        for k, name in ((c.CLASS_LAYER, "layer"), (c.CLASS_INDEX, "index"))
        if k in cls
    }
    return Environment(
        class_id=_id(cls[c.CLASS_ID], f"{what} class-id") if c.CLASS_ID in cls else None,
        vendor=_text(cls[c.CLASS_VENDOR], f"{what} vendor") if c.CLASS_VENDOR in cls else None,
        model=_text(cls[c.CLASS_MODEL], f"{what} model") if c.CLASS_MODEL in cls else None,
        layer=opt_int.get(c.CLASS_LAYER),
        index=opt_int.get(c.CLASS_INDEX),
        instance=_id(env[c.ENV_INSTANCE], f"{what} instance") if c.ENV_INSTANCE in env else None,
    )


def _mkey(v: Any, what: str) -> int | str:
    if type(v) is int and v >= 0:
        return v
    return _id(v, what)


def _svn(v: Any, what: str) -> int:
    if isinstance(v, cbor2.CBORTag) and v.tag in (552, 553):  # tagged-svn, tagged-min-svn
        v = v.value
    return _uint(v, what)


def _registers(v: Any, what: str) -> dict[RegisterId, tuple[Digest, ...]]:
    m = _map(v, what)
    if not m or len(m) > MAX_REGISTERS:
        raise _fail(f"{what} has {len(m)} registers (1 to {MAX_REGISTERS})")
    out: dict[RegisterId, tuple[Digest, ...]] = {}
    for k, ds in m.items():
        key: RegisterId = _uint(k, f"{what} id") if type(k) is int else _text(k, f"{what} id")
        out[key] = _digests(ds, f"{what}[{key}]")
    return out


def _measurement(v: Any, what: str, tag_id: str, env: Environment) -> ReferenceValue:
    m = _map(v, what)
    if c.MVAL not in m:
        raise _fail(f"{what} has no mval")
    mval = _map(m[c.MVAL], f"{what} mval")
    if not mval:
        raise _fail(f"{what} mval is empty")
    version = None
    if c.MV_VERSION in mval:
        version = _text(_map(mval[c.MV_VERSION], f"{what} version").get(0), f"{what} version")
    return ReferenceValue(
        tag_id=tag_id,
        environment=env,
        mkey=_mkey(m[c.MKEY], f"{what} mkey") if c.MKEY in m else None,
        version=version,
        svn=_svn(mval[c.MV_SVN], f"{what} svn") if c.MV_SVN in mval else None,
        digests=_digests(mval[c.MV_DIGESTS], f"{what} digests") if c.MV_DIGESTS in mval else (),
        registers=(
            _registers(mval[c.MV_REGISTERS], f"{what} integrity-registers")
            if c.MV_REGISTERS in mval
            else {}
        ),
    )


def _comid(v: Any, what: str, skipped: list[str]) -> list[ReferenceValue]:
    comid = _map(v, what)
    for k in (c.COMID_IDENTITY, c.COMID_TRIPLES):
        if k not in comid:
            raise _fail(f"{what} has no {'tag-identity' if k == 1 else 'triples'}")
    tag_id = _id(_map(comid[c.COMID_IDENTITY], f"{what} tag-identity").get(0), f"{what} tag-id")
    triples = _map(comid[c.COMID_TRIPLES], f"{what} triples")
    if not triples:
        raise _fail(f"{what} triples is empty")
    skipped += [f"{tag_id}: triples {k!r}" for k in triples if k != c.REFERENCE_TRIPLES][:16]
    out: list[ReferenceValue] = []
    refs = triples.get(c.REFERENCE_TRIPLES)
    for i, t in enumerate(_array(refs, f"{what} reference-triples", MAX_TRIPLES) if refs else ()):
        tw = f"{tag_id} reference triple {i}"
        rec = _array(t, tw, 2)
        if len(rec) != 2:
            raise _fail(f"{tw} is not [environment, measurements]")
        env = _environment(rec[0], f"{tw} environment")
        for j, m in enumerate(_array(rec[1], f"{tw} measurements", MAX_CLAIMS)):
            out.append(_measurement(m, f"{tw} measurement {j}", tag_id, env))
    return out


def _decode(data: Any, what: str) -> Any:
    if not isinstance(data, bytes) or len(data) > MAX_CORIM_BYTES:
        raise _fail(f"{what} is not bytes of at most {MAX_CORIM_BYTES}")
    return cose.decode_cbor(data, error=CorimFormatError, what=what, max_depth=MAX_DEPTH)


def _tags(tags: Sequence[Any], skipped: list[str]) -> tuple[ReferenceValue, ...]:
    values: list[ReferenceValue] = []
    for i, tag in enumerate(tags):
        what = f"CoRIM tag {i}"
        if not isinstance(tag, cbor2.CBORTag):
            raise _fail(f"{what} is not a tagged CoMID, CoSWID or CoTL")
        if tag.tag in (c.TAG_COSWID, c.TAG_COTL):
            skipped.append(f"{what}: CBOR tag {tag.tag} (not a CoMID)")
            continue
        if tag.tag != c.TAG_COMID:
            raise _fail(f"{what} is CBOR tag {tag.tag}, not a CoMID (506)")
        values += _comid(_decode(tag.value, f"{what} (CoMID)"), what, skipped)
        if len(values) > MAX_VALUES:
            raise _fail(f"more than {MAX_VALUES} reference values")
    return tuple(values)


# --- the signed CoRIM ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    signer: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    kid: bytes | None = None


def _epoch(v: Any, what: str) -> datetime:
    """A CWT NumericDate (RFC 8392 §2: int or float seconds)."""
    if type(v) not in (int, float) or not -(1 << 40) < v < 1 << 40:
        raise _fail(f"{what} is not a NumericDate")
    return datetime.fromtimestamp(int(v), UTC)


def _cwt_claims(v: Any) -> _Meta:
    """CWT-Claims (RFC 9597; draft §4.2.1): iss, and nbf (5) / exp (4) for the validity."""
    claims = _map(v, "CWT-Claims")
    return _Meta(
        _text(claims.get(1), "CWT-Claims iss"),
        _epoch(claims[5], "CWT-Claims nbf") if 5 in claims else None,
        _epoch(claims[4], "CWT-Claims exp") if 4 in claims else None,
    )


def _corim_meta(v: Any) -> _Meta:
    """corim-meta (§4.2.2, the legacy alternative): signer name, signature validity."""
    meta = _map(_decode(_bytes(v, "corim-meta", 4096), "corim-meta"), "corim-meta")
    name = _text(_map(meta.get(0), "corim-meta signer").get(0), "corim-meta signer name")
    nb, na = _validity(meta[1], "corim-meta signature-validity") if 1 in meta else (None, None)
    return _Meta(name, nb, na)


def _signed_meta(msg: cose.UnverifiedSign1) -> _Meta:
    """§4.2.1: the content type, and CWT-Claims (15) and/or corim-meta (8); with both, their
    signer must be the same (the draft: "semantically identical"), and both validities bind."""
    if msg.protected.get(cose.HDR_CONTENT_TYPE) != c.CONTENT_TYPE:
        raise _fail(f"signed CoRIM content type is not {c.CONTENT_TYPE}")
    kid = msg.header(cose.HDR_KID)
    kid = _bytes(kid, "signed CoRIM kid", 256) if kid is not None else None
    found = [
        read(msg.protected[label])
        for label, read in ((c.HDR_CWT_CLAIMS, _cwt_claims), (c.HDR_CORIM_META, _corim_meta))
        if label in msg.protected
    ]
    if not found:
        raise _fail("signed CoRIM has neither CWT-Claims (15) nor corim-meta (8)")
    if len({m.signer for m in found}) != 1:
        raise _fail("signed CoRIM: CWT-Claims iss and corim-meta signer name differ")
    nbs = [m.not_before for m in found if m.not_before is not None]
    nas = [m.not_after for m in found if m.not_after is not None]
    return _Meta(found[0].signer, max(nbs, default=None), min(nas, default=None), kid)


def parse_corim(
    data: bytes,
    *,
    public_key: ec.EllipticCurvePublicKey | None = None,
    low_s: bool = False,
) -> UnverifiedCorim:
    """A CoRIM (``#6.501`` unsigned, or ``#6.18`` signed with an attached payload) -> its
    reference values. With ``public_key`` the CoRIM must be signed by it (ES256 or ES384;
    ``low_s=False`` accepts other signers' high-S signatures); without, a signature is not
    checked and the result says so."""
    item = _decode(data, "CoRIM")
    meta, signed, checked = _Meta(), False, False
    if _tagged(item, cose.COSE_SIGN1_TAG):
        msg = cose.parse_sign1(item, error=CorimFormatError, what="signed CoRIM")
        meta, signed = _signed_meta(msg), True
        if public_key is not None:
            allowed = (cose.ES256, cose.ES384)
            cose.verify_sign1(msg, public_key, allowed=allowed, low_s=low_s, what="CoRIM")
            checked = True
        item = _decode(msg.payload, "signed CoRIM payload")
    elif public_key is not None:
        raise _fail("the CoRIM is not signed (COSE_Sign1, tag 18), and a key was given")
    if not _tagged(item, c.TAG_UNSIGNED_CORIM):
        raise _fail("not a CoRIM (CBOR tag 501, or 18 around it)")
    m = _map(item.value, "CoRIM map")
    if c.CORIM_ID not in m or c.CORIM_TAGS not in m:
        raise _fail("CoRIM map has no id or no tags")
    skipped: list[str] = []
    values = _tags(_array(m[c.CORIM_TAGS], "CoRIM tags", MAX_TAGS), skipped)
    nb, na = meta.not_before, meta.not_after
    if c.CORIM_VALIDITY in m:  # the earlier of the two not-afters binds
        rnb, rna = _validity(m[c.CORIM_VALIDITY], "CoRIM rim-validity")
        nb = max(x for x in (nb, rnb) if x is not None) if nb or rnb else None
        na = min(rna, na) if na else rna
    return UnverifiedCorim(
        corim_id=_id(m[c.CORIM_ID], "CoRIM id"),
        profile=_uri(m[c.CORIM_PROFILE], "CoRIM profile") if c.CORIM_PROFILE in m else None,
        signed=signed,
        signature_checked=checked,
        signer=meta.signer,
        kid=meta.kid,
        not_before=nb,
        not_after=na,
        values=values,
        skipped=tuple(skipped),
    )


def parse_comid(data: bytes) -> tuple[ReferenceValue, ...]:
    """A bare CoMID (``concise-mid-tag``, tagged 506 or not) -> its reference values."""
    item = _decode(data, "CoMID")
    if _tagged(item, c.TAG_COMID):
        item = _decode(item.value, "CoMID")
    return tuple(_comid(item, "CoMID", []))


def check_validity(corim: UnverifiedCorim, *, now: datetime) -> None:
    """Refuse a CoRIM outside its validity (§4.1.5, §4.2.1) at ``now`` (``ExpiredError``)."""
    if corim.not_after is not None and now >= corim.not_after:
        raise ExpiredError(f"CoRIM {corim.corim_id} expired at {format_time(corim.not_after)}")
    if corim.not_before is not None and now < corim.not_before:
        raise ExpiredError(
            f"CoRIM {corim.corim_id} is not valid before {format_time(corim.not_before)}"
        )


# --- what attest makes of it -----------------------------------------------------------------


_NI_ALGS = {c.NI_SHA256: HashAlg.SHA256, c.NI_SHA384: HashAlg.SHA384, c.NI_SHA512: HashAlg.SHA512}


def hash_alg(alg_id: int | str) -> HashAlg | None:
    """The TPM bank of a ``digest`` algorithm: a Named Information number (1, 7, 8) or a name
    (``sha-1``, ``sha-256``, ``sm3-256``, ...); None for any other."""
    if isinstance(alg_id, int):
        return _NI_ALGS.get(alg_id)
    try:
        return HashAlg.from_name(alg_id)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PlatformImport:
    """An unsigned platform reference made of one reference value of a CoRIM, and what of that
    value was left out (registers above PCR 7, digests of algorithms that are no TPM bank)."""

    reference: PlatformReference
    source: ReferenceValue
    left_out: tuple[str, ...]


def snp_measurements(corim: UnverifiedCorim) -> tuple[tuple[ReferenceValue, bytes], ...]:
    """SEV-SNP launch MEASUREMENTs as the AMD SNP CoRIM profile writes them (its guest classes,
    mkey 0 or 641, digests [[7, 48 bytes]])."""
    classes = {f"uuid:{uuid.UUID(bytes=k)}" for k in (c.SNP_VCEK_CLASS, c.SNP_VLEK_CLASS)}
    return tuple(
        (v, d)
        for v in corim.values
        if v.environment.class_id in classes and v.mkey in (c.SNP_MKEY_GUEST, 641)
        for alg, d in v.digests
        if alg == c.NI_SHA384 and len(d) == 48
    )


def _pcr_candidates(values: Sequence[ReferenceValue], select: str | None) -> ReferenceValue:
    found = [v for v in values if any(type(k) is int for k in v.registers)]
    chosen = [v for v in found if select is None or select in v.describe()]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        what = f" matching {select!r}" if select is not None else ""
        listed = "; ".join(v.describe() for v in found[:8])
        return_hint = f" (those with PCRs: {listed})" if found else ""
        raise _fail(f"no reference value with TPM PCRs (integrity registers){what}{return_hint}")
    listed = "; ".join(v.describe() for v in chosen[:8])
    raise _fail(f"{len(chosen)} reference values carry PCRs; select one: {listed}")


def platform_reference(
    corim: UnverifiedCorim,
    *,
    platform_id: str,
    description: str | None = None,
    select: str | None = None,
) -> PlatformImport:
    """The *unsigned* platform reference (PCRs 0-7) of the one reference value of ``corim``
    that carries integrity registers with PCR indices (``select``: a text its description
    must contain, when there are several). A register with two values of one bank is refused:
    a platform reference holds one value per PCR and bank."""
    value = _pcr_candidates(corim.values, select)
    pcrs: dict[HashAlg, dict[int, bytes]] = {}
    left_out: list[str] = []
    for reg, digests in value.registers.items():
        if type(reg) is not int or reg > MAX_PLATFORM_PCR:
            left_out.append(f"register {reg!r}: not a platform firmware PCR (0-7)")
            continue
        for alg_id, digest in digests:
            alg = hash_alg(alg_id)
            if alg is None:
                left_out.append(f"PCR {reg}: digest algorithm {alg_id!r} is no TPM bank")
                continue
            if len(digest) != alg.digest_size:
                raise _fail(f"PCR {reg} {alg.bank_name} value is {len(digest)} bytes")
            if pcrs.get(alg, {}).get(reg, digest) != digest:
                raise _fail(f"PCR {reg} has two {alg.bank_name} values")
            pcrs.setdefault(alg, {})[reg] = digest
    if not pcrs:
        raise _fail(f"{value.describe()}: no PCR 0-7 value of a TPM bank")
    source = f"CoRIM {corim.corim_id}, {value.describe()}"
    doc = {
        "_type": "platform",
        "spec_version": "1",
        "platform_id": platform_id,
        "description": description or f"imported from {source}"[:MAX_DESCRIPTION],
        "example": False,
        "pcrs": PcrValues(pcrs).to_json(),
        "event_digests": {},
        "secure_boot": None,
    }
    try:
        ref = parse_platform_signed(doc, field="imported platform reference")
    except ManifestFormatError as exc:  # the platform id or description given: one error
        raise _fail(str(exc)) from None
    return PlatformImport(ref, value, tuple(left_out))
