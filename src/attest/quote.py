"""Quote verification: pure Python over ``cryptography``; no TPM library is imported here.

``verify_quote`` checks, in this order, and raises a specific error at the first failure:

1. both structures parse (``QuoteFormatError``);
2. the signature scheme and hash are allowed and match the AK, and the signature verifies over
   the exact TPMS_ATTEST bytes (``KeyPolicyError``, ``SignatureError``) -- nothing inside the
   structure is believed before this;
3. ``magic`` is TPM_GENERATED_VALUE and ``type`` is TPM_ST_ATTEST_QUOTE (Part 2 §10.12.12;
   ``AttestationTypeError``);
4. ``extraData`` equals the expected qualifying data, byte for byte (``NonceError``);
5. the signed PCR selection is exactly the set of PCR values presented -- same banks, same
   indices (``PcrSelectionError``);
6. ``pcrDigest`` equals H_sig(values in selection order) (Part 3 §18.4; ``PcrDigestError``);
7. ``clockInfo.safe`` and, against the previous verified quote of the same TPM, resetCount /
   restartCount / clock never go backwards (Part 1 §36.6; ``ClockError``).

Note: for keys outside the endorsement hierarchy the TPM obfuscates resetCount, restartCount
and firmwareVersion (Part 1 §36.7); attest's AK is an endorsement-hierarchy primary, so they
are the TPM's real counters.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import operator
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import (
    AttestationTypeError,
    AttestError,
    ClockError,
    KeyPolicyError,
    NonceError,
    PcrDigestError,
    PcrSelectionError,
    QuoteFormatError,
    SignatureError,
)
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.tpmstruct import (
    _CLOCK_FW,
    _CURVES,
    MAX_DIGEST,
    MAX_ECC_KEY_BYTES,
    MAX_NAME,
    MAX_RSA_KEY_BYTES,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    Alg,
    Attest,
    ClockInfo,
    Public,
    Signature,
    _scan_pcr_selection,
    ecc_coordinate_size,
    parse_attest,
    parse_signature,
)

_HASHES: dict[HashAlg, hashes.HashAlgorithm] = {
    HashAlg.SHA1: hashes.SHA1(),
    HashAlg.SHA256: hashes.SHA256(),
    HashAlg.SHA384: hashes.SHA384(),
    HashAlg.SHA512: hashes.SHA512(),
}

# hashlib's constructors, called directly on the hot path (HashAlg.new is one call more).
_HASHLIB: dict[HashAlg, Callable[[bytes], hashlib._Hash]] = {
    **{alg: alg.new for alg in HashAlg},
    HashAlg.SHA1: hashlib.sha1,
    HashAlg.SHA256: hashlib.sha256,
    HashAlg.SHA384: hashlib.sha384,
    HashAlg.SHA512: hashlib.sha512,
}

# Built once: signature parameter objects cost as much to create as the rest of a check.
_ECDSA = {alg: ec.ECDSA(h) for alg, h in _HASHES.items()}
_PKCS1 = padding.PKCS1v15()
_PSS = {
    alg: padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.DIGEST_LENGTH)
    for alg, h in _HASHES.items()
}


@dataclass(frozen=True, slots=True)
class QuotePolicy:
    """What a verifier accepts. The defaults refuse SHA-1 signatures and RSA under 2048 bits."""

    signature_hashes: frozenset[HashAlg] = frozenset(
        {HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512}
    )
    schemes: frozenset[Alg] = frozenset({Alg.ECDSA, Alg.RSASSA, Alg.RSAPSS})
    min_rsa_bits: int = 2048
    require_safe_clock: bool = True


DEFAULT_POLICY = QuotePolicy()
_new = tuple.__new__
# Enum members read once: ``Alg.X`` is a class-attribute lookup through the enum's metaclass
# (~0.1 µs each), and the hot path reads several per quote.
_NULL, _ECDSA_ALG, _ECC, _RSA, _RSASSA = Alg.NULL, Alg.ECDSA, Alg.ECC, Alg.RSA, Alg.RSASSA


class VerifiedQuote(NamedTuple):
    """A quote whose every check passed. ``pcrs`` holds exactly the signed selection."""

    pcrs: PcrValues
    selection: PcrSelection
    nonce: bytes
    clock: ClockInfo
    firmware_version: int
    qualified_signer: bytes
    signature_alg: Alg
    signature_hash: HashAlg
    attest: Attest

    def to_json(self) -> dict[str, object]:
        return {
            "valid": True,
            "nonce": self.nonce.hex(),
            "pcr_selection": str(self.selection),
            "pcrs": self.pcrs.to_json(),
            "clock": {
                "clock_ms": self.clock.clock,
                "reset_count": self.clock.reset_count,
                "restart_count": self.clock.restart_count,
                "safe": self.clock.safe,
            },
            "firmware_version": f"{self.firmware_version:016x}",
            "qualified_signer": self.qualified_signer.hex(),
            "signature": {"alg": self.signature_alg.name, "hash": self.signature_hash.bank_name},
        }


def verify_signature(message: bytes, sig: Signature, ak: Public, policy: QuotePolicy) -> None:
    """Check that ``sig`` is an allowed signature by ``ak`` over ``message``; raise otherwise."""
    alg, h, raw, r, s = sig
    if alg not in policy.schemes:
        raise KeyPolicyError(f"signature scheme {alg.name} is not allowed")
    if h not in policy.signature_hashes:
        raise KeyPolicyError(f"signature hash {h.bank_name} is not allowed")
    if h not in _HASHES:  # a policy may name it; no signature check here implements it
        raise KeyPolicyError(f"signature hash {h.bank_name} is not supported")
    # A restricted signing key signs only with its own scheme (Part 1 §25.2.3.2).
    if ak.scheme != _NULL and (alg != ak.scheme or h != ak.scheme_hash):
        raise SignatureError(
            f"signature is {alg.name}/{h.bank_name}, but the AK's scheme is "
            f"{Alg(ak.scheme).name}/{ak.scheme_hash.bank_name if ak.scheme_hash else '-'}"
        )
    key = ak.key
    try:
        if alg == _ECDSA_ALG:
            # ak.key is built from ak.type, so the type tells the key class without isinstance.
            if ak.type != _ECC:
                raise SignatureError("ECDSA signature but the AK is not an ECC key")
            der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            cast(ec.EllipticCurvePublicKey, key).verify(der, message, _ECDSA[h])
        else:
            if ak.type != _RSA:
                raise SignatureError(f"{alg.name} signature but the AK is not an RSA key")
            if ak.key_bits < policy.min_rsa_bits:
                raise KeyPolicyError(f"RSA-{ak.key_bits} AK is below {policy.min_rsa_bits} bits")
            pad = _PKCS1 if alg == _RSASSA else _PSS[h]
            cast(rsa.RSAPublicKey, key).verify(raw, message, pad, _HASHES[h])
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the AK") from None


def check_selection(signed: PcrSelection, presented: Mapping[HashAlg, Mapping[int, bytes]]) -> None:
    """The PCR values presented must be exactly the signed selection: same banks, same indices.

    A genuine quote over PCRs {0,1} must not vouch for values labelled {2,3}, even though the
    digest over the concatenated values would match (keylime and tpm2_checkquote accept that).
    """
    if len(signed.banks) != len(presented):
        _selection_mismatch(signed, presented)
    for alg, indices in signed.banks:
        given = presented.get(alg)
        if given is None:
            _selection_mismatch(signed, presented)
        if given.keys() != _index_set(indices):
            raise PcrSelectionError(
                f"the quote signs {alg.bank_name} PCRs {_fmt(indices)} but values are given "
                f"for {_fmt(sorted(given))}"
            )
        if set(map(len, given.values())) != {alg.digest_size}:
            bad = next(i for i, v in given.items() if len(v) != alg.digest_size)
            raise PcrSelectionError(
                f"{alg.bank_name} PCR {bad} value is {len(given[bad])} bytes, not {alg.digest_size}"
            )


# A bank of a signed selection as the hot path reads it: the bank, a C-level getter of its
# values in selection order, how many there are, and the list of their expected lengths.
_Bank = tuple[HashAlg, Callable[[Mapping[int, bytes]], tuple[bytes, ...]], int, list[int]]
_PLANS: dict[int, tuple[PcrSelection, tuple[_Bank, ...]]] = {}


def _plan(signed: PcrSelection) -> tuple[_Bank, ...]:
    """How to read the values of ``signed``, bank by bank, built once per selection object:
    parsed selections are memoised (``tpmstruct``), so a verifier sees the same few objects.
    Keyed by identity; the entry holds the object, so the id stays its own."""
    entry = _PLANS.get(id(signed))
    if entry is not None and entry[0] is signed:
        return entry[1]
    banks: list[_Bank] = []
    for alg, indices in signed.banks:
        get: Callable[[Mapping[int, bytes]], tuple[bytes, ...]]
        if len(indices) > 1:
            get = operator.itemgetter(*indices)
        else:
            get = functools.partial(_pick, indices)
        banks.append((alg, get, len(indices), [alg.digest_size] * len(indices)))
    plan = tuple(banks)
    if len(_PLANS) >= 256:
        _PLANS.clear()
    _PLANS[id(signed)] = (signed, plan)
    return plan


def _pick(indices: tuple[int, ...], values: Mapping[int, bytes]) -> tuple[bytes, ...]:
    return tuple(values[i] for i in indices)


def _selected_values(
    signed: PcrSelection, presented: Mapping[HashAlg, Mapping[int, bytes]]
) -> bytes:
    """The presented values concatenated in the signed selection's order, after checking
    that they are exactly that selection (the fast path of ``check_selection``: same number
    of values per bank and every signed index present means the same index set; any doubt
    goes to ``check_selection``, which raises with the precise message)."""
    concatenated = _concat_fast(_plan(signed), presented)
    if concatenated is None:
        _raise_selection(signed, presented)
    return concatenated


def _raise_selection(
    signed: PcrSelection, presented: Mapping[HashAlg, Mapping[int, bytes]]
) -> NoReturn:
    check_selection(signed, presented)  # raises with the precise message
    raise AssertionError("unreachable: check_selection accepted what the fast path refused")


@functools.lru_cache(maxsize=256)
def _index_set(indices: tuple[int, ...]) -> frozenset[int]:
    return frozenset(indices)


def _selection_mismatch(signed: PcrSelection, presented: Mapping[HashAlg, object]) -> NoReturn:
    want = ",".join(sorted(a.bank_name for a, _ in signed.banks))
    got = ",".join(sorted(a.bank_name for a in presented))
    raise PcrSelectionError(f"the quote signs banks [{want}] but values are given for [{got}]")


def _fmt(indices: object) -> str:
    return "[" + ",".join(str(i) for i in indices) + "]"  # type: ignore[attr-defined]


def check_clock(clock: ClockInfo, previous: ClockInfo | None, *, require_safe: bool) -> None:
    if require_safe and not clock.safe:
        raise ClockError("clockInfo.safe is NO: the TPM clock may have gone backwards")
    if previous is None:
        return
    if clock.reset_count < previous.reset_count:
        raise ClockError(
            f"resetCount went backwards ({previous.reset_count} -> {clock.reset_count})"
        )
    if clock.reset_count == previous.reset_count:
        # Within one reset epoch restartCount only grows and the clock only advances.
        if clock.restart_count < previous.restart_count:
            raise ClockError(
                f"restartCount went backwards ({previous.restart_count} -> "
                f"{clock.restart_count}) without a TPM reset"
            )
        if clock.clock < previous.clock:
            raise ClockError(
                f"clock went backwards ({previous.clock} -> {clock.clock} ms) within a reset epoch"
            )


def verify_quote(
    attest: bytes,
    signature: bytes,
    *,
    ak: Public,
    nonce: bytes,
    pcrs: Mapping[HashAlg, Mapping[int, bytes]] | PcrValues,
    previous: ClockInfo | VerifiedQuote | None = None,
    policy: QuotePolicy = DEFAULT_POLICY,
) -> VerifiedQuote:
    """Verify a TPM2_Quote; return the verified quote or raise (see the module docstring).

    The verifier's hot path. A quote laid out as a TPM makes it, signed with a scheme the AK
    and ``policy`` allow, is checked here in one pass with the per-AK state prepared once
    (``_prepare``); anything else -- every malformed, unexpected or refused input -- goes
    to ``_verify_quote_reference``, which makes the same checks one by one and raises the
    specific error. The fast path therefore only ever accepts: it never decides an error
    except the one left once everything before the signature check has passed
    (``SignatureError``), so errors, their order and their messages are the reference's.
    """
    state = ak.__dict__.get(_STATE)
    if state is None or state[0] is not policy:
        state = _prepare(ak, policy)
    # TPMT_SIGNATURE (Part 2 §11.3.4): sigAlg, hash and the first size as this AK and policy
    # allow, and the length that makes for this AK's key.
    # (Exactly bytes: the memo keys below are slices of these.)
    p = state[1].get(signature[:6]) if type(signature) is bytes is type(attest) else None
    if p is None or len(signature) != p[0]:
        return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    _, verify, args, hctor, dsize, sig_alg, sig_hash, split, der = p
    if der is None:  # RSA
        raw = signature[6:]
    elif signature[split : split + 2] != signature[4:6]:  # ECDSA: signatureS as long as R
        return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    else:
        r0, s0 = signature[6], signature[split + 2]
        if r0 and s0:  # no leading zero byte: the DER frame depends on the top bits only
            head, mid = der[r0 >> 7 | (s0 >> 7) << 1]
            raw = b"".join((head, signature[6:split], mid, signature[split + 2 :]))
        else:
            raw = der_signature(signature[6:split], signature[split + 2 :])
    # TPMS_ATTEST (Part 2 §10.12.12) of a quote made by a TPM, with this AK's qualifiedSigner
    # size and the expected nonce's size: its fixed part in one unpack.
    layout = state[2].get(len(nonce))
    if layout is None:
        layout = _layout(ak, state, len(nonce))
        if layout is None:
            return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    fixed, head8 = layout
    # Then pcrSelect and pcrDigest's size, then the digest (Part 3 §18.4). (No need for the
    # reference's 4096-byte bound: every part is bounded, so a quote that passes is smaller.)
    end = len(attest) - dsize
    if end < fixed.size:
        return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    h8, signer, esize, extra, clock, reset, restart, safe, fw = fixed.unpack_from(attest)
    if h8 != head8 or esize != len(nonce) or safe > 1:
        return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    known = _SELECTIONS.get(attest[fixed.size : end])
    if known is None:
        known = _learn_selection(attest, fixed.size, end)
    if known is None or known[2] != dsize:
        return _verify_quote_reference(attest, signature, ak, nonce, pcrs, previous, policy)
    selection, plan, _ = known
    try:
        if der is None:
            verify(raw, attest, args[0], args[1])
        else:
            verify(raw, attest, args[0])
    except InvalidSignature:
        # Everything the reference checks before the signature has passed.
        raise SignatureError("the signature does not verify with the AK") from None
    # From here on the structure is authentic; any doubt goes to the reference for the error.
    if isinstance(pcrs, PcrValues):
        values, verified = pcrs.values, pcrs
    else:
        values, verified = pcrs, None
    concatenated = None
    if len(plan) == 1 == len(values):  # one bank (the common case): _concat_fast inlined
        alg, get, count, sizes = plan[0]
        given = values.get(alg)
        if given is not None and len(given) == count:
            try:
                chosen = get(given)
                if [*map(len, chosen)] == sizes:
                    concatenated = b"".join(chosen)
            except KeyError:
                pass
    else:
        concatenated = _concat_fast(plan, values)
    digest = attest[end:]
    if (
        concatenated is None
        or not hmac.compare_digest(extra, nonce)
        or not hmac.compare_digest(hctor(concatenated).digest(), digest)
    ):
        return _check_contents(
            parse_attest(attest), sig_alg, sig_hash, nonce, pcrs, previous, policy
        )
    clock_info = _new(ClockInfo, (clock, reset, restart, safe == 1))
    if previous is not None or safe != 1:
        prev = previous.clock if isinstance(previous, VerifiedQuote) else previous
        check_clock(clock_info, prev, require_safe=policy.require_safe_clock)
    if verified is None:  # a plain mapping is copied so later changes to it cannot leak in
        verified = PcrValues({alg: dict(values[alg]) for alg, _ in selection.banks})
    parsed = _new(
        Attest,
        (
            TPM_GENERATED_VALUE,
            TPM_ST_ATTEST_QUOTE,
            signer,
            extra,
            clock_info,
            fw,
            selection,
            digest,
            attest,
        ),
    )
    return _new(
        VerifiedQuote,
        (verified, selection, extra, clock_info, fw, signer, sig_alg, sig_hash, parsed),
    )


def _verify_quote_reference(
    attest: bytes,
    signature: bytes,
    ak: Public,
    nonce: bytes,
    pcrs: Mapping[HashAlg, Mapping[int, bytes]] | PcrValues,
    previous: ClockInfo | VerifiedQuote | None,
    policy: QuotePolicy,
) -> VerifiedQuote:
    """``verify_quote`` one check at a time, in the module docstring's order: the reference
    that decides every error."""
    sig = parse_signature(signature)
    parsed = parse_attest(attest)
    verify_signature(attest, sig, ak, policy)
    return _check_contents(parsed, sig.alg, sig.hash, nonce, pcrs, previous, policy)


def _check_contents(
    parsed: Attest,
    sig_alg: Alg,
    sig_hash: HashAlg,
    nonce: bytes,
    pcrs: Mapping[HashAlg, Mapping[int, bytes]] | PcrValues,
    previous: ClockInfo | VerifiedQuote | None,
    policy: QuotePolicy,
) -> VerifiedQuote:
    """Steps 3-7 of the module docstring, on a TPMS_ATTEST whose signature has verified."""
    magic, st, signer, extra, clock, firmware, selection, pcr_digest, _ = parsed
    if magic != TPM_GENERATED_VALUE:
        raise AttestationTypeError(
            f"magic 0x{magic:08x} is not TPM_GENERATED_VALUE: not made by a TPM"
        )
    if st != TPM_ST_ATTEST_QUOTE:
        raise AttestationTypeError(f"type 0x{st:04x} is not TPM_ST_ATTEST_QUOTE")
    if not hmac.compare_digest(extra, nonce):
        raise NonceError("qualifying data in the quote is not the expected nonce")
    values = pcrs.values if isinstance(pcrs, PcrValues) else pcrs
    concatenated = _selected_values(selection, values)
    if not hmac.compare_digest(_HASHLIB[sig_hash](concatenated).digest(), pcr_digest):
        raise PcrDigestError(
            "pcrDigest does not match the PCR values presented (values changed or reordered)"
        )
    prev = previous.clock if isinstance(previous, VerifiedQuote) else previous
    check_clock(clock, prev, require_safe=policy.require_safe_clock)
    # _selected_values proved the presented mapping holds exactly the selection; a PcrValues
    # is kept as it is, a plain mapping is copied so later changes to it cannot leak in.
    verified = (
        pcrs
        if isinstance(pcrs, PcrValues)
        else PcrValues({alg: dict(values[alg]) for alg, _ in selection.banks})
    )
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (every field is given).
    return _new(
        VerifiedQuote,
        (verified, selection, extra, clock, firmware, signer, sig_alg, sig_hash, parsed),
    )


# --- the fast path's prepared state ----------------------------------------------------------

# What the fast path needs for one signature prefix (sigAlg, hash, first TPM2B size) that an
# AK and a policy accept: the signature's whole length, the key's bound verify and its extra
# arguments (prebuilt padding and hash objects), the PCR digest's hashlib constructor and
# size, the scheme and hash as the result reports them, and for ECDSA where signatureS's size
# field starts and the DER frames by the top bits of r and s.
_SigParams = tuple[
    int,
    Callable[..., None],
    tuple[object, ...],
    Callable[[bytes], "hashlib._Hash"],
    int,
    Alg,
    HashAlg,
    int,
    "dict[int, tuple[bytes, bytes]] | None",
]
# The fixed part of a quote TPMS_ATTEST for a nonce size, up to pcrSelect, and its first
# eight bytes: magic, type and the qualifiedSigner's size.
_Layout = tuple[struct.Struct, bytes]
# Kept in the AK's instance dict (beside ``Public.key``'s cached key object), so that it lives
# as long as the AK and a fleet of AKs does not thrash a shared cache:
# (policy, {signature prefix: params}, {nonce size: layout}).
_State = tuple[QuotePolicy, dict[bytes, _SigParams], dict[int, _Layout | None]]
_STATE = "_attest_quote_fast_path"
_QUOTE_HEAD = TPM_GENERATED_VALUE.to_bytes(4, "big") + TPM_ST_ATTEST_QUOTE.to_bytes(2, "big")
_SIG_ALGS = (Alg.ECDSA, Alg.RSASSA, Alg.RSAPSS)


def _prepare(ak: Public, policy: QuotePolicy) -> _State:
    """The signatures that ``verify_signature`` would let through to the cryptographic check
    for this AK under this policy, each with its prepared parameters; stored on ``ak``. Only
    the fixed sizes a TPM makes are covered (RSA: the modulus' size; ECDSA: r and s of the
    curve's size); any other size goes to the reference."""
    sigs: dict[bytes, _SigParams] = {}
    try:
        key = ak.key
    except AttestError:
        key = None  # no valid key: the reference raises the error
    if ak.scheme != _NULL:
        pairs = [(ak.scheme, ak.scheme_hash)]
    else:
        pairs = [(alg, h) for alg in _SIG_ALGS for h in _HASHES]
    verify: Callable[..., None]
    for alg, h in pairs:
        if (
            key is None
            or h is None
            or h not in _HASHES
            or alg not in _SIG_ALGS
            or alg not in policy.schemes
            or h not in policy.signature_hashes
        ):
            continue
        if alg == _ECDSA_ALG:
            if ak.type != _ECC or ak.curve not in _CURVES:
                continue
            size = ecc_coordinate_size(ak.curve)
            verify = cast(ec.EllipticCurvePublicKey, key).verify
            args: tuple[object, ...] = (_ECDSA[h],)
            length, split, der = 6 + size + 2 + size, 6 + size, _der_frames(size)
        else:
            if ak.type != _RSA or ak.key_bits < policy.min_rsa_bits:
                continue
            size = ak.key_bits // 8
            verify = cast(rsa.RSAPublicKey, key).verify
            args = (_PKCS1 if alg == _RSASSA else _PSS[h], _HASHES[h])
            length, split, der = 6 + size, 0, None
        if size > (MAX_ECC_KEY_BYTES if der else MAX_RSA_KEY_BYTES) or length > 1024:
            continue
        prefix = _U16X3.pack(alg, h, size)
        sigs[prefix] = (length, verify, args, _HASHLIB[h], h.digest_size, Alg(alg), h, split, der)
    state: _State = (policy, sigs, {})
    ak.__dict__[_STATE] = state
    return state


def _layout(ak: Public, state: _State, nonce_size: int) -> _Layout | None:
    """The fixed part of a quote TPMS_ATTEST by this AK for a nonce of ``nonce_size`` bytes:
    qualifiedSigner is the AK's Qualified Name (nameAlg || digest, Part 1 §16.6)."""
    layout: _Layout | None = None
    signer = 2 + ak.name_alg.digest_size
    if nonce_size <= MAX_DIGEST and signer <= MAX_NAME:
        fixed = struct.Struct(f">8s{signer}sH{nonce_size}s{_CLOCK_FW.format[1:]}")
        layout = (fixed, _QUOTE_HEAD + signer.to_bytes(2, "big"))
    if len(state[2]) < 16:
        state[2][nonce_size] = layout
    return layout


def _der_frames(size: int) -> dict[int, tuple[bytes, bytes]]:
    """For r and s of ``size`` bytes without a leading zero byte, by ``r[0] >> 7 | (s[0] >> 7)
    << 1``: the DER bytes before r and between r and s (a zero is prepended to an integer
    whose top bit is set)."""
    frames = {}
    for hr in (0, 1):
        for hs in (0, 1):
            lr, ls = size + hr, size + hs
            head = b"\x30" + _der_length(lr + ls + 4) + b"\x02" + _der_length(lr) + b"\0" * hr
            frames[hr | hs << 1] = (head, b"\x02" + _der_length(ls) + b"\0" * hs)
    return frames


def _der_length(n: int) -> bytes:
    return bytes([n]) if n < 128 else bytes([0x81, n])


# TPML_PCR_SELECTION blobs, each with the TPM2B size field of the pcrDigest that follows it,
# seen in quotes, by their exact bytes: the selection, the plan to read its values and the
# digest size the field says. A verifier sees the same few selections over and over.
_Known = tuple[PcrSelection, tuple[_Bank, ...], int]
_SELECTIONS: dict[bytes, _Known] = {}


def _learn_selection(attest: bytes, start: int, end: int) -> _Known | None:
    """The selection at ``attest[start:]`` if it is a valid one followed, exactly at ``end``
    - 2, by the size field of a digest that takes the rest of ``attest`` after ``end``."""
    try:
        selection, stop = _scan_pcr_selection(attest, start, "TPMS_ATTEST")
    except QuoteFormatError:
        return None
    dsize = len(attest) - end
    if stop != end - 2 or attest[stop:end] != dsize.to_bytes(2, "big"):
        return None
    if len(_SELECTIONS) >= 256:
        _SELECTIONS.clear()
    known = (selection, _plan(selection), dsize)
    _SELECTIONS[attest[start:end]] = known
    return known


def _concat_fast(
    plan: tuple[_Bank, ...], presented: Mapping[HashAlg, Mapping[int, bytes]]
) -> bytes | None:
    """The presented values concatenated in the plan's order if they are exactly its
    selection (same number of values per bank and every signed index present means the same
    index set), else None: ``check_selection`` says what is wrong."""
    if len(plan) != len(presented):
        return None
    parts: list[bytes] = []
    for alg, get, count, sizes in plan:
        given = presented.get(alg)
        if given is None or len(given) != count:
            return None
        try:
            chosen = get(given)
        except KeyError:
            return None
        if [*map(len, chosen)] != sizes:
            return None
        parts += chosen
    return b"".join(parts)


_U16X3 = struct.Struct(">HHH")


def der_signature(r: bytes, s: bytes) -> bytes:
    """The DER ECDSA-Sig-Value of big-endian ``r`` and ``s``: ``encode_dss_signature`` of
    their integers, byte for byte, without the round trip through Python integers."""
    r = r.lstrip(b"\0") or b"\0"
    if r[0] > 127:
        r = b"\0" + r
    s = s.lstrip(b"\0") or b"\0"
    if s[0] > 127:
        s = b"\0" + s
    lr, ls = len(r), len(s)
    if lr + ls > 123:  # a long-form length (P-521): left to cryptography
        return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    return bytes((48, lr + ls + 4, 2, lr)) + r + bytes((2, ls)) + s
