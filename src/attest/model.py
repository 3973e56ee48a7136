"""Shared value types of the evidence core: frozen, slotted, no I/O."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


class HashAlg(enum.IntEnum):
    """TPM_ALG_ID values of the hash algorithms a PCR bank or signature may use (TPM 2.0 Part 2
    §6.3)."""

    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    SM3_256 = 0x0012

    # Enum's own __hash__ is a Python function; these values key hot dictionaries.
    __hash__ = int.__hash__

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZE[self]

    @property
    def bank_name(self) -> str:
        """The name used at the edges: ``sha1``, ``sha256``, ``sha384``, ``sha512``, ``sm3_256``."""
        return _BANK_NAME[self]

    def new(self, data: bytes = b"") -> hashlib._Hash:
        return _CTOR[self](data)

    def digest(self, data: bytes) -> bytes:
        return _CTOR[self](data).digest()

    @classmethod
    def from_name(cls, name: str) -> HashAlg:
        """Parse ``sha256`` / ``SHA256`` / ``sha-256``; raise ``ValueError`` otherwise."""
        key = name.strip().lower().replace("-", "").replace("_", "")
        for alg in cls:
            if alg.bank_name.replace("_", "") == key:
                return alg
        raise ValueError(f"unknown hash algorithm {name!r}")


_DIGEST_SIZE = {
    HashAlg.SHA1: 20,
    HashAlg.SHA256: 32,
    HashAlg.SHA384: 48,
    HashAlg.SHA512: 64,
    HashAlg.SM3_256: 32,
}

_BANK_NAME = {alg: alg.name.lower() for alg in HashAlg}


def _sm3(data: bytes = b"") -> hashlib._Hash:
    return hashlib.new("sm3", data)  # only where OpenSSL provides SM3


_CTOR: dict[HashAlg, Callable[..., hashlib._Hash]] = {
    HashAlg.SHA1: hashlib.sha1,
    HashAlg.SHA256: hashlib.sha256,
    HashAlg.SHA384: hashlib.sha384,
    HashAlg.SHA512: hashlib.sha512,
    HashAlg.SM3_256: _sm3,
}

MAX_PCR = 24  # PC Client platforms implement PCRs 0..23.


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """PCR indices per bank, in the order the TPM serialises them (bank order as given, indices
    ascending)."""

    banks: tuple[tuple[HashAlg, tuple[int, ...]], ...]

    @classmethod
    def of(cls, selection: Mapping[HashAlg, Iterable[int]]) -> PcrSelection:
        banks = []
        for alg, idx in selection.items():
            indices = tuple(sorted(set(idx)))
            for i in indices:
                if not 0 <= i < MAX_PCR:
                    raise ValueError(f"PCR index {i} out of range 0..{MAX_PCR - 1}")
            banks.append((HashAlg(alg), indices))
        return cls(tuple(banks))

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Parse the tpm2-tools notation ``sha256:0,1,2+sha1:7`` (also ``sha256:all``)."""
        sel: dict[HashAlg, list[int]] = {}
        for part in text.split("+"):
            if ":" not in part:
                raise ValueError(f"PCR selection {part!r} is not BANK:INDICES")
            bank, _, idx = part.partition(":")
            alg = HashAlg.from_name(bank)
            if alg in sel:
                raise ValueError(f"bank {alg.bank_name} selected twice")
            if idx.strip().lower() == "all":
                sel[alg] = list(range(MAX_PCR))
                continue
            values: list[int] = []
            for token in idx.split(","):
                token = token.strip()
                if not token:
                    continue
                if "-" in token:
                    lo, _, hi = token.partition("-")
                    first, last = int(lo), int(hi)
                    if not 0 <= first <= last < MAX_PCR:  # before a range of 10**20 is built
                        raise ValueError(
                            f"PCR range {token[:40]!r} is not FIRST-LAST within 0..{MAX_PCR - 1}"
                        )
                    values.extend(range(first, last + 1))
                else:
                    values.append(int(token, 0))
            if not values:
                raise ValueError(f"bank {alg.bank_name} selects no PCR")
            sel[alg] = values
        return cls.of(sel)

    def __str__(self) -> str:
        return "+".join(
            f"{alg.bank_name}:{','.join(str(i) for i in idx)}" for alg, idx in self.banks
        )

    def as_dict(self) -> dict[HashAlg, tuple[int, ...]]:
        return dict(self.banks)

    def count(self) -> int:
        return sum(len(idx) for _, idx in self.banks)


@dataclass(frozen=True, slots=True)
class PcrValues:
    """PCR values per bank. ``values[alg][index] = digest``."""

    values: Mapping[HashAlg, Mapping[int, bytes]]

    def selection(self) -> PcrSelection:
        return PcrSelection.of({alg: list(v) for alg, v in self.values.items()})

    def get(self, alg: HashAlg, index: int) -> bytes:
        return self.values[alg][index]

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            alg.bank_name: {str(i): d.hex() for i, d in sorted(v.items())}
            for alg, v in self.values.items()
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Mapping[str, str]]) -> PcrValues:
        out: dict[HashAlg, dict[int, bytes]] = {}
        for bank, pcrs in doc.items():
            alg = HashAlg.from_name(bank)
            out[alg] = {int(i): bytes.fromhex(h) for i, h in pcrs.items()}
            for i, d in out[alg].items():
                if len(d) != alg.digest_size:
                    raise ValueError(f"{bank}:{i} is {len(d)} bytes, not {alg.digest_size}")
        return cls(out)


def extend(alg: HashAlg, old: bytes, digest: bytes) -> bytes:
    """PCR extend: ``new = H(old || digest)`` (TPM 2.0 Part 1 §17.6.4)."""
    return alg.digest(old + digest)
