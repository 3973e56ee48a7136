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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import (
    AttestationTypeError,
    ClockError,
    KeyPolicyError,
    NonceError,
    PcrDigestError,
    PcrSelectionError,
    SignatureError,
)
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.tpmstruct import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    Alg,
    Attest,
    ClockInfo,
    Public,
    Signature,
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
    plan = _plan(signed)
    if len(plan) != len(presented):
        _selection_mismatch(signed, presented)
    parts: list[bytes] = []
    for alg, get, count, sizes in plan:
        given = presented.get(alg)
        if given is None or len(given) != count:
            _raise_selection(signed, presented)
        try:
            chosen = get(given)
        except KeyError:
            _raise_selection(signed, presented)
        if list(map(len, chosen)) != sizes:
            _raise_selection(signed, presented)
        parts += chosen
    return b"".join(parts)


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
    """Verify a TPM2_Quote; return the verified quote or raise (see the module docstring)."""
    sig = parse_signature(signature)
    parsed = parse_attest(attest)
    verify_signature(attest, sig, ak, policy)
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
    if not hmac.compare_digest(_HASHLIB[sig.hash](concatenated).digest(), pcr_digest):
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
        (verified, selection, extra, clock, firmware, signer, sig.alg, sig.hash, parsed),
    )
