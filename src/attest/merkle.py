"""Merkle trees over challenges, so one TPM quote can answer many verifiers at once.

A hardware TPM signs a few quotes per second. ``attestd`` answers the challenges that arrive
while a quote is in flight with ONE quote whose qualifying data is the root of a Merkle tree
over their leaves; each verifier gets its leaf index and inclusion proof and checks that its
own nonce (and the TLS key binding it saw) is in the signed root.

The tree is RFC 9162 §2.1 (Certificate Transparency 2.0): ``leaf = SHA-256(0x00 || data)``,
``node = SHA-256(0x01 || left || right)``, unbalanced trees split at the largest power of two
smaller than the size. A tree of one leaf has the leaf hash as root and an empty proof.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from attest.errors import NonceError, QuoteFormatError

LEAF_DOMAIN = b"attest-challenge-v1"
MAX_NONCE = 64
MAX_LEAVES = 1 << 16
HASH_SIZE = 32


def challenge_leaf(nonce: bytes, tls_binding: bytes = b"") -> bytes:
    """The leaf data of one challenge: a domain tag, the nonce (length-prefixed) and the
    binding of the node's TLS key the verifier saw (empty when there is none)."""
    if not 1 <= len(nonce) <= MAX_NONCE:
        raise NonceError(f"nonce of {len(nonce)} bytes; 1..{MAX_NONCE} allowed")
    if len(tls_binding) > 64:
        raise NonceError("TLS binding longer than 64 bytes")
    return (
        LEAF_DOMAIN
        + b"\x00"
        + bytes([len(nonce)])
        + nonce
        + bytes([len(tls_binding)])
        + tls_binding
    )


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return _node(_root(hashes[:k]), _root(hashes[k:]))


def _path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]), bottom-up."""
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_path(index, hashes[:k]), _root(hashes[k:])]
    return [*_path(index - k, hashes[k:]), _root(hashes[:k])]


@dataclass(frozen=True, slots=True)
class MerkleTree:
    leaves: tuple[bytes, ...]  # leaf hashes
    root: bytes

    @classmethod
    def build(cls, leaf_data: Sequence[bytes]) -> MerkleTree:
        if not 1 <= len(leaf_data) <= MAX_LEAVES:
            raise ValueError(f"a tree needs 1..{MAX_LEAVES} leaves, got {len(leaf_data)}")
        hashes = tuple(leaf_hash(d) for d in leaf_data)
        return cls(hashes, _root(hashes))

    def proof(self, index: int) -> tuple[bytes, ...]:
        if not 0 <= index < len(self.leaves):
            raise IndexError(index)
        return tuple(_path(index, self.leaves))

    def proofs(self) -> list[tuple[bytes, ...]]:
        """Every leaf's proof, in O(n log n) hashing overall (subtree roots are shared)."""
        out: list[list[bytes]] = [[] for _ in self.leaves]

        def walk(lo: int, hashes: Sequence[bytes]) -> bytes:
            if len(hashes) == 1:
                return hashes[0]
            k = _split(len(hashes))
            left = walk(lo, hashes[:k])
            right = walk(lo + k, hashes[k:])
            for i in range(lo, lo + k):
                out[i].append(right)
            for i in range(lo + k, lo + len(hashes)):
                out[i].append(left)
            return _node(left, right)

        walk(0, self.leaves)
        return [tuple(p) for p in out]


def verify_inclusion(
    leaf_data: bytes, *, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: check that ``leaf_data`` is leaf ``index`` of the tree of ``size``
    leaves with ``root``. Raises ``NonceError`` (the challenge is not in the signed root) or
    ``QuoteFormatError`` (a malformed proof)."""
    if not 0 <= index < size <= MAX_LEAVES:
        raise QuoteFormatError(f"leaf index {index} outside a tree of {size}")
    if len(proof) > 64 or any(len(p) != HASH_SIZE for p in proof):
        raise QuoteFormatError("inclusion proof is malformed")
    fn, sn = index, size - 1
    r = leaf_hash(leaf_data)
    for p in proof:
        if sn == 0:
            raise NonceError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise NonceError("inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, root):
        raise NonceError("the challenge is not in the Merkle root the quote signs")
