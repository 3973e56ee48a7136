"""Bounded parsers and builders for the TPM 2.0 structures attest reads off the wire.

Pure: bytes in, typed values out; no TPM library. Section numbers refer to TPM 2.0 Library
Part 2 (Structures), revision 1.59. Every parser checks every length against what remains and
raises ``QuoteFormatError`` -- and nothing else -- on malformed input.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.errors import QuoteFormatError
from attest.model import HashAlg, PcrSelection

# --- constants (Part 2 §6) ---------------------------------------------------------------------

TPM_GENERATED_VALUE = 0xFF544347  # §6.2
TPM_ST_ATTEST_CERTIFY = 0x8017  # §6.9
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ST_ATTEST_NV = 0x8014
TPM_RH_ENDORSEMENT_QN = (0x4000000B).to_bytes(4, "big")  # §7.4: a hierarchy's Name is its handle


class Alg(enum.IntEnum):
    """TPM_ALG_ID values used in keys and signatures (§6.3)."""

    RSA = 0x0001
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    XOR = 0x000A
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CFB = 0x0043

    __hash__ = int.__hash__  # Enum's Python-level __hash__ is slow on the quote hot path


class EccCurve(enum.IntEnum):
    """TPM_ECC_CURVE (§6.4)."""

    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    EccCurve.NIST_P256: (ec.SECP256R1, 32),
    EccCurve.NIST_P384: (ec.SECP384R1, 48),
    EccCurve.NIST_P521: (ec.SECP521R1, 66),
}


class ObjectAttr(enum.IntFlag):
    """TPMA_OBJECT bits (§8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18


# Bounds from the reference implementation's limits (Part 2 §10, Part 4 Implementation.h).
MAX_DIGEST = 64
MAX_NAME = 2 + MAX_DIGEST
MAX_RSA_KEY_BYTES = 512  # RSA-4096
MAX_ECC_KEY_BYTES = 66  # P-521
MAX_BANKS = 16
PCR_SELECT_MAX = 4  # up to 32 PCRs
PCR_SELECT_MIN = 3  # PC Client: 24 PCRs


# --- a bounded reader --------------------------------------------------------------------------


class Reader:
    """Reads big-endian TPM fields from a buffer; every overrun raises ``QuoteFormatError``."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def fail(self, msg: str) -> QuoteFormatError:
        return QuoteFormatError(f"{self.what}: {msg} (at byte {self.pos})")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise self.fail(f"needs {n} more bytes, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        pos = self.pos
        if pos + 2 > len(self.buf):
            raise self.fail(f"needs 2 more bytes, {len(self.buf) - pos} left")
        self.pos = pos + 2
        return self.buf[pos] << 8 | self.buf[pos + 1]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def tpm2b(self, limit: int, name: str) -> bytes:
        size = self.u16()
        if size == 0:
            return b""
        if size > limit:
            raise self.fail(f"{name} claims {size} bytes, at most {limit} allowed")
        return self.take(size)

    def hash_alg(self, name: str) -> HashAlg:
        value = self.u16()
        try:
            return HashAlg(value)
        except ValueError:
            raise self.fail(f"{name} 0x{value:04x} is not a known hash algorithm") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} trailing bytes")


def _tpm2b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


# --- TPML_PCR_SELECTION (§10.9.7) --------------------------------------------------------------


# For each byte value, the bit positions set in it: turns a pcrSelect bitmap into indices
# without a per-bit Python loop (quote verification is a hot path).
_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256)
)


def read_pcr_selection(r: Reader) -> PcrSelection:
    """Read a TPML_PCR_SELECTION. The extent is found with a cheap scan of the size bytes,
    then the blob is decoded by a memoised pure function: a verifier sees the same few
    selections over and over, and quote verification is a hot path."""
    sel, r.pos = _scan_pcr_selection(r.buf, r.pos, r.what)
    return sel


_U32 = struct.Struct(">I")


def _scan_pcr_selection(buf: bytes, start: int, what: str) -> tuple[PcrSelection, int]:
    """``read_pcr_selection`` without a ``Reader``: the selection at ``start`` and where it
    ends; an error names ``what`` and ``start``, as ``Reader.fail`` would."""
    n = len(buf)
    if start + 4 > n:
        raise QuoteFormatError(f"{what}: truncated PCR selection count (at byte {start})")
    (count,) = _U32.unpack_from(buf, start)
    if count > MAX_BANKS:
        raise QuoteFormatError(
            f"{what}: PCR selection has {count} banks, at most {MAX_BANKS} allowed "
            f"(at byte {start})"
        )
    pos = start + 4
    for _ in range(count):
        if pos + 3 > n:
            raise QuoteFormatError(f"{what}: truncated PCR selection (at byte {start})")
        pos += 3 + buf[pos + 2]
    if pos > n:
        raise QuoteFormatError(f"{what}: truncated PCR selection bitmap (at byte {start})")
    return _decode_pcr_selection(buf[start:pos]), pos


@functools.lru_cache(maxsize=256)
def _decode_pcr_selection(blob: bytes) -> PcrSelection:
    """Decode a TPML_PCR_SELECTION whose extent is already known to be exactly ``blob``."""
    r = Reader(blob, "TPML_PCR_SELECTION")
    count = r.u32()
    banks: list[tuple[HashAlg, tuple[int, ...]]] = []
    seen: set[HashAlg] = set()
    for _ in range(count):
        alg = r.hash_alg("PCR bank")
        size = r.u8()
        if not PCR_SELECT_MIN <= size <= PCR_SELECT_MAX:
            raise r.fail(f"sizeofSelect {size} outside {PCR_SELECT_MIN}..{PCR_SELECT_MAX}")
        bitmap = r.take(size)
        if alg in seen:
            raise r.fail(f"bank {alg.bank_name} selected twice")
        seen.add(alg)
        indices = tuple(
            byte_i * 8 + bit for byte_i, byte in enumerate(bitmap) for bit in _BITS[byte]
        )
        if indices and indices[-1] >= 24:
            raise r.fail(f"PCR {indices[-1]} selected; PC Client TPMs have PCRs 0..23")
        banks.append((alg, indices))
    r.end()
    return PcrSelection(tuple(banks))


def pcr_selection_bytes(selection: PcrSelection) -> bytes:
    out = [len(selection.banks).to_bytes(4, "big")]
    for alg, indices in selection.banks:
        bitmap = bytearray(PCR_SELECT_MIN)
        for i in indices:
            bitmap[i // 8] |= 1 << (i % 8)
        out.append(alg.to_bytes(2, "big") + bytes([PCR_SELECT_MIN]) + bytes(bitmap))
    return b"".join(out)


# --- TPMS_ATTEST (§10.12.12) -------------------------------------------------------------------


class ClockInfo(NamedTuple):
    """TPMS_CLOCK_INFO (§10.11.1). Value types on the quote hot path are NamedTuples: as
    immutable as a frozen dataclass and several times cheaper to build."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


class Attest(NamedTuple):
    """A parsed TPMS_ATTEST whose ``attested`` part is a quote (TPMS_QUOTE_INFO, §10.12.4).

    Parsed only: nothing about it is verified. ``raw`` is exactly the bytes that were parsed.
    """

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: PcrSelection  # empty unless ``type`` is TPM_ST_ATTEST_QUOTE
    pcr_digest: bytes
    raw: bytes


_CLOCK_FW = struct.Struct(">QIIBQ")  # TPMS_CLOCK_INFO then firmwareVersion
_ATTEST_HEAD = struct.Struct(">IHH")  # magic, type, qualifiedSigner.size
_NO_SELECTION = PcrSelection(())
_new = tuple.__new__


def parse_attest(data: bytes) -> Attest:
    """Parse a TPMS_ATTEST; the quote union member is parsed when ``type`` says quote.

    Accepts the bare structure (what ``tpm2_quote -m`` writes) -- a TPM2B_ATTEST size prefix
    is not accepted, so that exactly one encoding is signed and verified."""
    n = len(data)
    if n > 4096:
        raise QuoteFormatError(f"TPMS_ATTEST of {n} bytes exceeds 4096")
    # Offsets are computed directly (this is the verifier's hot path); every length is checked
    # against what remains before it is used.
    if n < 8:
        raise QuoteFormatError(f"TPMS_ATTEST: {n} bytes is too short")
    magic, st, size = _ATTEST_HEAD.unpack_from(data)
    if size > MAX_NAME:
        raise QuoteFormatError(f"TPMS_ATTEST: qualifiedSigner claims {size} bytes")
    pos = 8 + size
    signer = data[8:pos]
    if pos + 2 > n:
        raise QuoteFormatError("TPMS_ATTEST: truncated in qualifiedSigner")
    size = data[pos] << 8 | data[pos + 1]
    if size > MAX_DIGEST:
        raise QuoteFormatError(f"TPMS_ATTEST: extraData claims {size} bytes")
    pos += 2
    extra = data[pos : pos + size]
    pos += size
    if pos + _CLOCK_FW.size > n:
        raise QuoteFormatError("TPMS_ATTEST: truncated before clockInfo")
    clock, reset, restart, safe, fw = _CLOCK_FW.unpack_from(data, pos)
    pos += _CLOCK_FW.size
    if safe > 1:
        raise QuoteFormatError(f"TPMS_ATTEST: clockInfo.safe is {safe}, not a TPMI_YES_NO")
    if st == TPM_ST_ATTEST_QUOTE:
        sel, pos = _scan_pcr_selection(data, pos, "TPMS_ATTEST")
        if pos + 2 > n:
            raise QuoteFormatError("TPMS_ATTEST: truncated before pcrDigest")
        size = data[pos] << 8 | data[pos + 1]
        if size > MAX_DIGEST or pos + 2 + size != n:
            raise QuoteFormatError(
                f"TPMS_ATTEST: pcrDigest of {size} bytes with {n - pos - 2} bytes left "
                f"(truncated, or trailing bytes)"
            )
        digest = data[pos + 2 :]
    else:
        # Another attestation type (certify, NV, ...): its union member is not parsed here;
        # the verifier refuses the type once the signature has been checked.
        sel, digest = _NO_SELECTION, b""
    # tuple.__new__ skips the NamedTuples' Python-level __new__ (all fields are given).
    return _new(
        Attest,
        (
            magic,
            st,
            signer,
            extra,
            _new(ClockInfo, (clock, reset, restart, safe == 1)),
            fw,
            sel,
            digest,
            data,
        ),
    )


def build_attest(
    *,
    qualified_signer: bytes,
    extra_data: bytes,
    clock_info: ClockInfo,
    firmware_version: int,
    pcr_select: PcrSelection,
    pcr_digest: bytes,
    magic: int = TPM_GENERATED_VALUE,
    st: int = TPM_ST_ATTEST_QUOTE,
) -> bytes:
    """Marshal a quote TPMS_ATTEST (used by the fake TPM and by tests)."""
    return b"".join(
        (
            struct.pack(">IH", magic, st),
            _tpm2b(qualified_signer),
            _tpm2b(extra_data),
            struct.pack(
                ">QIIB",
                clock_info.clock,
                clock_info.reset_count,
                clock_info.restart_count,
                int(clock_info.safe),
            ),
            struct.pack(">Q", firmware_version),
            pcr_selection_bytes(pcr_select),
            _tpm2b(pcr_digest),
        )
    )


# --- TPMT_SIGNATURE (§11.3.4) ------------------------------------------------------------------


class Signature(NamedTuple):
    """A parsed TPMT_SIGNATURE. ECDSA: ``r``/``s`` big-endian; RSA: ``sig``."""

    alg: Alg
    hash: HashAlg
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""


_SIG_HEAD = struct.Struct(">HHH")  # sigAlg, hash, first TPM2B size
_SIG_ALGS = {int(a): a for a in (Alg.RSASSA, Alg.RSAPSS, Alg.ECDSA)}
_ECDSA_ALG = Alg.ECDSA  # read once: an enum member lookup costs ~0.1 µs
_HASH_BY_ID = {int(a): a for a in HashAlg}


def parse_signature(data: bytes) -> Signature:
    n = len(data)
    if n > 1024:
        raise QuoteFormatError(f"TPMT_SIGNATURE of {n} bytes exceeds 1024")
    if n < 6:
        raise QuoteFormatError(f"TPMT_SIGNATURE: {n} bytes is too short")
    alg_id, hash_id, size = _SIG_HEAD.unpack_from(data)
    alg = _SIG_ALGS.get(alg_id)
    if alg is None:
        raise QuoteFormatError(
            f"TPMT_SIGNATURE algorithm 0x{alg_id:04x} is not RSASSA, RSAPSS or ECDSA"
        )
    h = _HASH_BY_ID.get(hash_id)
    if h is None:
        raise QuoteFormatError(f"TPMT_SIGNATURE hash 0x{hash_id:04x} is not a known hash")
    if alg is not _ECDSA_ALG:
        if size > MAX_RSA_KEY_BYTES or 6 + size != n:
            raise QuoteFormatError(f"TPMT_SIGNATURE: RSA signature of {size} bytes in {n - 6}")
        return _new(Signature, (alg, h, data[6:], b"", b""))
    if size > MAX_ECC_KEY_BYTES or 8 + size > n:
        raise QuoteFormatError(f"TPMT_SIGNATURE: signatureR of {size} bytes does not fit")
    pos = 6 + size
    size_s = data[pos] << 8 | data[pos + 1]
    if size_s > MAX_ECC_KEY_BYTES or pos + 2 + size_s != n:
        raise QuoteFormatError(f"TPMT_SIGNATURE: signatureS of {size_s} bytes does not fit")
    return _new(Signature, (alg, h, b"", data[6:pos], data[pos + 2 :]))


def build_signature(sig: Signature) -> bytes:
    head = struct.pack(">HH", sig.alg, sig.hash)
    if sig.alg == Alg.ECDSA:
        return head + _tpm2b(sig.r) + _tpm2b(sig.s)
    return head + _tpm2b(sig.sig)


# --- TPMT_PUBLIC (§12.2.4) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT (§11.1.7); ``alg`` NULL means none."""

    alg: int
    key_bits: int = 0
    mode: int = 0


@dataclass(frozen=True)
class Public:
    """A parsed TPMT_PUBLIC of an RSA or ECC key. ``raw`` is the exact TPMT_PUBLIC bytes, so the
    Name (§16) is computed over what was parsed, not over a re-encoding."""

    type: Alg
    name_alg: HashAlg
    attributes: ObjectAttr
    auth_policy: bytes
    symmetric: SymDef
    scheme: int
    scheme_hash: HashAlg | None
    # RSA
    key_bits: int = 0
    exponent: int = 0
    modulus: bytes = b""
    # ECC
    curve: int = 0
    kdf: int = Alg.NULL
    x: bytes = b""
    y: bytes = b""
    raw: bytes = field(default=b"", repr=False)

    @property
    def name(self) -> bytes:
        """The TPM Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1 §16)."""
        return self.name_alg.to_bytes(2, "big") + self.name_alg.digest(self.raw)

    @cached_property
    def key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object (built once per Public)."""
        try:
            if self.type == Alg.RSA:
                e = self.exponent or 65537
                return rsa.RSAPublicNumbers(e, int.from_bytes(self.modulus, "big")).public_key()
            curve_cls, _ = _CURVES[self.curve]
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.x, "big"), int.from_bytes(self.y, "big"), curve_cls()
            ).public_key()
        except (ValueError, KeyError) as exc:
            raise QuoteFormatError(f"TPMT_PUBLIC holds no valid public key: {exc}") from None

    def tpm2b(self) -> bytes:
        return _tpm2b(self.raw)

    def qualified_name(self, parent_qn: bytes) -> bytes:
        """QN = nameAlg || H(QN(parent) || Name) (Part 1 §16.6); the QN of a hierarchy is its
        handle, e.g. ``TPM_RH_ENDORSEMENT_QN`` for a primary key under the EK hierarchy."""
        return self.name_alg.to_bytes(2, "big") + self.name_alg.digest(parent_qn + self.name)


def _read_scheme(r: Reader, what: str) -> tuple[int, HashAlg | None]:
    scheme = r.u16()
    if scheme == Alg.NULL:
        return scheme, None
    if scheme in (Alg.RSAES,):
        return scheme, None
    h = r.hash_alg(f"{what} hash")
    if scheme == Alg.ECDAA:
        r.u16()  # count
    return scheme, h


def _read_symdef(r: Reader) -> SymDef:
    alg = r.u16()
    if alg == Alg.NULL:
        return SymDef(alg)
    if alg == Alg.XOR:
        return SymDef(alg, r.u16())
    return SymDef(alg, r.u16(), r.u16())


def parse_public(data: bytes, *, sized: bool | None = None) -> Public:
    """Parse a TPMT_PUBLIC, or a TPM2B_PUBLIC (size-prefixed, as ``tpm2_createak -u`` writes).

    ``sized=None`` detects the form: a TPM2B_PUBLIC's first two bytes are the length of the
    rest; a TPMT_PUBLIC starts with a key type (0x0001 or 0x0023), which is never such a
    length for a key.

    Memoised by the exact bytes (``Public`` is immutable): a verifier or a script that checks
    quotes of the same AK parses it once, and builds its ``cryptography`` key object
    (``Public.key``, the costlier half) once.
    """
    return _parse_public(bytes(data), sized)


@functools.lru_cache(maxsize=256)
def _parse_public(data: bytes, sized: bool | None) -> Public:
    if len(data) > 2048:
        raise QuoteFormatError(f"public area of {len(data)} bytes exceeds 2048")
    if sized is None:
        sized = len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2
    if sized:
        outer = Reader(data, "TPM2B_PUBLIC")
        data = outer.tpm2b(2048, "publicArea")
        outer.end()
    r = Reader(data, "TPMT_PUBLIC")
    typ = r.u16()
    name_alg = r.hash_alg("nameAlg")
    attrs = ObjectAttr(r.u32())
    policy = r.tpm2b(MAX_DIGEST, "authPolicy")
    if typ == Alg.RSA:
        sym = _read_symdef(r)
        scheme, scheme_hash = _read_scheme(r, "RSA scheme")
        bits = r.u16()
        exponent = r.u32()
        modulus = r.tpm2b(MAX_RSA_KEY_BYTES, "RSA modulus")
        r.end()
        if bits not in (1024, 2048, 3072, 4096) or len(modulus) * 8 != bits:
            raise QuoteFormatError(f"RSA key of {bits} bits has a {len(modulus)}-byte modulus")
        return Public(
            Alg.RSA,
            name_alg,
            attrs,
            policy,
            sym,
            scheme,
            scheme_hash,
            key_bits=bits,
            exponent=exponent,
            modulus=modulus,
            raw=data,
        )
    if typ == Alg.ECC:
        sym = _read_symdef(r)
        scheme, scheme_hash = _read_scheme(r, "ECC scheme")
        curve = r.u16()
        kdf, _ = _read_scheme(r, "KDF")
        x = r.tpm2b(MAX_ECC_KEY_BYTES, "ECC x")
        y = r.tpm2b(MAX_ECC_KEY_BYTES, "ECC y")
        r.end()
        if curve not in _CURVES:
            raise QuoteFormatError(f"ECC curve 0x{curve:04x} is not supported")
        return Public(
            Alg.ECC,
            name_alg,
            attrs,
            policy,
            sym,
            scheme,
            scheme_hash,
            curve=curve,
            kdf=kdf,
            x=x,
            y=y,
            raw=data,
        )
    raise QuoteFormatError(f"TPMT_PUBLIC type 0x{typ:04x} is not an RSA or ECC key")


def ecc_coordinate_size(curve: int) -> int:
    return _CURVES[curve][1]


def public_from_key(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    attributes: ObjectAttr,
    scheme: int,
    scheme_hash: HashAlg | None,
    name_alg: HashAlg = HashAlg.SHA256,
    auth_policy: bytes = b"",
    symmetric: SymDef = SymDef(Alg.NULL),
) -> Public:
    """Build a TPMT_PUBLIC around a software key (the fake TPM's AK, test fixtures)."""
    sym = struct.pack(">H", symmetric.alg)
    if symmetric.alg != Alg.NULL:
        sym += struct.pack(">HH", symmetric.key_bits, symmetric.mode)
    sch = struct.pack(">H", scheme) + (
        struct.pack(">H", scheme_hash) if scheme_hash is not None else b""
    )
    head = struct.pack(">HHI", 0, name_alg, attributes) + _tpm2b(auth_policy)
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        n = nums.n.to_bytes(key.key_size // 8, "big")
        e = 0 if nums.e == 65537 else nums.e
        raw = (
            struct.pack(">H", Alg.RSA)
            + head[2:]
            + sym
            + sch
            + struct.pack(">HI", key.key_size, e)
            + _tpm2b(n)
        )
    else:
        curve = {
            "secp256r1": EccCurve.NIST_P256,
            "secp384r1": EccCurve.NIST_P384,
            "secp521r1": EccCurve.NIST_P521,
        }[key.curve.name]
        size = _CURVES[curve][1]
        pn = key.public_numbers()
        raw = (
            struct.pack(">H", Alg.ECC)
            + head[2:]
            + sym
            + sch
            + struct.pack(">HH", curve, Alg.NULL)
            + _tpm2b(pn.x.to_bytes(size, "big"))
            + _tpm2b(pn.y.to_bytes(size, "big"))
        )
    return parse_public(raw, sized=False)


# --- PCR value files ---------------------------------------------------------------------------


def read_tpml_digest_values(
    data: bytes, selection: PcrSelection
) -> dict[HashAlg, dict[int, bytes]]:
    """Label tpm2-tools' "values" PCR file (digests concatenated in selection order)."""
    r = Reader(data, "PCR values file")
    out: dict[HashAlg, dict[int, bytes]] = {}
    for alg, indices in selection.banks:
        out[alg] = {i: r.take(alg.digest_size) for i in indices}
    r.end()
    return out


_U32LE = struct.Struct("<I")
_TOOLS_SEL_SIZE = 4 + 16 * 8  # C struct TPML_PCR_SELECTION: count + 16 padded selections
_TOOLS_TPML_DIGEST_SIZE = 4 + 8 * (2 + 64)  # C struct TPML_DIGEST: count + 8 TPM2B_DIGEST


def is_tools_serialized_pcrs(data: bytes) -> bool:
    """Does ``data`` have the exact shape of tpm2-tools' "serialized" PCR file?"""
    if len(data) < _TOOLS_SEL_SIZE + 4:
        return False
    banks: int = _U32LE.unpack_from(data)[0]
    count: int = _U32LE.unpack_from(data, _TOOLS_SEL_SIZE)[0]
    return (
        banks <= MAX_BANKS
        and 0 < count <= 32
        and len(data) == _TOOLS_SEL_SIZE + 4 + count * _TOOLS_TPML_DIGEST_SIZE
    )


# The same C structures as struct formats (packed; tpm2-tools writes them field by field):
# TPML_PCR_SELECTION = count, 16 x (hash, sizeofSelect, pcrSelect[4], 1 byte padding);
# TPML_DIGEST = count, 8 x TPM2B_DIGEST (size, buffer[64]).
_TOOLS_SEL = struct.Struct("<I" + "HB4sx" * MAX_BANKS)
_TOOLS_TPML_DIGEST = struct.Struct("<I" + "H64s" * 8)


def _tools_fail(msg: str, pos: int) -> QuoteFormatError:
    return QuoteFormatError(f"tpm2-tools PCR file: {msg} (at byte {pos})")


@functools.lru_cache(maxsize=64)
def _tools_selection(head: bytes) -> PcrSelection:
    """The TPML_PCR_SELECTION at the head of a tpm2-tools serialized PCR file (memoised: a
    script checks quotes over the same few selections again and again)."""
    fields = _TOOLS_SEL.unpack(head)
    banks: list[tuple[HashAlg, tuple[int, ...]]] = []
    for k in range(min(fields[0], MAX_BANKS)):
        h, size, bitmap = fields[1 + 3 * k : 4 + 3 * k]
        pos = 4 + 8 * (k + 1)
        try:
            alg = HashAlg(h)
        except ValueError:
            raise _tools_fail(f"unknown PCR bank 0x{h:04x}", pos) from None
        if size > PCR_SELECT_MAX or any(banks_alg == alg for banks_alg, _ in banks):
            raise _tools_fail(f"bad selection for bank {alg.bank_name}", pos)
        banks.append((alg, tuple(b * 8 + bit for b in range(size) for bit in _BITS[bitmap[b]])))
    return PcrSelection(tuple(banks))


_ToolsLayout = tuple[struct.Struct, tuple[int, ...], struct.Struct]


@functools.lru_cache(maxsize=64)
def _tools_layout(selection: PcrSelection) -> _ToolsLayout | None:
    """The file tpm2-tools writes for ``selection`` (values in TPML_DIGESTs of 8, each TPM2B
    sized as its bank's digest), as two struct formats over the whole file: ``fixed`` reads
    the count fields and sizes (digests skipped), to be compared with ``expected``; ``take``
    reads just the digests, in selection order. A file whose fixed fields are exactly these
    parses to exactly what the field-by-field reader returns (that reader accepts other
    layouts too; they take it)."""
    sizes = [alg.digest_size for alg, idx in selection.banks for _ in idx]
    if not sizes:
        return None
    lists = [sizes[k : k + 8] for k in range(0, len(sizes), 8)]
    fixed, take = ["<", f"{_TOOLS_SEL_SIZE}x", "I"], ["<", f"{_TOOLS_SEL_SIZE + 4}x"]
    expected = [len(lists)]
    for chunk in lists:
        fixed.append("I")
        take.append("4x")
        expected.append(len(chunk))
        for size in chunk:
            fixed.append("H64x")
            take.append(f"2x{size}s{64 - size}x")
            expected.append(size)
        fixed.append(f"{66 * (8 - len(chunk))}x")
        take.append(f"{66 * (8 - len(chunk))}x")
    return struct.Struct("".join(fixed)), tuple(expected), struct.Struct("".join(take))


# Per bank of a selection: the bank, its indices, and where its values are in the digests.
_Spans = tuple[tuple[HashAlg, tuple[int, ...], int, int], ...]


@functools.lru_cache(maxsize=64)
def _tools_plan(head: bytes) -> tuple[PcrSelection, _ToolsLayout | None, _Spans]:
    """Everything the fast path needs for a file whose selection is ``head``, memoised by
    those bytes (no PcrSelection is hashed per call)."""
    selection = _tools_selection(head)
    spans = []
    at = 0
    for alg, idx in selection.banks:
        spans.append((alg, idx, at, at + len(idx)))
        at += len(idx)
    return selection, _tools_layout(selection), tuple(spans)


def read_tools_serialized_pcrs(data: bytes) -> tuple[PcrSelection, dict[HashAlg, dict[int, bytes]]]:
    """Parse tpm2-tools' "serialized" PCR file (``tpm2_quote -o`` default in tpm2-tools 5):
    the C structures written in host (little-endian) order -- TPML_PCR_SELECTION, a UINT32
    count, then that many TPML_DIGEST of up to 8 TPM2B_DIGEST each, values in selection order.
    """
    if not is_tools_serialized_pcrs(data):
        raise QuoteFormatError("not a tpm2-tools serialized PCR file")
    data = bytes(data)
    selection, layout, spans = _tools_plan(data[:_TOOLS_SEL_SIZE])
    if layout is not None:
        fixed, expected, take = layout
        if fixed.size == len(data) and fixed.unpack(data) == expected:
            taken: tuple[bytes, ...] = take.unpack(data)
            if len(spans) == 1:  # the usual single bank: no slicing, no comprehension
                alg, idx, _, _ = spans[0]
                return selection, {alg: dict(zip(idx, taken, strict=True))}
            return selection, {
                alg: dict(zip(idx, taken[a:b], strict=True)) for alg, idx, a, b in spans
            }
    # Any other layout (or a malformed one): field by field, which names what is wrong.
    digests: list[bytes] = []
    # is_tools_serialized_pcrs checked that the count's TPML_DIGESTs fill the rest exactly.
    off = _TOOLS_SEL_SIZE + 4
    while off < len(data):
        n, *sized = _TOOLS_TPML_DIGEST.unpack_from(data, off)
        if n > 8:
            raise _tools_fail(f"TPML_DIGEST claims {n} digests, at most 8", off + 4)
        for j in range(n):
            size = sized[2 * j]
            if size > 64:
                raise _tools_fail(f"digest of {size} bytes", off + 4 + 66 * (j + 1))
            digests.append(sized[2 * j + 1][:size])
        off += _TOOLS_TPML_DIGEST_SIZE
    if len(digests) != selection.count():
        raise QuoteFormatError(
            f"tpm2-tools PCR file has {len(digests)} values for {selection.count()} PCRs"
        )
    it = iter(digests)
    values: dict[HashAlg, dict[int, bytes]] = {}
    for alg, idx in selection.banks:
        values[alg] = bank = {}
        size = alg.digest_size
        for i in idx:
            d = next(it)
            if len(d) != size:
                raise QuoteFormatError(f"{alg.bank_name} PCR {i} value is {len(d)} bytes")
            bank[i] = d
    return selection, values


def digest_of_values(
    alg: HashAlg, values: Mapping[HashAlg, Mapping[int, bytes]], selection: PcrSelection
) -> bytes:
    """The quote's pcrDigest: H(concatenation of the selected PCR values in selection order)
    (Part 3 §18.4)."""
    h = alg.new()
    for bank, indices in selection.banks:
        vals = values[bank]
        for i in indices:
            h.update(vals[i])
    return h.digest()
