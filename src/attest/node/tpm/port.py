"""The TPM port: what attest needs from a TPM, as a Protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from attest.model import HashAlg, PcrSelection, PcrValues
from attest.tpmstruct import Public

# TCG EK Credential Profile 2.0 §2.2.1.4: NV indices of EK certificates.
EK_CERT_INDICES: Mapping[int, str] = {
    0x01C00002: "RSA-2048",
    0x01C0000A: "ECC NIST P-256",
    0x01C00012: "RSA-2048 (high range)",
    0x01C00014: "ECC NIST P-256 (high range)",
    0x01C00016: "ECC NIST P-384 (high range)",
    0x01C00018: "ECC NIST P-521 (high range)",
    0x01C0001C: "RSA-3072 (high range)",
    0x01C0001E: "RSA-4096 (high range)",
}
PLATFORM_CERT_INDEX = 0x01C08000


@dataclass(frozen=True, slots=True)
class RawQuote:
    """What TPM2_Quote returned: the TPMS_ATTEST bytes and the TPMT_SIGNATURE bytes, plus the
    PCR values read alongside (checked by the adapter to be the quoted ones)."""

    attest: bytes
    signature: bytes
    pcrs: PcrValues


class TpmPort(Protocol):
    def banks(self) -> tuple[HashAlg, ...]:
        """The active PCR banks."""
        ...

    def read_pcrs(self, selection: PcrSelection) -> PcrValues: ...

    def extend(self, pcr: int, digests: Mapping[HashAlg, bytes]) -> None: ...

    def ek_certificates(self) -> dict[int, bytes]:
        """DER EK certificates by NV index, for whichever of EK_CERT_INDICES are present."""
        ...

    def ek_public(self) -> Public:
        """The RSA-2048 EK (TCG default template), used for credential activation."""
        ...

    def ak_public(self) -> Public: ...

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote: ...

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the RSA EK; returns the certInfo secret.
        ``id_object`` is the TPM2B_ID_OBJECT contents, ``encrypted_secret`` the
        TPM2B_ENCRYPTED_SECRET contents."""
        ...

    def nv_counter_define(self, index: int) -> int:
        """Define an NV counter (no-op when it exists) and return its value."""
        ...

    def nv_counter_read(self, index: int) -> int: ...

    def nv_counter_increment(self, index: int) -> int:
        """Increment and return the new value."""
        ...

    def recoveries(self) -> int:
        """How often the adapter re-established its TPM state (reconnected, re-created keys
        the TPM lost, ran TPM2_Startup): when it changes, the TPM may have been reset."""
        ...

    def close(self) -> None: ...
