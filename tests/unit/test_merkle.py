"""Merkle batching of challenges: every leaf's proof verifies; nothing else does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import NonceError, QuoteFormatError
from attest.merkle import MerkleTree, challenge_leaf, verify_inclusion


def leaves(n: int) -> list[bytes]:
    return [challenge_leaf(i.to_bytes(8, "big"), b"\x07" * 32) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 257])
def test_every_leaf_proves_inclusion(n: int) -> None:
    data = leaves(n)
    tree = MerkleTree.build(data)
    proofs = tree.proofs()
    for i, d in enumerate(data):
        assert proofs[i] == tree.proof(i)
        verify_inclusion(d, index=i, size=n, proof=proofs[i], root=tree.root)


def test_single_leaf_root_is_leaf_hash_with_empty_proof() -> None:
    tree = MerkleTree.build(leaves(1))
    assert tree.proof(0) == ()
    assert tree.root == tree.leaves[0]


def test_rejects_foreign_nonce() -> None:
    data = leaves(5)
    tree = MerkleTree.build(data)
    other = challenge_leaf(b"not-in-tree", b"\x07" * 32)
    with pytest.raises(NonceError):
        verify_inclusion(other, index=2, size=5, proof=tree.proof(2), root=tree.root)


def test_rejects_other_tls_binding() -> None:
    """A relay that answers with another node's batch cannot reuse the leaf: it is bound to
    the TLS key the verifier saw."""
    tree = MerkleTree.build([challenge_leaf(b"n" * 16, b"\x01" * 32)])
    with pytest.raises(NonceError):
        verify_inclusion(
            challenge_leaf(b"n" * 16, b"\x02" * 32), index=0, size=1, proof=(), root=tree.root
        )


def test_rejects_wrong_index_or_size() -> None:
    data = leaves(6)
    tree = MerkleTree.build(data)
    with pytest.raises(NonceError):
        verify_inclusion(data[1], index=2, size=6, proof=tree.proof(1), root=tree.root)
    # A size whose tree shape differs from the proof's fails (the size is not itself signed;
    # the root is: any size under which the path reaches the signed root proves inclusion).
    with pytest.raises(NonceError):
        verify_inclusion(data[1], index=1, size=2, proof=tree.proof(1), root=tree.root)
    with pytest.raises(QuoteFormatError):
        verify_inclusion(data[1], index=6, size=6, proof=tree.proof(1), root=tree.root)


def test_second_preimage_inner_node_is_not_a_leaf() -> None:
    """Domain separation: an inner node presented as a leaf does not verify."""
    data = leaves(4)
    tree = MerkleTree.build(data)
    inner = tree.proof(0)[1]  # the right subtree's root
    with pytest.raises(NonceError):
        verify_inclusion(inner, index=1, size=2, proof=(tree.proof(0)[1],), root=tree.root)


def test_nonce_bounds() -> None:
    with pytest.raises(NonceError):
        challenge_leaf(b"")
    with pytest.raises(NonceError):
        challenge_leaf(b"x" * 65)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_proofs_verify_and_tampering_fails(n: int, data: st.DataObject) -> None:
    ls = leaves(n)
    tree = MerkleTree.build(ls)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    verify_inclusion(ls[i], index=i, size=n, proof=proof, root=tree.root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes(32)
        with pytest.raises(NonceError):
            verify_inclusion(ls[i], index=i, size=n, proof=bad, root=tree.root)
