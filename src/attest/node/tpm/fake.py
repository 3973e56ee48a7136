"""A software TPM for tests and benchmarks: real PCR arithmetic, a real AK (ECDSA P-256 or
RSA-2048) and real TPMS_ATTEST / TPMT_SIGNATURE bytes, so the verifier cannot tell it from a
TPM except by the AK it was enrolled with. ``quote_delay`` simulates a slow hardware TPM.

It is never used by the daemon outside tests: it is injected through the app factory.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attest.errors import TpmError
from attest.model import HashAlg, PcrSelection, PcrValues, extend
from attest.node.tpm.port import RawQuote
from attest.tpmstruct import (
    TPM_RH_ENDORSEMENT_QN,
    Alg,
    ClockInfo,
    ObjectAttr,
    Public,
    Signature,
    build_attest,
    build_signature,
    digest_of_values,
    public_from_key,
)

AK_ATTRS = (
    ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
    | ObjectAttr.USER_WITH_AUTH
    | ObjectAttr.NO_DA
    | ObjectAttr.RESTRICTED
    | ObjectAttr.SIGN_ENCRYPT
)


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class FakeTpm:
    """An in-memory TPM. Thread-safe. Not a security boundary -- a test double."""

    def __init__(
        self,
        *,
        banks: Sequence[HashAlg] = (HashAlg.SHA256, HashAlg.SHA1),
        ak: str = "ecc256",
        seed: bytes = b"attest-fake-tpm",
        quote_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._banks = tuple(banks)
        self._pcrs = {alg: [bytes(alg.digest_size)] * 24 for alg in self._banks}
        self._lock = threading.Lock()
        self._quote_delay = quote_delay
        self._clock = clock
        self._t0 = clock()
        self.reset_count = 1
        self.restart_count = 0
        self.recovered = 0  # resets, as an adapter would notice them (its AK lost)
        self.firmware_version = 0x2023_0101_0000_0001
        self.quotes = 0
        self.closed = False
        self.available = True
        self._nv: dict[int, int] = {}
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if ak == "ecc256":
            # Deterministic from the seed, like a primary key from the endorsement seed.
            scalar = int.from_bytes(hashlib.sha256(seed + b"/ak").digest(), "big") % _P256_ORDER
            self._key = ec.derive_private_key(scalar or 1, ec.SECP256R1())
            self._ak = public_from_key(
                self._key.public_key(),
                attributes=AK_ATTRS,
                scheme=Alg.ECDSA,
                scheme_hash=HashAlg.SHA256,
            )
        elif ak == "rsa2048":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._ak = public_from_key(
                self._key.public_key(),
                attributes=AK_ATTRS,
                scheme=Alg.RSASSA,
                scheme_hash=HashAlg.SHA256,
            )
        else:
            raise ValueError(f"fake TPM supports AK types ecc256 and rsa2048, not {ak!r}")

    def _check(self) -> None:
        if self.closed:
            raise RuntimeError("fake TPM used after close()")
        if not self.available:
            raise TpmError("fake TPM is unavailable", rc=0x000A000A)

    # --- the port ---------------------------------------------------------------------------

    def banks(self) -> tuple[HashAlg, ...]:
        self._check()
        return self._banks

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        self._check()
        with self._lock:
            return self._read(selection)

    def _read(self, selection: PcrSelection) -> PcrValues:
        out: dict[HashAlg, dict[int, bytes]] = {}
        for alg, indices in selection.banks:
            if alg not in self._pcrs:
                raise TpmError(f"PCR bank {alg.bank_name} is not active", rc=0x1C4)
            out[alg] = {i: self._pcrs[alg][i] for i in indices}
        return PcrValues(out)

    def extend(self, pcr: int, digests: Mapping[HashAlg, bytes]) -> None:
        self._check()
        with self._lock:
            for alg, d in digests.items():
                if len(d) != alg.digest_size:
                    raise TpmError(f"{alg.bank_name} digest of {len(d)} bytes", rc=0x1D5)
                if alg in self._pcrs:
                    self._pcrs[alg][pcr] = extend(alg, self._pcrs[alg][pcr], d)

    def ek_certificates(self) -> dict[int, bytes]:
        self._check()
        return {}

    def ek_public(self) -> Public:
        raise TpmError("the fake TPM has no endorsement key")

    def ak_public(self) -> Public:
        self._check()
        return self._ak

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        self._check()
        if len(qualifying_data) > 64:
            raise TpmError("qualifying data larger than 64 bytes", rc=0x1D5)
        if self._quote_delay:
            time.sleep(self._quote_delay)
        with self._lock:
            values = self._read(selection)
            self.quotes += 1
            clock_ms = int((self._clock() - self._t0) * 1000)
            attest = build_attest(
                qualified_signer=self._ak.qualified_name(TPM_RH_ENDORSEMENT_QN),
                extra_data=qualifying_data,
                clock_info=ClockInfo(clock_ms, self.reset_count, self.restart_count, True),
                firmware_version=self.firmware_version,
                pcr_select=selection,
                pcr_digest=digest_of_values(HashAlg.SHA256, values.values, selection),
            )
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self._key.sign(attest, ec.ECDSA(hashes.SHA256())))
            sig = Signature(
                Alg.ECDSA, HashAlg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
            )
        else:
            raw = self._key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
            sig = Signature(Alg.RSASSA, HashAlg.SHA256, sig=raw)
        return RawQuote(attest, build_signature(sig), values)

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        raise TpmError("the fake TPM has no endorsement key to activate credentials with")

    def nv_counter_define(self, index: int) -> int:
        self._check()
        with self._lock:
            return self._nv.setdefault(index, 1)

    def nv_counter_read(self, index: int) -> int:
        self._check()
        with self._lock:
            if index not in self._nv:
                raise TpmError(f"NV index 0x{index:08x} is not defined", rc=0x18B)
            return self._nv[index]

    def nv_counter_increment(self, index: int) -> int:
        self._check()
        with self._lock:
            if index not in self._nv:
                raise TpmError(f"NV index 0x{index:08x} is not defined", rc=0x18B)
            self._nv[index] += 1
            return self._nv[index]

    def recoveries(self) -> int:
        return self.recovered

    def close(self) -> None:
        self.closed = True

    # --- test controls ----------------------------------------------------------------------

    def reset(self) -> None:
        """A TPM Reset (reboot): PCRs cleared, resetCount incremented, restartCount to 0."""
        with self._lock:
            self._pcrs = {alg: [bytes(alg.digest_size)] * 24 for alg in self._banks}
            self.reset_count += 1
            self.restart_count = 0
            self.recovered += 1
